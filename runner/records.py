"""The records of a run: what `pipeline run` was asked to do, what happened to each step, the outcome.

Plain dataclasses that both the runner (`execute`) and what a run leaves behind (`report`) read, kept
apart from both so that neither imports the other's module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


@dataclass
class RunOptions:
    """What `pipeline run` was asked to do besides the workflow itself."""

    cache_dir: Path | None = None
    output: Path | None = None
    force: Sequence[str] = ()
    only: Sequence[str] = ()
    fail_fast: bool = False
    quiet: bool = False
    track: str | None = None  # --track: "mlflow", "mlflow:URI" or "none" (over the workflow's `tracking:`)
    jobs: int = 1  # steps at the same time, each in a worker process (runner.parallel)


@dataclass
class StepRecord:
    """What happened to one step in a run."""

    name: str
    type: str
    kind: str
    status: str = "pending"  # ran | cached | failed | skipped
    key: str | None = None
    seconds: float = 0.0
    summary: str | None = None
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: How it was built: threads, isolation, memory estimate and (in a worker) peak memory in MB.
    resources: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """The outcome of a run: status (ok / failed / goals_missed / interrupted), the steps and where outputs went."""

    status: str
    steps: dict[str, StepRecord]
    output_dir: Path
    started: float
    finished: float
    stopped_by: str | None = None  # "SIGINT" or "SIGTERM" when interrupted

    @property
    def exit_code(self) -> int:
        """0 ok, 1 a step failed or an `on_goal_miss: fail` goal was missed, 130 Ctrl-C, 143 SIGTERM."""
        if self.status == "interrupted":
            return 143 if self.stopped_by == "SIGTERM" else 130
        return {"ok": 0, "failed": 1, "goals_missed": 1}.get(self.status, 1)
