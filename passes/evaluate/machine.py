"""Whether the cores worked in parallel while models were timed: a parallel-speedup probe.

Why: on this 2-vCPU machine (a shared cloud VM, like most CI machines) the second core at times stops
helping fine-grained multi-threaded work, most reliably for 10-30 s after a burst of work on both cores.
Measured right after 45 s of both cores busy: MiniLM int8 in ONNX Runtime ran at 5.0-5.5 ms with 2
threads, no better than with 1 thread (5.1-5.9 ms), then 3.0-3.4 ms once the machine had settled
(1.6-1.8x). PyTorch fp32 moved less (14-15 -> 17.5-19 ms), so int8's speedup over PyTorch read 3.4-3.5x
instead of 4.1-4.5x. Single-threaded runs are not affected, nor are independent processes. Pinning the
worker thread (`session.intra_op_thread_affinities`), dynamic block sizing, or no spinning did not
help. Gating every timing block on a probe did not either (the state flips within seconds, and the
probes between blocks cost more than they saved). What helped: timing before the evaluate step's own
quality pass instead of right after it (4 processes each way: 4.1-4.5x against 3.5-4.3x, three of the
four after it in the degraded state), and not starting while a probe says the cores are degraded.

So the evaluate step times first; before timing, `settle` probes the parallel speedup of a small int8
graph in ONNX Runtime at 1 and at N threads (interleaved, ratio of medians; ~1.7-1.9x with 2 threads
when settled, ~1.0-1.2x when not), idles up to SETTLE_TIMEOUT_S until it is back, records it with the
latencies (`parallel_speedup`, `settle_wait_s`), and warns when the cores never came back.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

#: Speedup of N threads over 1 below which the cores were not working in parallel (settled: ~1.8x with 2
#: threads here, degraded: ~1.0-1.2x). Scaled for N threads as 1 + SETTLED_GAIN * (N - 1).
SETTLED_GAIN = 0.4
#: The probe's graph: int8 MatMuls [64, 384] x [384, 1536] x [1536, 384] ..., an encoder layer's feed-forward.
PROBE_ROWS, PROBE_WIDTH, PROBE_DEPTH = 64, 384, 12
#: Longest wait for the cores before timing: the degraded state after a burst of work lasted 10-30 s here.
SETTLE_TIMEOUT_S = 30.0
#: Timed runs per thread count and probe (each run is ~1 ms).
PROBE_RUNS = 15


def needed_speedup(threads: int) -> float:
    """The speedup over 1 thread below which `threads` threads were not really running in parallel."""
    return 1.0 + SETTLED_GAIN * (threads - 1)


class ParallelProbe:
    """Two ONNX Runtime sessions of one small MatMul chain, at 1 and at `threads` intra-op threads."""

    def __init__(self, threads: int) -> None:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        nodes, inits, prev, width = [], [], "x", PROBE_WIDTH
        for i in range(PROBE_DEPTH):  # int8 weights, activations quantized on the fly: what dynamic int8 runs
            out_width = PROBE_WIDTH * 4 if width == PROBE_WIDTH else PROBE_WIDTH
            weight = rng.integers(-127, 128, (width, out_width), dtype=np.int8)
            inits += [numpy_helper.from_array(weight, f"w{i}"),
                      numpy_helper.from_array(np.array(0.1 / width ** 0.5, dtype=np.float32), f"s{i}")]
            nodes.append(helper.make_node("DynamicQuantizeMatMul", [prev, f"w{i}", f"s{i}"], [f"h{i}"], domain="com.microsoft"))
            prev, width = f"h{i}", out_width
        graph = helper.make_graph(nodes, "parallel_probe",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [PROBE_ROWS, PROBE_WIDTH])],
                                  [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [PROBE_ROWS, width])],
                                  initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = min(model.ir_version, 9)
        payload = model.SerializeToString()

        def session(n: int) -> Any:
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = n, 1
            options.log_severity_level = 3
            return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])

        self.threads = threads
        self.sessions = {1: session(1), threads: session(threads)}
        self.feeds = {"x": rng.standard_normal((PROBE_ROWS, PROBE_WIDTH)).astype(np.float32)}
        for s in self.sessions.values():  # first runs allocate
            for _ in range(3):
                s.run(None, self.feeds)

    def speedup(self, runs: int = PROBE_RUNS) -> float:
        """Median time at 1 thread over median time at `threads`, runs interleaved in pairs."""
        samples: dict[int, list[float]] = {n: [] for n in self.sessions}
        for _ in range(runs):
            for n, s in self.sessions.items():
                start = time.perf_counter()
                s.run(None, self.feeds)
                samples[n].append(time.perf_counter() - start)
        return statistics.median(samples[1]) / statistics.median(samples[self.threads])


def check_parallel(speedup: float, threads: int, log: Callable[[str], None]) -> bool:
    """Log a warning when the probe's speedup is under `needed_speedup(threads)`; False then."""
    needed = needed_speedup(threads)
    if speedup >= needed:
        return True
    log(f"the cores were not working in parallel when timing began ({speedup:.2f}x parallel speedup, {needed:.2f}x or "
        f"more expected with {threads} threads): multi-threaded latencies read high, ONNX Runtime's more than "
        "PyTorch's; rerun when the machine is quiet")
    return False


def wait_for_parallel(probe: Callable[[], float], threads: int, timeout_s: float, *, pause_s: float = 1.0,
                      sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                      log: Callable[[str], None] | None = None) -> tuple[float, float]:
    """Probe until the speedup reaches `needed_speedup(threads)` or `timeout_s` passed, idling between probes.

    Idle is what lets the machine settle. Returns (the last speedup, seconds waited); one log line when
    it had to wait.
    """
    needed, start = needed_speedup(threads), clock()
    speedup = probe()
    if speedup < needed and timeout_s >= pause_s and log:
        log(f"the cores are not working in parallel yet ({speedup:.2f}x parallel speedup, {needed:.2f}x expected with "
            f"{threads} threads, as after a burst of work): waiting up to {timeout_s:.0f} s before timing")
    while speedup < needed and clock() - start + pause_s <= timeout_s:
        sleep(pause_s)
        speedup = probe()
    waited = clock() - start
    if waited >= pause_s and log:
        log(f"waited {waited:.0f} s for the cores ({speedup:.2f}x parallel speedup)")
    return speedup, waited


def settle(threads: int, device: str, log: Callable[[str], None], timeout_s: float = SETTLE_TIMEOUT_S) -> dict[str, float]:
    """Before timing on the CPU with `threads` > 1: wait for the cores (`wait_for_parallel`), warn if they stay
    degraded; what to record with the latencies ({} for one thread or another device: the probe means nothing)."""
    if threads <= 1 or device != "cpu":
        return {}
    speedup, waited = wait_for_parallel(ParallelProbe(threads).speedup, threads, timeout_s, log=log)
    check_parallel(speedup, threads, log)
    return {"parallel_speedup": round(speedup, 3), "settle_wait_s": round(waited, 1)}
