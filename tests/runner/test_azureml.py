"""`pipeline submit`: command and pipeline jobs built offline, read back with `load_job`, submitted to a fake.

Nothing here reaches a network: jobs are only built and dumped, and the MLClient is a fake.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipelines.validate import load_workflow
from schemas.errors import ConfigError, PipelineError
from tests.helpers import ROOT, cli, fake_project, write

ml = pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed")

# the SDK's own use of marshmallow: not ours to fix, and hundreds of lines of noise
pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")

from runner.azureml import submit as submit_module  # noqa: E402
from runner.azureml.checks import check_document  # noqa: E402
from runner.azureml.spec import io_name, quote  # noqa: E402

RECIPES = ROOT / "pipelines" / "recipes"
QUICKSTART = RECIPES / "spam-minilm-int8.yaml"
DATASTORE_CACHE = "azureml://datastores/workspaceblobstore/paths/pipeline-cache"

LLM_WORKFLOW = """
version: 1
name: chat-tiny
description: an LLM-shaped workflow, as the chat recipe
steps:
  base: {type: model, path: model}
  qa: {type: load_data, path: qa.jsonl, prompt: instruction, response: response}
  tune: {type: lora, model: base, data: qa}
  merged: {type: merge_adapter, adapter: tune}
  onnx: {type: export_onnx, model: merged}
  compare: {type: evaluate, models: [merged, onnx], data: qa, metrics: [perplexity, size]}
outputs:
  model: onnx
"""


def llm_workflow(folder: Path) -> Path:
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (folder / "qa.jsonl").write_text('{"instruction": "hi", "response": "hello"}\n')
    return write(folder, LLM_WORKFLOW, "chat.yaml")


def _recipes() -> list:
    out = []
    for path in sorted(RECIPES.glob("*.yaml")):
        try:
            load_workflow(path)
        except ConfigError as exc:  # a recipe whose model package is not installed here
            if any("is not installed" in i.message for i in exc.issues):
                out.append(pytest.param(path, marks=pytest.mark.skip(reason=exc.issues[0].message), id=path.stem))
                continue
            raise
        out.append(pytest.param(path, id=path.stem))
    return out


@pytest.fixture(params=[pytest.param("llm", id="llm-in-test"), *_recipes()])
def workflow(request, tmp_path) -> Path:
    return llm_workflow(tmp_path) if request.param == "llm" else request.param


def dry_run(wf: Path, out: Path, *args: str) -> dict:
    assert cli("submit", wf, "--dry-run", "-o", out, "--compute", "cpu-cluster", *args) == 0
    return yaml.safe_load(out.read_text())


def test_the_command_job_round_trips_through_load_job(workflow, tmp_path):
    loaded = load_workflow(workflow)
    doc = dry_run(workflow, tmp_path / "job.yaml", "--cache", DATASTORE_CACHE, "--tag", "team=nlp")
    job = ml.load_job(tmp_path / "job.yaml")
    assert job.type == "command" and job.compute.endswith("cpu-cluster")
    assert job.experiment_name == loaded.workflow.name and job.tags["team"] == "nlp"
    command = job.command
    assert command.startswith(f"python -m runner.cli run workflow/{workflow.name} ")
    assert "--output ${{outputs.outputs}}" in command and "--cache-dir ${{outputs.cache}}" in command
    # every local file or folder the workflow reads is an uploaded input the command points the step at
    expected = {(s, f) for s, c in loaded.workflow.steps.items() for f in c.path_fields()}
    assert {tuple(m) for m in re.findall(r"--set steps\.(\w+)\.(\w+)=\$\{\{inputs\.\w+\}\}", command)} == expected
    for name, spec in doc["inputs"].items():
        local = Path(spec["path"])
        assert local.is_absolute() and local.exists(), spec
        assert spec["type"] == ("uri_file" if local.is_file() else "uri_folder")
        assert f"${{{{inputs.{name}}}}}" in command
    assert doc["outputs"]["cache"] == {"mode": "rw_mount", "path": DATASTORE_CACHE, "type": "uri_folder"}
    assert set(doc["outputs"]) == {"outputs", "report", "cache"}
    # the code snapshot and the environment's build context sit beside the YAML file
    code = tmp_path / doc["code"]
    assert (code / "runner" / "cli.py").exists() and (code / "workflow" / workflow.name).exists()
    assert not list(code.rglob("__pycache__")) and not (code / "pipelines" / "recipes").exists()
    context = tmp_path / doc["environment"]["build"]["path"]
    assert "FROM mcr.microsoft.com/azureml/" in (context / "Dockerfile").read_text()
    assert "torch" in (context / "requirements.txt").read_text()
    assert "torch==2.13.0" in (context / "constraints.txt").read_text()


def test_the_pipeline_job_has_a_node_per_step_wired_like_the_dag(workflow, tmp_path):
    loaded = load_workflow(workflow)
    train = next(s for s in loaded.order if loaded.workflow.steps[s].step_type() in ("lora", "qlora", "finetune"))
    doc = dry_run(workflow, tmp_path / "pipe.yaml", "--mode", "pipeline", "--step-compute", f"{train}=gpu-cluster",
                  "--environment", "azureml:pipeline-env:3")
    job = ml.load_job(tmp_path / "pipe.yaml")
    assert type(job).__name__ == "PipelineJob"
    # the SDK drops a node name's trailing `_` (a matrix variant's `]`): int8[method=int4] -> int8_method_int4
    nodes = {io_name(s, set()).rstrip("_"): s for s in loaded.order}
    assert set(job.jobs) == set(nodes) and len(job.jobs) == len(loaded.workflow.steps)
    edges = set()
    for name, node in doc["jobs"].items():
        for value in (node.get("inputs") or {}).values():
            match = re.fullmatch(r"\$\{\{parent\.jobs\.(\w+)\.outputs\.artifact\}\}", value["path"])
            if match:
                edges.add((nodes[match.group(1)], nodes[name]))
        command = node["component"]["command"]
        assert command.startswith(f"python -m runner.cli step workflow/{workflow.name} {quote(nodes[name])} ")
        for ref in loaded.graph.predecessors(nodes[name]):  # (a variant's name is quoted and its input renamed)
            assert f"--input {quote(f'{ref}=${{{{inputs.{io_name(ref, set())}}}}}')}" in command
        assert node["environment"] == "azureml:pipeline-env:3"
    assert edges == set(loaded.graph.edges)
    assert job.jobs[train].compute.endswith("gpu-cluster")
    assert all(job.jobs[n].compute is None for n in nodes if n != train)
    assert doc["settings"]["default_compute"].endswith("cpu-cluster") and doc["settings"]["continue_on_step_failure"]
    for out_name, step in loaded.workflow.outputs.items():  # each deployable output is a pipeline output
        assert doc["jobs"][step]["outputs"]["artifact"] == f"${{{{parent.outputs.{out_name}}}}}"
    check_document(doc)


def test_the_checks_catch_what_the_sdk_does_not(tmp_path):
    doc = dry_run(QUICKSTART, tmp_path / "pipe.yaml", "--mode", "pipeline")
    check_document(doc)
    broken = json.loads(json.dumps(doc))
    component = broken["jobs"]["int8"]["component"]
    component["command"] = component["command"].replace("${{inputs.onnx}}", "${{inputs.onx}}")
    broken["jobs"]["merged"]["inputs"]["tune"]["path"] = "${{parent.jobs.tuned.outputs.artifact}}"
    with pytest.raises(PipelineError) as exc:
        check_document(broken)
    text = str(exc.value)
    assert "jobs.int8: the command uses ${{inputs.onx}}, but inputs declares no 'onx'" in text
    assert "jobs.int8: inputs.onnx is declared but the command never uses it" in text
    assert "jobs.merged.inputs.tune: ${{parent.jobs.tuned.outputs.artifact}} names no node 'tuned'" in text
    job = dry_run(QUICKSTART, tmp_path / "job.yaml")
    job["command"] = job["command"].replace(" && cp", " --log ${{outputs.logs}} && cp")
    with pytest.raises(PipelineError, match=r"job: the command uses \$\{\{outputs.logs\}\}, but outputs declares no 'logs'"):
        check_document(job)


def test_datastore_inputs_replace_uploads_even_without_the_local_file(tmp_path):
    text = QUICKSTART.read_text().replace("path: data/sms_spam.csv", "path: data/not-here.csv")
    wf = write(tmp_path, text + "\nazureml:\n  inputs: {sms: azureml://datastores/data/paths/sms/sms_spam.csv}\n")
    doc = dry_run(wf, tmp_path / "job.yaml")
    assert doc["inputs"]["sms_path"] == {"path": "azureml://datastores/data/paths/sms/sms_spam.csv", "type": "uri_file"}
    assert "--set steps.sms.path=${{inputs.sms_path}}" in doc["command"]
    assert cli("submit", wf, "--dry-run", "-o", tmp_path / "j2.yaml", "--compute", "c1",
               "--input", "base=azureml://datastores/models/paths/minilm/") == 0
    assert yaml.safe_load((tmp_path / "j2.yaml").read_text())["inputs"]["base_path"]["type"] == "uri_folder"


def test_section_and_flag_errors_come_out_like_the_others(tmp_path, capsys):
    section = textwrap.dedent("""
        azureml:
          compute: cpu-cluster
          computer: gpu
          cache: azureml://datastores/x/nope
          steps: {tunee: {compute: gpu-cluster}}
          inputs: {tune: azureml://datastores/d/paths/x}
        """)
    wf = write(tmp_path, QUICKSTART.read_text().replace("data/sms_spam.csv", str(RECIPES / "data" / "sms_spam.csv")) + section)
    assert cli("validate", wf) == 2
    err = capsys.readouterr().err
    assert re.search(r"wf\.yaml:\d+:3: azureml\.computer: unknown field 'computer'\n    hint: did you mean 'compute'\?", err)
    assert re.search(r"wf\.yaml:\d+:\d+: azureml\.cache: 'azureml://datastores/x/nope' is not valid here", err)
    fixed = wf.read_text().replace("  computer: gpu\n", "").replace("x/nope", "x/paths/cache")
    wf.write_text(fixed)
    assert cli("validate", wf) == 2
    err = capsys.readouterr().err
    assert re.search(r"wf\.yaml:\d+:\d+: azureml\.steps\.tunee: unknown step 'tunee'\n    hint: did you mean 'tune'\?", err)
    assert "azureml.inputs.tune: step 'tune' (lora) reads no local file or folder" in err
    assert cli("submit", QUICKSTART, "--dry-run", "-o", tmp_path / "j.yaml", "--compute", "bad name!") == 2
    assert "--compute bad name!: azureml.compute: 'bad name!' is not valid here" in capsys.readouterr().err
    assert cli("submit", QUICKSTART, "--dry-run", "-o", tmp_path / "j.yaml") == 2
    err = capsys.readouterr().err
    assert "azureml: no compute to run on" in err and "--compute NAME" in err


def test_without_the_sdk_the_error_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "azure.ai.ml", None)
    assert cli("submit", QUICKSTART, "--dry-run", "-o", tmp_path / "j.yaml", "--compute", "c1") == 1
    assert "pip install -c constraints.txt -e '.[azure]'" in capsys.readouterr().err


class FakeJobs:
    def __init__(self, status: str = "Completed", kind: str = "command", downloads: dict | None = None,
                 error: Exception | None = None):
        self.status, self.kind, self.downloads, self.error = status, kind, downloads or {}, error
        self.created, self.streamed, self.code_existed = [], [], None

    def create_or_update(self, job, experiment_name=None, **kwargs):
        if self.error:
            raise self.error
        code = job.code if job.type == "command" else next(iter(job.jobs.values())).component.code
        self.code_existed = Path(code).exists()  # the SDK uploads the snapshot during this call
        self.created.append((job, experiment_name))
        return SimpleNamespace(name="fake-job-1", studio_url="https://ml.azure.com/runs/fake-job-1")

    def stream(self, name):
        self.streamed.append(name)

    def get(self, name):
        return SimpleNamespace(name=name, status=self.status, type=self.kind)

    def download(self, name, download_path=".", output_name=None, all=False):
        for rel, text in self.downloads[output_name].items():
            path = Path(download_path) / "named-outputs" / output_name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


class FakeModels:
    def __init__(self):
        self.registered = []

    def create_or_update(self, model):
        self.registered.append(model)
        return SimpleNamespace(name=model.name, version="1")


@pytest.fixture
def fake(monkeypatch):
    client = SimpleNamespace(jobs=FakeJobs(), models=FakeModels())
    monkeypatch.setattr(submit_module, "make_client", lambda settings, folder: client)
    return client


@pytest.mark.parametrize("mode", ["job", "pipeline"])
def test_submit_sends_the_job_to_the_client_and_waits(fake, mode, capsys):
    assert cli("submit", QUICKSTART, "--mode", mode, "--compute", "cpu-cluster", "--wait") == 0
    (job, experiment), = fake.jobs.created
    assert experiment == "spam-minilm-int8" and fake.jobs.code_existed
    assert type(job).__name__ == ("CommandJob" if mode == "job" else "PipelineJob")
    assert fake.jobs.streamed == ["fake-job-1"]
    assert "submitted fake-job-1" in capsys.readouterr().out
    assert not Path(job.code if mode == "job" else next(iter(job.jobs.values())).component.code).exists()


def test_missing_credentials_say_how_to_log_in(fake, capsys):
    from azure.core.exceptions import ClientAuthenticationError

    fake.jobs.error = ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")
    assert cli("submit", QUICKSTART, "--compute", "cpu-cluster") == 1
    err = capsys.readouterr().err
    assert "submitting the job: no usable Azure credentials" in err and "az login" in err


RUN_JSON = {"metrics": {"report": {"int8": {"kind": "onnx_model", "provider": "CPUExecutionProvider", "accuracy": 0.9812,
                                         "f1": 0.95, "confusion_matrix": [[1, 0], [0, 1]]}}},
            "steps": {"int8": {"meta": {"method": "dynamic_int8"}}}}


def test_register_model_from_a_command_job(fake, capsys):
    fake.jobs.downloads = {"report": {"run.json": json.dumps(RUN_JSON)}}
    assert cli("submit", QUICKSTART, "--job", "job-7", "--register-model", "spam-int8") == 0
    (model,) = fake.models.registered
    assert model.name == "spam-int8" and model.type == "custom_model"
    assert model.path == "azureml://jobs/job-7/outputs/outputs/paths/model/"
    assert {k: model.tags[k] for k in ("format", "provider", "precision", "accuracy", "f1", "job")} == {
        "format": "onnx", "provider": "CPUExecutionProvider", "precision": "int8", "accuracy": "0.9812", "f1": "0.95",
        "job": "job-7"}
    assert "confusion_matrix" not in model.tags
    assert "registered model spam-int8:1" in capsys.readouterr().out


def test_register_model_from_a_pipeline_job(fake):
    fake.jobs.kind = "pipeline"
    artifact = {"kind": "metrics", "meta": {"metrics": {"int8": {"accuracy": 0.97, "provider": "CPUExecutionProvider"}}}}
    fake.jobs.downloads = {"report": {"artifact.json": json.dumps(artifact)}}
    assert cli("submit", QUICKSTART, "--job", "pipe-3", "--register-model", "spam-int8") == 0
    (model,) = fake.models.registered
    assert model.path == "azureml://jobs/pipe-3/outputs/model/paths/data/"
    assert model.tags["accuracy"] == "0.97" and model.tags["precision"] == "int8"


def test_register_refuses_unfinished_jobs_and_ambiguous_outputs(fake, capsys):
    fake.jobs.status = "Running"
    assert cli("submit", QUICKSTART, "--job", "j", "--register-model", "m") == 1
    assert "job j is Running: register its model once it has completed" in capsys.readouterr().err
    fake.jobs.status = "Completed"
    assert cli("submit", QUICKSTART, "--set", "outputs.fp32=onnx", "--job", "j", "--register-model", "m") == 1
    assert "several ONNX outputs (model, fp32): choose one with --model-output" in capsys.readouterr().err
    assert not fake.models.registered


def test_the_workspace_comes_from_the_section_or_a_config_json(tmp_path, monkeypatch):
    from schemas.azureml import AzureML

    sub = "00000000-0000-0000-0000-000000000001"
    client = submit_module.make_client(AzureML(subscription_id=sub, resource_group="rg", workspace="ws"), tmp_path)
    assert (client.subscription_id, client.resource_group_name, client.workspace_name) == (sub, "rg", "ws")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match="no Azure ML workspace: .*config.json") as exc:
        submit_module.make_client(AzureML(), tmp_path)
    assert "--subscription-id" in str(exc.value)
    (tmp_path / "config.json").write_text(json.dumps({"subscription_id": sub, "resource_group": "rg2", "workspace_name": "ws2"}))
    assert submit_module.make_client(AzureML(), tmp_path).workspace_name == "ws2"


def test_register_model_after_submitting_waits_for_the_job(fake):
    fake.jobs.downloads = {"report": {"run.json": json.dumps(RUN_JSON)}}
    assert cli("submit", QUICKSTART, "--compute", "cpu-cluster", "--register-model", "spam-int8") == 0
    assert fake.jobs.streamed == ["fake-job-1"]
    assert fake.models.registered[0].path == "azureml://jobs/fake-job-1/outputs/outputs/paths/model/"


def test_validate_step_and_help_never_import_azure(tmp_path):
    wf = write(tmp_path, QUICKSTART.read_text().replace("data/sms_spam.csv", str(RECIPES / "data" / "sms_spam.csv"))
               + "\nazureml: {compute: cpu-cluster, cache: " + DATASTORE_CACHE + "}\n")
    (tmp_path / "fake").mkdir()
    fake_wf = fake_project(tmp_path / "fake")
    code = ("import sys\nfrom runner.cli import main\nassert main(['validate', sys.argv[1]]) == 0\n"
            "assert main(['step', sys.argv[2], 'src', '--output', sys.argv[3]]) == 0\n"
            "try:\n    main(['submit', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m == 'azure' or m.startswith('azure.')))")
    proc = subprocess.run([sys.executable, "-c", code, str(wf), str(fake_wf), str(tmp_path / "node")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_PLUGINS": "tests.fakes"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


SIBLINGS = """
version: 1
name: siblings
isolation: process
steps:
  src: {type: fake_source, path: in.txt}
  v1: {type: fake_append, data: src, suffix: "1"}
  v2: {type: fake_append, data: src, suffix: "2", resources: {memory_gb: 2, max_memory_gb: 4}}
  v3: {type: fake_append, data: src, suffix: "3", isolation: none}
  pick: {type: fake_join, parts: [v1, v2, v3]}
outputs:
  best: pick
"""


def test_independent_steps_are_separate_nodes_that_run_side_by_side(tmp_path):
    """Sweep variants are ordinary steps: each its own node reading only its input, so they fan out over the
    cluster; a step that picks among them (as `select` will) is one more node reading every variant."""
    wf = fake_project(tmp_path, SIBLINGS)
    doc = dry_run(wf, tmp_path / "pipe.yaml", "--mode", "pipeline")
    check_document(doc)
    jobs = doc["jobs"]
    assert set(jobs) == {"src", "v1", "v2", "v3", "pick"}
    reads = {name: {k for k, v in (node.get("inputs") or {}).items() if "parent.jobs." in v["path"]}
             for name, node in jobs.items()}
    assert reads["v1"] == reads["v2"] == reads["v3"] == {"src"}  # no edge between the variants
    assert reads["pick"] == {"v1", "v2", "v3"}
    assert doc["settings"]["continue_on_step_failure"]  # a failing variant does not stop its siblings
    assert jobs["pick"]["outputs"]["artifact"] == "${{parent.outputs.best}}"
