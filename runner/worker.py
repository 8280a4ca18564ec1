"""One step's build, in this process or in a process of its own (`python -m runner.worker FD`).

`build_here` runs a pass in a fresh temporary folder and commits its artifact (one rename, see `Cache`).
The runner calls it directly, or starts this module as a worker process (`runner.isolation`): the job
arrives pickled on stdin, the log lines and the outcome go back over the file descriptor FD, and the
step's intra-op thread budget is in the environment (`passes.base.THREADS_ENV`, `OMP_NUM_THREADS`).
A worker that is interrupted (SIGINT, SIGTERM) removes its temporary folder and exits 130; one that
crashes leaves at most that folder, which the runner removes: nothing half-built is ever committed.
"""

from __future__ import annotations

import io
import pickle
import sys
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from passes import Artifact, get_pass
from schemas import StepConfig, Target
from schemas.errors import PipelineError
from schemas.paths import resolve_local_path

from .cache import Cache, DamageReport
from .console import RunConsole


@dataclass(frozen=True)
class BuildJob:
    """Everything a build needs, picklable: the step, its config and target, its inputs and its key."""

    step: str
    config: StepConfig
    target: Target
    workflow_dir: Path
    key: str
    key_parts: dict
    inputs: dict[str, Any]  # field -> Artifact or [Artifact]
    kind: str
    cache_root: Path
    replace: bool = False  # --force: the committed artifact replaces the one in the cache
    tracking: dict[str, str] = field(default_factory=dict)  # the step's MLflow run (runner.tracking), if tracked


class RunnerContext:
    """The `StepContext` the runner gives a pass."""

    def __init__(self, step: str, out_dir: Path, target: Target, workflow_dir: Path, console: RunConsole,
                 tracking: dict[str, str] | None = None, checkpoint_dir: Path | None = None):
        self.step, self.out_dir, self.target, self.workflow_dir = step, out_dir, target, workflow_dir
        self.tracking = tracking or {}  # the step's MLflow run, for the Trainer's own MLflow callback
        self.checkpoint_dir = checkpoint_dir  # resumable work (training checkpoints), kept until the commit
        self._console = console

    def log(self, message: str) -> None:
        """A line under the step, on the console and in the run log."""
        for text in str(message).splitlines() or [""]:
            self._console.line(f"      {text}")

    def progress(self, total: float | None, description: str, unit: str | None = None):
        """A progress bar for long work; `unit="B"` when the total is a byte count (shown as 86.7 MB)."""
        return self._console.progress(total, description, unit)

    def resolve_path(self, value: str) -> Path:
        """Resolve a workflow path (relative to the workflow file, or `pkg://`)."""
        return resolve_local_path(value, self.workflow_dir)


def damage_reporter(console: RunConsole) -> DamageReport:
    """Say on the console and in the run log that an entry was damaged and where it went."""
    def report(key: str, step: str, problems: list[str], where: Path) -> None:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        console.line(f"cache entry {key[:12]} (step {step}) is damaged: {'; '.join(problems[:3])}{more}; "
                     f"moved to {where}; it will be rebuilt", style="yellow")

    return report


def build_here(job: BuildJob, cache: Cache, console: RunConsole) -> Artifact:
    """Run the pass in a temporary folder and commit its artifact (call it holding the key's lock)."""
    pass_cls = get_pass(job.config.step_type())
    with cache.workdir(job.key) as work:
        ctx = RunnerContext(job.step, work / "data", job.target, job.workflow_dir, console, job.tracking,
                            checkpoint_dir=cache.checkpoints / job.key)
        meta = pass_cls(job.config).run(job.inputs, ctx)
        if not isinstance(meta, dict):
            raise TypeError(f"{pass_cls.__name__}.run must return a dict of metadata, not {type(meta).__name__}")
        if job.replace:
            cache.remove(job.key)
        artifact = cache.commit(job.key, work, kind=job.kind, step=job.step, pass_type=job.config.step_type(),
                                meta=meta, key_parts=job.key_parts, on_damage=damage_reporter(console))
        cache.drop_checkpoints(job.key)  # the step is committed: nothing will resume from them
        return artifact


class ForwardingConsole(RunConsole):
    """The worker's console: every line goes to the runner, which prints and logs it under the step's name.

    Not a terminal, so progress bars become a line every tenth of the way (readable beside other steps)."""

    def __init__(self, conn: Connection):
        super().__init__(stream=io.StringIO())
        self._conn = conn

    def write_log(self, text: str) -> None:
        """To the run log only (through the runner)."""
        _send(self._conn, ("log", text))

    def line(self, text: str, style: str | None = None) -> None:
        """To the console and the run log (through the runner)."""
        _send(self._conn, ("line", text, style))


def _send(conn: Connection, message: tuple) -> None:
    """Send to the runner; if it has stopped listening (it is stopping this worker), say nothing."""
    try:
        conn.send(message)
    except OSError:  # BrokenPipeError: a log line is not worth a traceback while the run stops
        pass


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"


def peak_memory_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource  # POSIX only: workers run on POSIX systems (see runner.isolation)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def main(argv: list[str]) -> int:
    """The worker process: read the job, build, report; exit 0 built, 1 failed, 130 interrupted."""
    from .interrupts import sigterm_as_interrupt

    conn = Connection(int(argv[0]), readable=False)
    try:
        with sigterm_as_interrupt():
            job: BuildJob = pickle.load(sys.stdin.buffer)
            cache = Cache(job.cache_root)
            try:
                build_here(job, cache, ForwardingConsole(conn))
            finally:
                cache.fingerprints.close()
    except KeyboardInterrupt:  # the temporary folder is gone already (workdir's cleanup)
        return 130
    except BaseException as exc:  # noqa: BLE001 - reported to the runner, which fails this step only
        _send(conn, ("failed", _describe(exc), traceback.format_exc()))
        return 1
    _send(conn, ("done", peak_memory_mb()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
