"""Azure ML: `pipeline submit` (a command job, or a pipeline job with one node per step) and `pipeline step`.

- spec.py: what is sent, decided without the SDK (inputs, node names, command lines)
- build.py: the SDK's job objects, the code snapshot and the environment (the SDK is imported here only)
- checks.py: what the SDK does not check (every ${{inputs.X}} / ${{outputs.X}} declared and used, bindings)
- submit.py / register.py: the workspace client, submission, waiting, model registration
- node.py: `pipeline step`, what each pipeline node runs (no Azure import: a node needs only the project)

Importing this package imports no Azure module: the SDK is an optional extra (`pip install -e '.[azure]'`).
"""
