"""Latency measurement for the `evaluate` pass: every model timed in one process, interleaved.

This machine (and most shared CI machines) is noisy: the same model's p50 moves 25-60% between
separate runs. Timing models one after the other lets a slow minute land on one model only, so the
comparison is between the machine's moods, not the models. Instead all models are timed in shuffled,
interleaved blocks (the order is seeded, so a rerun interleaves the same way) and the ratios that the
report quotes come from one process under the same conditions.

Only the standard library and numpy are used here; the callables being timed bring their own engines.
"""

from __future__ import annotations

import gc
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

#: The clock used for every timed call (a module attribute so tests can observe the calls).
clock: Callable[[], float] = time.perf_counter


@dataclass
class Timings:
    """Raw timings of an interleaved run: per-model samples in ms and the block order actually used."""

    samples_ms: dict[str, list[float]]
    schedule: list[list[str]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)


def block_sizes(repeats: int, blocks: int) -> list[int]:
    """Split `repeats` timed calls into `blocks` blocks as evenly as possible (earlier blocks take the rest)."""
    blocks = max(1, min(blocks, repeats))
    base, extra = divmod(repeats, blocks)
    return [base + (1 if i < extra else 0) for i in range(blocks)]


@contextmanager
def _no_gc() -> Iterator[None]:
    """Keep Python's garbage collector out of timed calls (as `timeit` does), for every model alike.

    One collection first, then none: the timed calls create few reference cycles, and a full collection
    with torch loaded takes long enough to be worth doing once rather than per block.
    """
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


#: A pause before each block. After a run, PyTorch's OpenMP workers and onnxruntime's pool keep spinning
#: for a while; on 2 cores the next model's threads then compete with them. Measured on the quickstart
#: (MiniLM int8 vs PyTorch fp32, 2 threads, one process, two models): without the pause int8 ran at
#: 3.2-3.6 ms in some processes and 5.2-5.4 ms in others (3 of 6), as with libgomp forced to spin
#: (OMP_WAIT_POLICY=ACTIVE: 7.5 ms); with it 3.1-3.4 ms in 4 of 4. 50 ms a block, outside the timings.
#: The other cause of slow processes was the machine's state after a burst of work (passes/evaluate/machine.py).
SETTLE_S = 0.05


def time_interleaved(
    runners: Mapping[str, Callable[[], Any]],
    *,
    warmup: int,
    repeats: int,
    blocks: int,
    seed: int = 0,
    progress: Any = None,
) -> Timings:
    """Time every runner `repeats` times, interleaved in `blocks` shuffled blocks.

    Each model first gets `warmup` untimed calls. Then, for each block, the model order is shuffled
    (seeded) and each model runs its share of the repeats back to back, after an untimed SETTLE_S pause. `progress.advance(1)` is called
    after every timed call (`progress` may be None).
    """
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    rng = random.Random(seed)
    timings = Timings(samples_ms={name: [] for name in names})
    with _no_gc():
        for size in block_sizes(repeats, blocks):
            order = names[:]
            rng.shuffle(order)
            timings.schedule.append(order)
            for name in order:
                run, samples = runners[name], timings.samples_ms[name]
                time.sleep(SETTLE_S)  # untimed: the previous model's idle worker threads stop spinning
                for _ in range(size):
                    start = clock()
                    run()
                    samples.append((clock() - start) * 1000.0)
                    timings.calls.append(name)
                if progress is not None:
                    progress.advance(size, model=name)
    return timings


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted values, linearly interpolated (numpy's default method)."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_ms: Sequence[float], batch_size: int) -> dict[str, float]:
    """p50/p90/p99/mean/std in ms and the throughput in samples per second (from the mean)."""
    values = sorted(samples_ms)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {
        "latency_p50_ms": percentile(values, 50),
        "latency_p90_ms": percentile(values, 90),
        "latency_p99_ms": percentile(values, 99),
        "latency_mean_ms": mean,
        "latency_std_ms": std,
        "throughput_sps": batch_size * 1000.0 / mean,
    }


def deployment_batches(texts: Sequence[Any], batch_size: int, count: int, length: Callable[[Any], int]) -> list[list[Any]]:
    """`count` batches of the split's first texts as a deployment batches them: sorted by `length` (tokens), so
    each batch pads only to its longest member, in `batch_size` chunks; the batches keep the sorted order
    shuffled (seeded) so timing cycles through short and long ones alike. Fewer texts than needed are cycled."""
    if not texts:
        raise ValueError("the split has no rows to time with")
    needed = batch_size * count
    chosen = [texts[i % len(texts)] for i in range(needed)] if len(texts) < needed else list(texts[:needed])
    if batch_size == 1:
        return [[t] for t in chosen]  # split order: one text per call, no padding at all
    ordered = sorted(chosen, key=length)
    batches = [ordered[i:i + batch_size] for i in range(0, needed, batch_size)]
    random.Random(count).shuffle(batches)
    return batches


def cycling(calls: Sequence[Callable[[], Any]]) -> Callable[[], Any]:
    """One zero-argument callable running `calls` in turn, a different one each time (what the timer calls)."""
    state = {"next": 0}

    def run() -> Any:
        i = state["next"]
        state["next"] = (i + 1) % len(calls)
        return calls[i]()

    return run


def latency_texts(texts: Sequence[Any], batch_size: int) -> list[Any]:
    """The first `batch_size` texts of the split, repeated cyclically when the split is smaller."""
    if not texts:
        raise ValueError("the split has no rows to time with")
    return [texts[i % len(texts)] for i in range(batch_size)]


def load_average() -> float:
    """The 1-minute load average (0 where the platform has none); above the core count, timings suffer."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
