"""The `olive` step: one pass of olive-ai run on an artifact of this workflow (Olive is imported lazily).

- `passes.olive.run`: the `Olive` pass class (builds the Olive pass, runs it in a throw-away folder,
  turns failures into PassErrors with Olive's own message).
- `passes.olive.kinds`: our artifacts <-> Olive model handlers (input config, output folder layout).
- `passes.olive.data`: a `load_data` dataset -> an Olive data config over a local file.
"""
