"""`pipeline run --jobs N`: up to N steps at the same time, each as soon as the steps it reads have ended.

Each running step has a thread here that looks it up in the cache, holds its key's lock and waits for its
worker process (`runner.isolation`); the work itself is done in the workers, so the threads only wait.
A step that `runs_alone()` (it times models: latency, tokens/s) starts when nothing else runs, and
nothing starts beside it; while it waits for the others to end, no later step starts before it.
On Ctrl-C or SIGTERM the run's stop is set: every worker is stopped (SIGTERM, then SIGKILL after a
grace period), their threads end, and the interrupt goes on to the caller.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable

#: How long the threads get to stop their workers after an interrupt (their grace is shorter).
JOIN_AFTER_STOP_S = 10.0


def run_parallel(order: list[str], predecessors: Callable[[str], Iterable[str]], run_one: Callable[[str], None],
                 jobs: int, alone: Callable[[str], bool], stop: threading.Event) -> None:
    """Run `run_one(step)` for every step of `order` (a topological order) on up to `jobs` threads.

    A step starts once all its predecessors have ended (whatever their outcome: `run_one` decides what
    a failed predecessor means). Raises what a `run_one` raised unexpectedly, and KeyboardInterrupt
    (or its subclass) after stopping everything when interrupted.
    """
    pending = list(order)
    running: dict[Future, str] = {}
    ended: set[str] = set()
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="step")
    try:
        while pending or running:
            exclusive = any(alone(n) for n in running.values())
            for name in list(pending):
                if exclusive or len(running) >= jobs:
                    break
                if not all(p in ended for p in predecessors(name)):
                    continue
                if alone(name) and running:
                    break  # it waits for the running steps; nothing later jumps ahead of it
                pending.remove(name)
                running[pool.submit(run_one, name)] = name
                exclusive = alone(name)
            done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                ended.add(running.pop(future))
                future.result()  # run_one records a step's failure itself: anything raised here is a bug
    except BaseException:
        stop.set()
        wait(running, timeout=JOIN_AFTER_STOP_S)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
