"""Memory and threads of the steps of a run: the check before a step starts, and the split of the cores.

Before a step is built, its memory need is estimated (the pass's measured `MemoryUse`: a fixed part for
its libraries plus a factor times the size on disk of its inputs; or the step's `resources.memory_gb`)
and compared with the memory available now (psutil). A step that cannot fit even with nothing else of
this run running is refused with what to do, instead of being killed halfway by the out-of-memory
killer. With `--jobs`, a step that fits only once the running steps end waits for them: steps are
never started side by side into an out-of-memory kill.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import psutil

from passes import Artifact, Pass
from passes.ort.sessions import cpu_cores
from schemas import StepConfig
from schemas.errors import PipelineError
from schemas.paths import looks_like_hub_id, resolve_local_path

from .cache import tree_size

MB, GB = 1e6, 1e9


class MemoryRefused(PipelineError):
    """A step was not started: it would not fit in the memory available."""


def available_memory_mb() -> float:
    """Memory the system can give without swapping (psutil's `available`)."""
    return psutil.virtual_memory().available / MB


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB (0 when it is gone)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / MB


def threads_per_step(jobs: int, alone: bool, cores: int | None = None) -> int:
    """Intra-op threads of one step: all the cores for a step that runs alone, else cores // jobs (at least 1)."""
    cores = cores or cpu_cores()
    return cores if alone or jobs <= 1 else max(1, cores // jobs)


def _size_mb(path: Path) -> float:
    """MB on disk of an input file or folder (0 when it is not there, e.g. a hub id)."""
    return tree_size(path) / MB if path.exists() else 0.0


def inputs_size_mb(config: StepConfig, inputs: dict[str, Any], folder: Path) -> float:
    """What the step reads, on disk: the artifacts it references and its local files (hub ids count 0)."""
    total = 0.0
    for value in inputs.values():
        for art in value if isinstance(value, list) else [value]:
            if isinstance(art, Artifact):
                total += _size_mb(art.path)
    for fld, (spec, is_list) in config.path_fields().items():
        value = getattr(config, fld)
        for v in (value if is_list else [value]) if value is not None else []:
            if spec.allow_remote and looks_like_hub_id(v, folder):
                continue
            try:
                total += _size_mb(resolve_local_path(v, folder))
            except (OSError, PipelineError):
                continue
    return total


def memory_need_mb(config: StepConfig, pass_cls: type[Pass], inputs: dict[str, Any], folder: Path) -> tuple[float, str]:
    """The step's estimated peak in MB, and how it was reached (for messages)."""
    if config.resources is not None and config.resources.memory_gb is not None:
        return config.resources.memory_gb * GB / MB, "its resources.memory_gb"
    size = inputs_size_mb(config, inputs, folder)
    use = pass_cls.memory_for(config)
    return use.estimate_mb(size), (f"estimated: {use.base_mb:.0f} MB for {config.step_type()}'s libraries + "
                                   f"{use.factor:g} x {size:.0f} MB of inputs")


def _gb(mb: float) -> str:
    return f"{mb / 1000:.1f} GB" if mb >= 1000 else f"{mb:.0f} MB"


def refusal(step: str, config: StepConfig, pass_cls: type[Pass], need: float, how: str, free: float) -> MemoryRefused:
    """The error for a step that cannot fit: what it needs, what there is, and what to try."""
    tries = [pass_cls.memory_hint] if pass_cls.memory_hint else []
    tries += [f"run it where there is more memory (another machine or target; in Azure ML, `pipeline submit --mode "
              f"pipeline --step-compute {step}=BIGGER_CLUSTER`)",
              "stop other programs that hold memory",
              f"if the estimate is wrong for this step, set `resources: {{memory_gb: N}}` on steps.{step}"]
    return MemoryRefused(
        f"steps.{step} ({config.step_type()}) needs about {_gb(need)} of memory ({how}) but only {_gb(free)} is "
        f"available: it was not started, so as not to be killed halfway. Try: " + "; or ".join(tries))


class MemoryGate:
    """Admits the builds of one run by memory: refuses what can never fit, holds back what fits only later."""

    def __init__(self, available: Callable[[], float] | None = None):
        self._available = available
        self._cond = threading.Condition()
        self._running: dict[str, list] = {}  # step -> [need MB, pid or None]

    def _still_to_take(self) -> tuple[float, float]:
        """(MB our running builds use now, MB they may still take up to their estimates)."""
        used = taking = 0.0
        for need, pid in self._running.values():
            rss = process_tree_rss_mb(pid) if pid else 0.0
            used += rss
            taking += max(0.0, need - rss)
        return used, taking

    def admit(self, step: str, need: float, refuse: Callable[[float], MemoryRefused], log: Callable[[str], None],
              stop: threading.Event | None = None) -> None:
        """Block until `need` MB fits beside the running builds; raise `refuse(free)` if it never can, and
        KeyboardInterrupt if the run is stopped (`stop`) while it waits."""
        waiting = False
        with self._cond:
            while True:
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                free = (self._available or available_memory_mb)()
                used, taking = self._still_to_take()
                if need > free + used:
                    raise refuse(free + used)
                if need <= free - taking or not self._running:
                    break
                if not waiting:
                    log(f"waiting for memory: needs about {_gb(need)}, {_gb(max(0.0, free - taking))} is free beside "
                        f"the running steps ({', '.join(self._running)})")
                    waiting = True
                self._cond.wait(timeout=1.0)
            self._running[step] = [need, None]

    def attach(self, step: str, pid: int) -> None:
        """The build of `step` runs in process `pid` (its memory is counted from now)."""
        with self._cond:
            if step in self._running:
                self._running[step][1] = pid

    def release(self, step: str) -> None:
        """The build of `step` ended: what it held may go to a waiting step."""
        with self._cond:
            self._running.pop(step, None)
            self._cond.notify_all()
