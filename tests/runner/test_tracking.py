"""Tracking runs in MLflow: the run and its steps read back with `mlflow.search_runs`, cached re-runs, a broken
tracking URI that only warns, keys that tracking leaves alone, and the Trainer's loss curve in a training step."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import warnings
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from pydantic import Field

from passes.base import Pass
from passes.registry import register_pass, unregister_pass
from schemas import Dataset, Metrics, Ref, StepConfig, register_step, unregister_step
from tests.helpers import cli, write
from tests.test_imports import _probe

mlflow = pytest.importorskip("mlflow")


class FakeReportConfig(StepConfig):
    """An evaluate-like step: a report, a chart, per-model metrics and goals."""

    type: Literal["fake_report"] = Field(description="test evaluation")
    data: Ref[Dataset] = Field(description="input")
    accuracy: float = Field(0.9, description="the accuracy to report")
    goals: dict[str, dict[str, float]] = Field(default_factory=dict, description="nested: flattened into params")

    output_kind: ClassVar[str] = "metrics"


class FakeReport(Pass[FakeReportConfig]):
    """Writes report.md, metrics.json, a chart and a 'model' file (which is no report)."""

    config_class = FakeReportConfig

    def run(self, inputs, ctx):
        metrics = {"int8": {"accuracy": self.config.accuracy, "latency_p50_ms": 3.25, "confusion": [[1, 2], [3, 4]]},
                   "onnx": {"accuracy": 0.95, "tokens_per_second": 120.0}}
        (ctx.out_dir / "report.md").write_text("# report\n")
        (ctx.out_dir / "metrics.json").write_text(json.dumps(metrics))
        (ctx.out_dir / "chart.png").write_bytes(b"\x89PNG fake")
        (ctx.out_dir / "model.onnx").write_bytes(b"weights")
        goals = [{"model": "int8", "metric": "accuracy", "min": 0.8, "max": None, "value": self.config.accuracy, "met": True},
                 {"model": "int8", "metric": "latency_p50_ms", "min": None, "max": 1.0, "value": 3.25, "met": False}]
        return {"summary": "accuracy 0.9", "metrics": metrics, "goals": goals, "goals_missed": 1, "goals_fail": False}


@pytest.fixture(autouse=True, scope="module")
def fake_report():
    register_step(FakeReportConfig)
    register_pass(FakeReport)
    yield
    unregister_pass("fake_report")
    unregister_step("fake_report")


WORKFLOW = """
version: 1
name: tracked
{tracking}
steps:
  src: {{type: fake_source, path: in.txt}}
  a: {{type: fake_append, data: src, suffix: "?"}}
  report: {{type: fake_report, data: a, goals: {{int8: {{accuracy: 0.8}}}}}}
outputs:
  text: a
"""


def project(folder: Path, tracking: str = "") -> Path:
    (folder / "in.txt").write_text("hello")
    return write(folder, WORKFLOW.format(tracking=tracking))


def runs(uri: str, experiment: str = "tracked"):
    """`mlflow.search_runs` of one experiment in the store at `uri`, oldest first."""
    mlflow.set_tracking_uri(uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.search_runs(experiment_names=[experiment], order_by=["start_time ASC"])


@pytest.fixture(autouse=True)
def tracking_uri(monkeypatch):
    """No MLFLOW_* variable from the machine; `mlflow.search_runs` reads the store each test sets."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    yield
    mlflow.set_tracking_uri(None)
    assert not Path("mlruns").exists(), "MLflow's default artifact folder appeared in the current folder"


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> str:
    """One SQLite store with MLflow's tables, made once: creating them takes seconds (tests copy it or share it)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'store.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.MlflowClient(uri).search_experiments()
    return uri


def test_a_tracked_run_and_its_cached_rerun_read_back_from_the_local_store(tmp_path, mlflow_store):
    wf = project(tmp_path, "tracking: {backend: mlflow}")
    out = tmp_path / "out"
    (out / "mlflow").mkdir(parents=True)  # the default store's place, with empty tables already made
    shutil.copy(mlflow_store.removeprefix("sqlite:///"), out / "mlflow" / "mlflow.db")
    for _ in range(2):
        assert cli("run", wf, "--cache-dir", tmp_path / "cache", "--output", out, "--quiet") == 0
    db = out / "mlflow" / "mlflow.db"
    assert db.is_file()
    log = (out / "logs" / "run.log").read_text()
    assert f"mlflow ui --backend-store-uri sqlite:///{db}" in log
    df = runs(f"sqlite:///{db}")
    parents = df[df["tags.mlflow.parentRunId"].isna()]
    assert list(parents["tags.mlflow.runName"]) == ["tracked", "tracked"]
    assert list(parents["metrics.steps_ran"]) == [3, 0] and list(parents["metrics.steps_cached"]) == [0, 3]
    keys = {name: s["key"] for name, s in json.loads((out / "run.json").read_text())["steps"].items()}
    for parent, status in zip(parents["run_id"], ("ran", "cached")):
        steps = df[df["tags.mlflow.parentRunId"] == parent].set_index("tags.mlflow.runName")
        assert set(steps.index) == {"src", "a", "report"}
        assert set(steps["tags.pipeline.status"]) == {status}
        assert dict(steps["tags.pipeline.key"]) == keys
        report = steps.loc["report"]
        # the metrics a cached step had: the same as when it ran
        assert report["metrics.int8/accuracy"] == 0.9 and report["metrics.onnx/tokens_per_second"] == 120.0
        assert report["metrics.goals/met"] == 1 and report["metrics.goals/total"] == 2
        assert report["metrics.goals/int8/latency_p50_ms"] == 0 and "metrics.int8/confusion" not in df
        assert report["params.accuracy"] == "0.9" and report["params.goals.int8.accuracy"] == "0.8"
        assert report["tags.pipeline.type"] == "fake_report" and report["status"] == "FINISHED"
        assert steps.loc["a", "metrics.length"] == 6 and steps.loc["a", "params.suffix"] == "?"
        client = mlflow.MlflowClient(f"sqlite:///{db}")
        files = {f.path for f in client.list_artifacts(report["run_id"])}
        assert files == {"report.md", "metrics.json", "chart.png"}
        assert {f.path for f in client.list_artifacts(parent)} == {"run.json", "report.md"}
    assert parents["metrics.steps_ran"].iloc[0] == 3


def test_a_failed_step_is_a_failed_run_and_the_steps_behind_it_are_skipped(tmp_path, mlflow_store):
    (tmp_path / "in.txt").write_text("hello")
    wf = write(tmp_path, """
        version: 1
        name: failing
        steps:
          src: {type: fake_source, path: in.txt}
          bad: {type: fake_append, data: src, fail: true}
          after: {type: fake_append, data: bad}
    """)
    assert cli("run", wf, "--cache-dir", tmp_path / "c", "--output", tmp_path / "o", "--quiet", "--track",
               f"mlflow:{mlflow_store}") == 1
    df = runs(mlflow_store, "failing").set_index("tags.mlflow.runName")
    assert df.loc["failing", "status"] == "FAILED" and df.loc["failing", "metrics.steps_failed"] == 1
    assert (df.loc["bad", "status"], df.loc["bad", "tags.pipeline.status"]) == ("FAILED", "failed")
    assert df.loc["bad", "tags.pipeline.error"] == "asked to fail"
    assert (df.loc["after", "status"], df.loc["after", "tags.pipeline.status"]) == ("KILLED", "skipped")
    # artifacts beside the SQLite file, not in MLflow's default ./mlruns of the current folder
    assert df.loc["failing", "artifact_uri"].startswith((Path(mlflow_store.removeprefix("sqlite:///")).parent / "artifacts").as_uri())


def test_inside_an_azure_ml_job_the_steps_nest_under_the_jobs_run(tmp_path, monkeypatch, mlflow_store):
    """Azure ML sets MLFLOW_TRACKING_URI and the job's MLFLOW_RUN_ID: the steps are nested runs of the job's run,
    which Azure ML ends (the run leaves its status alone)."""
    client = mlflow.MlflowClient(mlflow_store)
    job = client.create_run(client.create_experiment("azureml-job", (tmp_path / "job").as_uri()), run_name="job")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("MLFLOW_RUN_ID", job.info.run_id)
    wf = project(tmp_path, "tracking: {backend: mlflow}")
    assert cli("run", wf, "--cache-dir", tmp_path / "c", "--output", tmp_path / "o", "--quiet") == 0
    df = runs(mlflow_store, "azureml-job").set_index("tags.mlflow.runName")
    assert set(df.index) == {"job", "src", "a", "report"}
    assert set(df.loc[["src", "a", "report"], "tags.mlflow.parentRunId"]) == {job.info.run_id}
    assert df.loc["job", "status"] == "RUNNING" and df.loc["job", "metrics.steps_ran"] == 3
    assert not (tmp_path / "o" / "mlflow").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("broken", ["server down", "unknown scheme", "mlflow not installed"])
def test_a_broken_tracker_warns_once_and_the_run_succeeds(tmp_path, monkeypatch, broken):
    uri = {"server down": f"http://127.0.0.1:{_closed_port()}", "unknown scheme": "nosuchstore://x"}.get(broken, "")
    if broken == "mlflow not installed":
        monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    wf = project(tmp_path)
    out = tmp_path / "out"
    assert cli("run", wf, "--cache-dir", tmp_path / "c", "--output", out, "--quiet",
               "--track", f"mlflow:{uri}" if uri else "mlflow") == 0
    log = (out / "logs" / "run.log").read_text()
    warned = [line for line in log.splitlines() if " tracking: " in line]
    assert len(warned) == 1 and "the run goes on without tracking" in warned[0], log
    assert "not installed" in warned[0] if broken == "mlflow not installed" else uri in warned[0]
    assert json.loads((out / "run.json").read_text())["status"] == "ok"
    assert not (out / "mlflow").exists()


def test_track_flag_is_checked_and_tracking_fields_are_validated(tmp_path, capsys):
    wf = project(tmp_path, "tracking: {backend: wandb}")
    assert cli("validate", wf) == 2
    assert "wf.yaml:3:" in capsys.readouterr().err
    wf = write(tmp_path, WORKFLOW.format(tracking="").replace("text: a", "mlflow: a"))  # the store's folder
    assert cli("validate", wf) == 2
    assert "output name 'mlflow' is taken" in capsys.readouterr().err
    wf = project(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli("run", wf, "--track", "wandb")
    assert exc.value.code == 2


def test_tracking_leaves_the_keys_alone(tmp_path, capsys):
    """Built untracked, every step is cached for a tracked workflow, under the same keys."""
    assert cli("run", project(tmp_path), "--cache-dir", tmp_path / "c", "--output", tmp_path / "o", "--quiet") == 0
    capsys.readouterr()
    keys = []
    for tracking in ("", "tracking: {backend: mlflow, uri: 'sqlite:///x.db', experiment: other}",
                     "tracking: {backend: mlflow, enabled: false}"):
        wf = project(tmp_path, tracking)
        assert cli("plan", wf, "--cache-dir", tmp_path / "c", "--json") == 0
        rows = json.loads(capsys.readouterr().out)
        assert {r["status"] for r in rows} == {"cached"}
        keys.append({r["name"]: r["key"] for r in rows})
    assert keys[0] == keys[1] == keys[2]


def test_validate_and_plan_of_a_tracked_workflow_import_no_mlflow(tmp_path):
    (tmp_path / "in.txt").write_text("hello")
    wf = write(tmp_path, """
        version: 1
        name: tracked
        tracking: {backend: mlflow, uri: "sqlite:///x.db"}
        steps: {src: {type: fake_source, path: in.txt}}
    """)
    for command in ("validate", "plan"):
        result = _probe(command, wf, cwd=tmp_path)
        assert result["code"] == 0 and "mlflow" not in result["heavy"]


def test_tracking_none_turns_the_workflows_tracking_off(tmp_path):
    wf = project(tmp_path, "tracking: {backend: mlflow}")
    assert cli("run", wf, "--cache-dir", tmp_path / "c", "--output", tmp_path / "o", "--quiet", "--track", "none") == 0
    assert not (tmp_path / "o" / "mlflow").exists()


def test_a_training_step_logs_its_loss_curve_through_the_trainer(tmp_path, tiny_bert_dir, tiny_csv, mlflow_store):
    import torch

    torch.set_num_threads(1)
    wf = write(tmp_path, f"""
        version: 1
        name: tracked-training
        steps:
          base: {{type: model, path: {tiny_bert_dir}}}
          sms: {{type: load_data, path: {tiny_csv}, text: text, label: label, splits: {{train: 0.8, validation: 0.2}}}}
          tune: {{type: lora, model: base, data: sms, task: text-classification, max_steps: 4, logging_steps: 1,
                 eval_strategy: steps, eval_steps: 2, batch_size: 8}}
    """)
    assert cli("run", wf, "--cache-dir", tmp_path / "c", "--output", tmp_path / "o", "--quiet",
               "--track", f"mlflow:{mlflow_store}") == 0
    df = runs(mlflow_store, "tracked-training").set_index("tags.mlflow.runName")
    tune = df.loc["tune"]
    client = mlflow.MlflowClient(mlflow_store)
    loss = client.get_metric_history(tune["run_id"], "loss")
    assert [m.step for m in sorted(loss, key=lambda m: m.step)] == [1, 2, 3, 4]
    assert {m.step for m in client.get_metric_history(tune["run_id"], "eval_loss")} == {2, 4}
    # the step's own metrics join them; the final train_loss the Trainer logged is not logged a second time
    assert len(client.get_metric_history(tune["run_id"], "train_loss")) == 1 and tune["metrics.val_loss"] > 0
    # our config is the params (the Trainer's own are left out: MLflow refuses a param logged twice)
    assert tune["params.max_steps"] == "4" and "params.per_device_train_batch_size" not in df
    assert tune["status"] == "FINISHED" and tune["tags.pipeline.status"] == "ran"
    assert {f.path for f in client.list_artifacts(tune["run_id"])} >= {"training_log.json", "loss.png"}
    assert mlflow.active_run() is None
