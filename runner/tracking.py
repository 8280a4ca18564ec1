"""Experiment tracking of a run (MLflow): the run as an MLflow run, each step as a nested run.

The runner tells a `RunObserver` what happens, from the parent process and from the steps' results
(never from inside a pass): `step_started` when a step is about to be built, `step_finished` with its
record and artifact (ran, cached or failed), `run_finished` with the outcome. `MlflowTracker` logs each
step's validated config as params, its cache key, type and status as tags, the numbers of its `metrics`
and `goals` as metrics, and its report files as artifacts. A cached step is logged too, as `cached`, with
the metrics its artifact recorded when it was built. Training curves come from the Trainer's own MLflow
integration: `step_started` creates the step's run and returns the variables (`MLFLOW_RUN_ID`, ...)
that point the Trainer's MLflow callback at it (`StepContext.tracking`).

Tracking never fails a run: the first failure (mlflow not installed, a bad URI, a server that does not
answer) is said once on the console and the run goes on untracked. MLflow is imported only here and
only when a run is tracked: validate, plan and --help never load it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from schemas.tracking import Tracking, parse_track_flag
from schemas.workflow import MLFLOW_DIR, REPORT_MD, RUN_JSON

from .records import RunOptions, RunResult, StepRecord

if TYPE_CHECKING:
    from passes import Artifact
    from pipelines.validate import LoadedWorkflow

    from .console import RunConsole

#: Files of a step's artifact logged as the step run's artifacts: its reports and charts, not its models.
REPORT_NAMES = {"metrics.json", "training_log.json"}
REPORT_SUFFIXES = {".md", ".html", ".png", ".svg"}
MAX_REPORT_BYTES = 20 * 2**20
#: The MLflow run status of each step status (skipped: the step never ran, as with a run that was stopped).
RUN_STATUS = {"ran": "FINISHED", "cached": "FINISHED", "failed": "FAILED", "skipped": "KILLED", "pending": "KILLED"}
WORKFLOW_STATUS = {"ok": "FINISHED", "goals_missed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_NAME_CHARS = re.compile(r"[^0-9A-Za-z_\-. :/]")


class RunObserver:
    """What the runner tells about a run. This base is the untracked run: it does nothing."""

    def step_started(self, step: str, key: str) -> dict[str, str]:
        """A step is about to be built: the environment variables for its pass's own tracking integrations."""
        return {}

    def step_finished(self, record: StepRecord, artifact: "Artifact | None") -> None:
        """A step ran, was found in the cache, or failed (then `artifact` is None)."""

    def run_finished(self, result: RunResult) -> None:
        """The run ended (its run.json and report.md are written); say where it was tracked."""


NOT_TRACKED = RunObserver()


def tracking_settings(loaded: "LoadedWorkflow", options: RunOptions) -> Tracking | None:
    """The workflow's `tracking:` with `--track` over it; None when the run is not tracked."""
    settings = loaded.workflow.tracking
    if options.track is not None:
        flag = parse_track_flag(options.track)
        if flag is None:
            return None
        settings = flag if settings is None else settings.model_copy(update={"enabled": True, "uri": flag.uri or settings.uri})
    return settings if settings is not None and settings.enabled else None


def open_tracking(loaded: "LoadedWorkflow", options: RunOptions, out_dir: Path, console: "RunConsole") -> RunObserver:
    """The observer of this run: an `MlflowTracker` when tracking is on and MLflow answers, else NOT_TRACKED."""
    settings = tracking_settings(loaded, options)
    if settings is None:
        return NOT_TRACKED
    tracker = MlflowTracker(settings, loaded, out_dir, console)
    return tracker if tracker.start() else NOT_TRACKED


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A step's config as MLflow params: nested mappings as `a.b`, lists as JSON, None left out, values cut to
    MLflow's length limit (MLflow refuses longer values and keys, and a param logged twice with two values)."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            params.update(flat_params(value, f"{name}."))
        elif value is not None:
            text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            if len(text) > MAX_PARAM_VAL_LENGTH:
                text = text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
            params[_NAME_CHARS.sub("_", name)[:MAX_ENTITY_KEY_LENGTH]] = text
    return params


def step_metrics(meta: dict[str, Any]) -> dict[str, float]:
    """The numbers a step reported: its `metrics` (`model/metric` for an evaluation's per-model results) and its
    goals (`goals/met`, `goals/total`, and 1 or 0 per goal as `goals/MODEL/METRIC`)."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    metrics: dict[str, float] = {}

    def add(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                add(sub, f"{name}/{key}" if name else str(key))
        elif isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            metrics[_NAME_CHARS.sub("_", name)[:MAX_ENTITY_KEY_LENGTH]] = float(value)

    add(meta.get("metrics") or {}, "")
    goals = meta.get("goals") or []
    if goals:
        metrics["goals/met"] = float(sum(bool(g.get("met")) for g in goals))
        metrics["goals/total"] = float(len(goals))
        for g in goals:
            add(bool(g.get("met")), f"goals/{g.get('model')}/{g.get('metric')}")
    return metrics


def report_files(folder: Path) -> list[Path]:
    """The report files at the top of an artifact folder (reports, charts, metrics and training logs)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and (p.name in REPORT_NAMES or p.suffix in REPORT_SUFFIXES)
                  and p.stat().st_size <= MAX_REPORT_BYTES)


def _shown(uri: str) -> str:
    """A URI as the console may show it: without the password of `https://user:password@host`."""
    return re.sub(r"//[^/@]*:[^/@]*@", "//***@", uri)


class MlflowTracker(RunObserver):
    """Logs a run to MLflow with `MlflowClient` (explicit run ids: no global active run in the runner's process)."""

    def __init__(self, settings: Tracking, loaded: "LoadedWorkflow", out_dir: Path, console: "RunConsole"):
        self.loaded, self.console = loaded, console
        self.experiment = settings.experiment or loaded.workflow.name
        env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        self.local = settings.uri is None and not env_uri
        self.store = out_dir / MLFLOW_DIR
        self.uri = settings.uri or env_uri or f"sqlite:///{(self.store / 'mlflow.db').resolve().as_posix()}"
        # Inside an Azure ML job the job itself is an MLflow run (MLFLOW_RUN_ID): steps nest under it.
        self.attach_to = os.environ.get("MLFLOW_RUN_ID") if settings.uri is None and env_uri else None
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.open_steps: dict[str, str] = {}  # step -> its MLflow run, created when the step started building
        self.logged: set[str] = set()
        self.failed = False

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Run MLflow calls; the first failure is said once and turns tracking off for the rest of the run."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MLflow's and SQLAlchemy's deprecation notices are not the user's
                yield
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a run
            if not self.failed:
                self.failed = True
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.console.line(f"tracking: {what} failed ({type(exc).__name__}: {detail[:300]}); "
                                  f"the run goes on without tracking (tracking URI {_shown(self.uri)})", style="yellow")

    def start(self) -> bool:
        """Import MLflow, reach the store and open the workflow's run; False (said once) when that fails."""
        try:
            import mlflow  # noqa: F401
            from mlflow import MlflowClient
        except ImportError:
            self.console.line("tracking: mlflow is not installed (pip install -c constraints.txt -e '.[track]'); "
                              "the run goes on without tracking", style="yellow")
            return False
        for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." is not for the console
            logging.getLogger(name).setLevel(logging.WARNING)
        with self._guard("connecting to MLflow"):
            self._check_server()
            if self.local:
                self.store.mkdir(parents=True, exist_ok=True)
            self.client = MlflowClient(tracking_uri=self.uri)
            if self.attach_to:
                self.run_id = self.attach_to
                self.experiment_id = self.client.get_run(self.run_id).info.experiment_id
            else:
                self.experiment_id = self._experiment_id()
                wf = self.loaded.workflow
                run = self.client.create_run(self.experiment_id, run_name=wf.name, tags={
                    "pipeline.workflow": wf.name, "pipeline.file": str(self.loaded.file),
                    "mlflow.source.name": str(self.loaded.file), "mlflow.note.content": wf.description})
                self.run_id = run.info.run_id
                self._log(self.run_id, params=flat_params({"target": wf.target.model_dump(mode="json")}))
        return not self.failed

    def _check_server(self) -> None:
        """An http(s) server that does not answer fails here in seconds, not after MLflow's minutes of retries."""
        if self.uri.startswith(("http://", "https://")):
            import requests

            requests.get(self.uri.rstrip("/") + "/health", timeout=5)  # any answer will do: it is there

    def _experiment_id(self) -> str:
        """The experiment named after the workflow, created on first use. An SQLite store keeps its artifacts in
        `artifacts/` beside its file (MLflow's default, `./mlruns` in the current folder, would scatter them)."""
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            db = self.uri.removeprefix("sqlite:///") if self.uri.startswith("sqlite:///") else None
            location = (Path(db).parent / "artifacts").resolve().as_uri() if db and db != ":memory:" else None
            try:
                return self.client.create_experiment(self.experiment, artifact_location=location)
            except Exception:  # noqa: BLE001 - another run created it meanwhile
                found = self.client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def _step_run(self, step: str, key: str | None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=step, tags={
            "mlflow.parentRunId": self.run_id, "pipeline.step": step, "pipeline.key": key or "",
            "pipeline.status": "running"})
        return run.info.run_id

    def step_started(self, step: str, key: str) -> dict[str, str]:
        if self.failed:
            return {}
        with self._guard(f"starting the run of step {step}"):
            self.open_steps[step] = run_id = self._step_run(step, key)
            # The Trainer's MLflow callback resumes this run (MLFLOW_RUN_ID) and logs its loss and evaluation
            # curves there; its own params (every TrainingArguments field) are left out: the step's config is
            # the params, and MLflow refuses a param logged twice with different values.
            return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_RUN_ID": run_id, "MLFLOW_MAX_LOG_PARAMS": "0"}
        return {}

    def step_finished(self, record: StepRecord, artifact: "Artifact | None") -> None:
        run_id = self.open_steps.pop(record.name, None)
        if self.failed:
            return
        with self._guard(f"logging step {record.name}"):
            # what a pass's own integration logged in the step's run (the Trainer's final train_loss) stays as it is
            known = self.client.get_run(run_id).data.metrics if run_id else {}
            run_id = run_id or self._step_run(record.name, record.key)
            config = self.loaded.workflow.steps[record.name].model_dump(mode="json", exclude={"type"})
            tags = {"mlflow.runName": record.name, "pipeline.status": record.status, "pipeline.type": record.type,
                    "pipeline.kind": record.kind, "pipeline.key": record.key or ""}
            if record.summary or record.error:
                tags["mlflow.note.content"] = record.summary or record.error or ""
            if record.error:
                tags["pipeline.error"] = record.error
            metrics = step_metrics(record.meta)
            if record.status == "ran":
                metrics["step_seconds"] = round(record.seconds, 3)
            self._log(run_id, params=flat_params(config), tags=tags, metrics={k: v for k, v in metrics.items() if k not in known})
            for path in report_files(artifact.path) if artifact is not None else []:
                self.client.log_artifact(run_id, str(path))
            self.client.set_terminated(run_id, RUN_STATUS.get(record.status, "FINISHED"))
            self.logged.add(record.name)

    def run_finished(self, result: RunResult) -> None:
        if self.failed:
            return
        for name, record in result.steps.items():  # skipped steps, and one stopped by Ctrl-C
            if name not in self.logged:
                self.step_finished(record, None)
        with self._guard("logging the run"):
            counts = {s: sum(r.status == s for r in result.steps.values()) for s in ("ran", "cached", "failed", "skipped")}
            self._log(self.run_id, tags={"pipeline.status": result.status, "pipeline.output": str(result.output_dir)},
                      metrics={**{f"steps_{s}": float(n) for s, n in counts.items()},
                               "run_seconds": round(result.finished - result.started, 3)})
            for name in (RUN_JSON, REPORT_MD):
                if (result.output_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(result.output_dir / name))
            if not self.attach_to:  # an Azure ML job's run is ended by Azure ML
                self.client.set_terminated(self.run_id, WORKFLOW_STATUS.get(result.status, "FINISHED"))
        if not self.failed:
            self.console.line(f"tracked in MLflow: experiment {self.experiment}, run {self.run_id} ({self.where()})")

    def where(self) -> str:
        """How to see the run: the `mlflow ui` command for a local store, else the tracking URI."""
        if self.local:
            return f"view it with: mlflow ui --backend-store-uri {self.uri}"
        if self.uri.startswith(("http://", "https://")):
            return f"{_shown(self.uri).rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"tracking URI {_shown(self.uri)}"

    def _log(self, run_id: str, params: dict[str, str] | None = None, tags: dict[str, str] | None = None,
             metrics: dict[str, float] | None = None) -> None:
        """log_batch within MLflow's limits: 100 params or tags, 1000 metrics per call; tag values cut to length."""
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

        stamp = int(time.time() * 1000)
        p = [Param(k, v) for k, v in (params or {}).items()]
        t = [RunTag(k, str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in (tags or {}).items()]
        m = [Metric(k, v, stamp, 0) for k, v in (metrics or {}).items()]
        for i in range(0, len(p), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=p[i:i + MAX_PARAMS_TAGS_PER_BATCH])
        for i in range(0, len(t), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=t[i:i + MAX_PARAMS_TAGS_PER_BATCH])
        for i in range(0, len(m), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=m[i:i + MAX_METRICS_PER_BATCH])
