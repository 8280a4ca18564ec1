"""onnxruntime's MatMulNBits kernels on this CPU: one decode step's weight matmuls per bit width, block size and symmetry.

    python benchmarks/nbits_kernels.py [--threads 1 2] [--repeats 160] [--per-shape]

The int4 options `passes/ort/genai_build.py` picks per instruction set come from measurements like these.
A decode step of a small LM is a GEMV per weight matrix (one row of activations), so which MatMulNBits
format MLAS runs fastest on the CPU at hand decides most of the tokens/s: on an AVX2 host without VNNI
the block size did not matter; on a Zen 4 with AVX512-VNNI blocks of 64 ran 1.16-1.19x faster than 32 at 2 threads
(1.20-1.46x at one) and 8-bit layers 1.1-1.6x slower than 4-bit ones.

The graph holds the MatMulNBits calls of one decode step of SmolLM2-135M as our export writes it
(`--shapes` for another model): per layer QKV (576 -> 960), o_proj (576 -> 576), the fused gate + up
(576 -> 3072) and down (1536 -> 576), 30 layers, then lm_head (576 -> 49152). Every call has its own random
packed weights (the kernels' speed does not depend on the values), accuracy level 4 (int8 compute, what every
cpu build uses). Each format is one onnxruntime session; all sessions are timed in one process, interleaved in
shuffled blocks (passes/evaluate/latency.py), at each thread count. It prints the p50 of a step per format and
its ratio to int4 symmetric block 32 (the builder's default, and Olive's ModelBuilder int4), with the CPU,
its instruction set and the machine state just before timing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: (K, N) of one decode step of SmolLM2-135M: 30 x (QKV, o_proj, gate+up fused, down), then lm_head.
SMOLLM2_135M = [(576, 960), (576, 576), (576, 3072), (1536, 576)] * 30 + [(576, 49152)]
#: name -> (bits, block size, symmetric); the first is the baseline of the ratios.
FORMATS = {
    "int4 sym 32": (4, 32, True), "int4 asym 32": (4, 32, False),
    "int4 sym 64": (4, 64, True), "int4 asym 64": (4, 64, False),
    "int4 sym 128": (4, 128, True), "int4 asym 128": (4, 128, False),
    "int8 sym 32": (8, 32, True), "int8 sym 64": (8, 64, True),
}


def nbits_graph(shapes: list[tuple[int, int]], bits: int, block: int, symmetric: bool, seed: int = 0) -> bytes:
    """A serialized model: one MatMulNBits per (K, N) in `shapes`, reading inputs `a<K>` ([1, K] floats)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights, outputs = [], [], []
    for i, (k, n) in enumerate(shapes):
        blocks = -(-k // block)  # the last block is padded when `block` does not divide K
        names = [f"a{k}", f"w{i}", f"s{i}"]
        weights += [numpy_helper.from_array(rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8), f"w{i}"),
                    numpy_helper.from_array((rng.random(n * blocks, dtype=np.float32) + 0.5) * 0.01, f"s{i}")]
        if not symmetric:
            zero_points = rng.integers(0, 256, n * (-(-blocks * bits // 8)), dtype=np.uint8)
            weights.append(numpy_helper.from_array(zero_points, f"z{i}"))
            names.append(f"z{i}")
        nodes.append(helper.make_node("MatMulNBits", names, [f"y{i}"], domain="com.microsoft", K=k, N=n, bits=bits,
                                      block_size=block, accuracy_level=4))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, n]))
    inputs = [helper.make_tensor_value_info(f"a{k}", TensorProto.FLOAT, [1, k]) for k in sorted({k for k, _ in shapes})]
    graph = helper.make_graph(nodes, "decode_step_matmuls", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def time_formats(shapes: list[tuple[int, int]], formats: dict, threads: int, repeats: int) -> dict[str, float]:
    """p50 ms of one pass over `shapes` per format, all sessions interleaved in one process."""
    import numpy as np
    import onnxruntime as ort

    from passes.evaluate import latency

    runners = {}
    rng = np.random.default_rng(1)
    feed = {f"a{k}": rng.standard_normal((1, k), dtype=np.float32) for k in {k for k, _ in shapes}}
    for name, (bits, block, symmetric) in formats.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(nbits_graph(shapes, bits, block, symmetric), options,
                                       providers=["CPUExecutionProvider"])
        runners[name] = (lambda s: lambda: s.run(None, feed))(session)
    timings = latency.time_interleaved(runners, warmup=5, repeats=repeats, blocks=8)
    return {name: latency.percentile(sorted(samples), 50) for name, samples in timings.samples_ms.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default 1 and the cores)")
    parser.add_argument("--repeats", type=int, default=160, help="timed passes per format and thread count")
    parser.add_argument("--per-shape", action="store_true", help="also time each kind of matmul alone")
    parser.add_argument("--shapes", default=None, help="(K, N) pairs of one step as a Python list, e.g. '[(4096, 4096)]'")
    args = parser.parse_args()
    import ast

    import psutil

    from benchmarks.ort_avx2 import kernels_note
    from passes.ort.isa import cpu_info
    from passes.ort.sessions import cpu_cores

    shapes = ast.literal_eval(args.shapes) if args.shapes else SMOLLM2_135M
    threads = args.threads or sorted({1, cpu_cores()})
    cpu = cpu_info()
    print(f"CPU: {cpu.model} ({cpu.arch}, {psutil.cpu_count()} logical CPUs), instruction set {cpu.isa} "
          f"({' '.join(cpu.flags)}); {kernels_note()}")
    print(f"{len(shapes)} MatMulNBits calls per step, {sum(k * n for k, n in shapes) / 1e6:.0f}M weights; "
          f"p50 ms of a step (ratio: int4 sym 32's time / this one's, > 1 is faster)")
    groups = {"step": shapes}
    if args.per_shape:
        groups.update({f"{k}x{n} x{shapes.count((k, n))}": [(k, n)] * shapes.count((k, n))
                       for k, n in dict.fromkeys(shapes)})
    base = next(iter(FORMATS))
    for n in threads:
        idle, load = psutil.cpu_times_percent(interval=2).idle, os.getloadavg()[0]
        print(f"\n{n} thread{'s' if n != 1 else ''} (before timing: CPUs {idle:.0f}% idle over 2 s, load average {load:.2f})")
        print(f"{'format':14}" + "".join(f"{g:>22}" for g in groups))
        results = {g: time_formats(s, FORMATS, n, args.repeats) for g, s in groups.items()}
        for name in FORMATS:
            print(f"{name:14}" + "".join(f"{r[name]:9.2f} ms ({r[base] / r[name]:5.2f}x)".rjust(22)
                                        for r in results.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
