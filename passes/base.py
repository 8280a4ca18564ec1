"""What a pass is, what it receives and what it returns.

A pass is a small class bound to its config class (from `schemas`). The runner gives it its inputs
(the artifacts of the steps its references name) and a `StepContext`; the pass writes files only under
`ctx.out_dir` and returns the artifact's metadata (a JSON-able dict). The runner commits the folder
to the cache atomically, with a manifest of file digests.

Artifact folder conventions (what downstream passes may rely on):

- `hf_model`: a `save_pretrained` folder (config.json, weights, tokenizer files). meta: `task`,
  `labels` (list of names or None), `model_type`, `architecture`.
- `adapter`: a PEFT folder (adapter_config.json, adapter weights; for classification the new head is
  saved with it via `modules_to_save`), tokenizer files, `training_log.json`, `loss.png`.
  meta: `task`, `labels`, `train_metrics`, `eval_metrics`.
- `onnx_model`: `model.onnx` (+ external data), tokenizer files, `config.json` (with `id2label`),
  `inference.py`. meta: `task`, `labels`, `inputs`, `outputs`.
- `dataset`: `datasets.DatasetDict.save_to_disk` in the folder `data/`. Columns: `text`, optional
  `text_pair`, `label` (int ids) for classification; `prompt`, `response` for instruction data;
  `messages` (lists of {role, content} turns) for chat data.
  meta: `labels` (names in id order or None), `format` (`classification` | `instruction` | `chat`), `splits`
  ({split: {"rows": n, "labels": {name: count}}}); chat data adds `chat_format` and `malformed` ({reason: count}).
- `metrics`: `metrics.json`, `report.md` and charts. meta: `metrics` ({model step: {metric: value}}).

meta may carry `summary` (one line the runner prints when the step ends) and `metrics` (recorded in
`run.json`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Iterator, Protocol, TypeVar

from schemas import StepConfig, Target
from schemas.errors import PipelineError

C = TypeVar("C", bound=StepConfig)


class PassError(PipelineError):
    """A pass failed for a reason the user can act on; the message says what and how to fix it."""


@dataclass(frozen=True)
class Artifact:
    """A committed step output: its kind, folder, metadata and content digest."""

    kind: str
    path: Path
    meta: dict[str, Any]
    digest: str
    step: str


class Progress(Protocol):
    """A progress handle a pass advances; the runner draws it as a bar."""

    def advance(self, n: float = 1, **fields: Any) -> None: ...

    def update(self, *, total: float | None = None, description: str | None = None, **fields: Any) -> None: ...

    def __enter__(self) -> "Progress": ...

    def __exit__(self, *exc: Any) -> None: ...


class StepContext(Protocol):
    """What the runner gives a pass besides its inputs."""

    step: str
    out_dir: Path
    target: Target
    workflow_dir: Path
    #: When the run is tracked: the environment variables that point a library's own tracking integration
    #: (the Trainer's MLflow callback) at this step's run (`MLFLOW_RUN_ID`, ...); empty otherwise.
    tracking: dict[str, str]
    #: A folder for resumable work (training checkpoints) that outlives a killed run: the runner keys it by the
    #: step's cache key, keeps it while the step is not committed and removes it once it is. None: no such folder.
    checkpoint_dir: Path | None

    def log(self, message: str) -> None:
        """Write a line to the console and the run log."""

    def progress(self, total: float | None, description: str, unit: str | None = None) -> Progress:
        """A progress bar for long work (training steps, calibration, latency runs); `unit="B"` for bytes."""

    def resolve_path(self, value: str) -> Path:
        """A path from the workflow, resolved: relative to the workflow file, or `pkg://` in a package."""


#: Set by the runner in a step's worker process when several steps run at once: the intra-op threads this
#: step may use (cores // jobs), so that N steps on C cores do not run N x C threads.
THREADS_ENV = "PIPELINE_THREADS"


def thread_budget() -> int | None:
    """The threads the runner gives this step (`THREADS_ENV`), or None when the step has the machine to itself."""
    value = os.environ.get(THREADS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


@dataclass(frozen=True)
class MemoryUse:
    """A pass's peak memory (resident set), as measured: `base_mb` (the libraries it loads) plus `factor` times
    the size on disk of its inputs. The runner checks it against the free memory before the step starts."""

    factor: float
    base_mb: float

    def estimate_mb(self, input_mb: float) -> float:
        """The peak in MB for inputs of `input_mb` MB on disk."""
        return self.base_mb + self.factor * input_mb


class Pass(Generic[C]):
    """Base of every pass. Subclasses set `config_class`, `version` and `packages` and implement `run`."""

    config_class: ClassVar[type[StepConfig]]
    #: Bump when the same config and inputs give a different result: it changes every cache key.
    version: ClassVar[int] = 1
    #: Distributions whose versions enter the cache key (their upgrades may change the result).
    packages: ClassVar[tuple[str, ...]] = ()
    #: Peak memory, for the runner's check before the step starts (passes that load models measure their own:
    #: see each pass). The default is a Python process with NumPy-sized libraries reading its inputs twice over.
    memory: ClassVar[MemoryUse] = MemoryUse(factor=2.0, base_mb=150.0)
    #: What to try when a step of this pass does not fit in memory (besides another machine), for the refusal.
    memory_hint: ClassVar[str] = ""

    @classmethod
    def memory_for(cls, config: StepConfig) -> MemoryUse:
        """The peak memory of a step with `config`: `memory`, unless what the pass does depends on the config."""
        return cls.memory

    def __init__(self, config: C):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, not {type(config).__name__}")
        self.config: C = config

    def run(self, inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Do the work: read `inputs` ({field: Artifact or [Artifact]}), write under `ctx.out_dir`, return meta."""
        raise NotImplementedError


@contextlib.contextmanager
def tracking_environment(ctx: StepContext) -> Iterator[bool]:
    """Inside: `ctx.tracking` in the environment, for integrations that read it there (the Trainer's MLflow
    callback); yields whether the step is tracked. Restores the environment after, and ends a run such an
    integration left active when the work failed (the next step's integration could not start its own)."""
    env = dict(getattr(ctx, "tracking", None) or {})
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield bool(env)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        mlflow = sys.modules.get("mlflow") if env else None
        if mlflow is not None and mlflow.active_run() is not None:
            mlflow.end_run()  # the runner sets the run's final status from the step's


# --- a plain context, for tests, notebooks and the runner's base ------------------------------------


class _CountingProgress:
    """A progress handle that only counts (the runner replaces it with a rich bar)."""

    def __init__(self, total: float | None, description: str):
        self.total, self.description, self.completed, self.fields = total, description, 0.0, {}

    def advance(self, n: float = 1, **fields: Any) -> None:
        self.completed += n
        self.fields.update(fields)

    def update(self, *, total: float | None = None, description: str | None = None, **fields: Any) -> None:
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        self.fields.update(fields)

    def __enter__(self) -> "_CountingProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


@dataclass
class SimpleContext:
    """A `StepContext` that prints log lines and counts progress; enough to run a pass by hand."""

    step: str
    out_dir: Path
    target: Target = field(default_factory=Target)
    workflow_dir: Path = field(default_factory=Path.cwd)
    checkpoint_dir: Path | None = None
    lines: list[str] = field(default_factory=list)
    quiet: bool = False
    tracking: dict[str, str] = field(default_factory=dict)

    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.lines.append(message)
        if not self.quiet:
            print(f"[{stamp}] {self.step}: {message}", file=sys.stderr)

    def progress(self, total: float | None, description: str, unit: str | None = None) -> Progress:
        return _CountingProgress(total, description)

    def resolve_path(self, value: str) -> Path:
        from schemas.paths import resolve_local_path

        return resolve_local_path(value, self.workflow_dir)
