"""How the steps of a run are built: in the runner's process, or each in a worker process of its own.

A step runs in a worker (`runner.worker`) with `--jobs` > 1, with `isolation: process` (the step's or the
workflow's), or with a `resources.max_memory_gb` limit. Then a segfault, an abort or an out-of-memory
kill ends that process only: the step fails with the signal's name and its peak memory, and the steps
that do not depend on it go on. One process per step, not a pool: a pool's crashed worker breaks the
pool (`BrokenProcessPool`) and every step queued on it; and `os.wait4` on our own child gives its exact
peak memory even when a signal killed it.

The worker is watched while it builds: its memory (with its children's) every 0.1 s against
`max_memory_gb`, beyond which it is killed and the step reported out of memory; and the run's stop
(Ctrl-C, SIGTERM), on which it gets SIGTERM, then SIGKILL after `STOP_GRACE_S`. Whatever folder a
killed worker left under the cache's `tmp/` is removed here; commits are one rename, so no artifact is
ever half there.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import Pipe
from typing import Any

from passes import Artifact, Pass
from passes.base import THREADS_ENV
from schemas import StepConfig
from schemas.errors import PipelineError

from .cache import Cache
from .console import RunConsole
from .resources import GB, MB, MemoryGate, memory_need_mb, process_tree_rss_mb, refusal, threads_per_step
from .worker import BuildJob, build_here

#: After asking a worker to stop (SIGTERM), how long it gets to clean up before SIGKILL.
STOP_GRACE_S = 3.0
#: How often a worker's memory and the run's stop are checked.
POLL_S = 0.1

#: What each fatal signal usually means, for the step's error.
SIGNAL_MEANING = {
    "SIGSEGV": "a segmentation fault: a crash in native code",
    "SIGBUS": "a bus error: a crash in native code (or a file it had mapped was truncated)",
    "SIGABRT": "an abort: native code gave up, as abort() does",
    "SIGILL": "an illegal instruction: a library built for another CPU",
    "SIGFPE": "an arithmetic fault in native code",
    "SIGKILL": "killed from outside, most likely by the system's out-of-memory killer",
}


class StepCrashed(PipelineError):
    """A step's worker process died (a signal, or out of memory); the message says how and its peak memory."""


@dataclass
class Runtime:
    """The settings of one run's builds (isolation, jobs, threads, memory) and the run's stop signal."""

    jobs: int = 1
    default_isolation: str = "none"
    gate: MemoryGate = field(default_factory=MemoryGate)
    stop: threading.Event = field(default_factory=threading.Event)

    def isolated(self, config: StepConfig) -> bool:
        """Whether `config`'s step is built in a worker process of its own."""
        limit = config.resources is not None and config.resources.max_memory_gb is not None
        return self.jobs > 1 or limit or (config.isolation or self.default_isolation) == "process"

    def build(self, job: BuildJob, pass_cls: type[Pass], cache: Cache, console: RunConsole,
              usage: dict[str, Any]) -> Artifact:
        """Check the memory, then build the step here or in a worker; `usage` gets its threads and peak memory."""
        config = job.config
        need, how = memory_need_mb(config, pass_cls, job.inputs, job.workflow_dir)
        usage["memory_estimate_mb"] = round(need)

        def refuse(free: float) -> PipelineError:
            return refusal(job.step, config, pass_cls, need, how, free)

        self.gate.admit(job.step, need, refuse, lambda text: console.line(f"      [{job.step}] {text}"), self.stop)
        try:
            threads = threads_per_step(self.jobs, config.runs_alone())
            usage.update(threads=threads, isolation="process" if self.isolated(config) else "none")
            if not self.isolated(config):
                return build_here(job, cache, console)
            return self._in_worker(job, cache, console, threads, usage)
        finally:
            self.gate.release(job.step)

    def _in_worker(self, job: BuildJob, cache: Cache, console: RunConsole, threads: int, usage: dict) -> Artifact:
        if not hasattr(os, "wait4"):
            raise PipelineError("steps in processes of their own (--jobs > 1, `isolation: process`, `max_memory_gb`) "
                                "need a POSIX system (Linux, macOS): run without them here")
        limit = job.config.resources.max_memory_gb if job.config.resources else None
        prefix = f"[{job.step}] " if self.jobs > 1 else ""
        receive, send = Pipe(duplex=False)
        env = {**os.environ, THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "OPENBLAS_NUM_THREADS": str(threads),
               # the worker imports what this process imports (tests' plugins, a source checkout)
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        started = time.monotonic()
        # its own session (so its own process group; `process_group=` needs Python 3.11): a Ctrl-C at the terminal
        # reaches the runner only, which stops its workers itself (SIGTERM, then SIGKILL), so no worker dies
        # half-way through printing a traceback
        proc = subprocess.Popen([sys.executable, "-m", "runner.worker", str(send.fileno())], stdin=subprocess.PIPE,
                                pass_fds=(send.fileno(),), env=env, start_new_session=True)
        send.close()
        self.gate.attach(job.step, proc.pid)
        outcome: tuple | None = None
        peak = 0.0
        over_limit = stopped = False
        stop_sent = 0.0
        try:
            try:
                proc.stdin.write(pickle.dumps(job))
                proc.stdin.close()
            except BrokenPipeError:  # it died before reading its job: reported by its exit status below
                pass
            pipe_open = True
            while True:
                if pipe_open and receive.poll(POLL_S):
                    try:
                        message = receive.recv()
                    except EOFError:
                        pipe_open = False
                        continue
                    if message[0] == "line":
                        console.line(_tagged(message[1], prefix), message[2])
                    elif message[0] == "log":
                        console.write_log(_tagged(message[1], prefix))
                    else:
                        outcome = message
                    continue
                if not pipe_open:
                    time.sleep(POLL_S)
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    peak = max(peak, rusage.ru_maxrss * 1024 / MB)  # Linux: KiB
                    break
                peak = max(peak, process_tree_rss_mb(proc.pid))
                if limit is not None and peak > limit * GB / MB and not over_limit:
                    over_limit = True
                    proc.kill()
                if self.stop.is_set() and not stopped:
                    stopped, stop_sent = True, time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                elif stopped and time.monotonic() - stop_sent > STOP_GRACE_S:
                    proc.kill()
            while pipe_open and receive.poll(0):  # what it sent just before it ended
                try:
                    message = receive.recv()
                except EOFError:
                    break
                if message[0] in ("done", "failed"):
                    outcome = message
        finally:
            if proc.returncode is None:  # interrupted here (no --jobs): the worker must not outlive the run
                proc.terminate()
                try:
                    proc.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            receive.close()
            for stale in cache.stale_work(job.key):
                shutil.rmtree(stale.path, ignore_errors=True)
        usage["peak_memory_mb"] = round(peak)
        return self._outcome(job, cache, console, proc.returncode, outcome, peak, limit, over_limit, stopped,
                             time.monotonic() - started)

    def _outcome(self, job: BuildJob, cache: Cache, console: RunConsole, code: int, outcome: tuple | None, peak: float,
                 limit: float | None, over_limit: bool, stopped: bool, seconds: float) -> Artifact:
        if stopped or code in (130, 143):
            raise KeyboardInterrupt  # the run is stopping (or the worker was): the step is recorded as interrupted
        peak_text = f"{peak / 1000:.2f} GB" if peak >= 1000 else f"{peak:.0f} MB"
        if over_limit:
            raise StepCrashed(f"out of memory: the step used {peak / 1000:.2f} GB, over its limit resources.max_memory_gb = "
                              f"{limit:g}, and its process was stopped (SIGKILL) after {seconds:.1f} s; raise the "
                              "limit, or run it where there is more memory")
        if code < 0:
            name = signal.Signals(-code).name
            raise StepCrashed(f"the step's process was killed by {name} ({SIGNAL_MEANING.get(name, 'a fatal signal')}) "
                              f"after {seconds:.1f} s; peak memory {peak_text}; nothing of it was cached")
        if outcome and outcome[0] == "failed":
            console.write_log(outcome[2])
            raise PipelineError(outcome[1])
        if code != 0 or not outcome or outcome[0] != "done":
            raise StepCrashed(f"the step's process exited with status {code} without finishing; peak memory {peak_text}")
        artifact = cache.lookup(job.key, locked=True)
        if artifact is None:
            raise PipelineError(f"the worker of {job.step!r} reported success but its artifact is not in the cache")
        return artifact


def _tagged(text: str, prefix: str) -> str:
    """A worker's line with the step's name after its indent, so lines of steps running together read apart."""
    body = text.lstrip(" ")
    return f"{text[:len(text) - len(body)]}{prefix}{body}"
