"""The quickstart's int8 classifier (pruned, then quantized) vs Olive 0.13's int8 of the same merged MiniLM, timed
in one process.

    python benchmarks/cls_vs_olive.py [--cache-dir DIR] [--runs 3] [--repeats 300] [--isa ISA]

Runs the quickstart recipe (cached after the first time: merged -> prune -> export -> int8), then builds two
Olive models of its merged (LoRA-tuned, unpruned) model with Olive's own passes, the way Olive's examples do for
a BERT classifier on the CPU:

    olive_plain   OnnxConversion -> OnnxDynamicQuantization
    olive_tuned   OnnxConversion -> OrtTransformersOptimization (bert) -> OnnxDynamicQuantization

and times ours and both of Olive's in one process, interleaved in shuffled blocks (passes/evaluate/latency.py),
on the recipe's SMS test split, each scenario `--runs` times:

- batch 1, same inputs: every model gets the same texts, each unpadded (the model and its session alone);
- batch 1, as deployed: ours as its inference.py and evaluate run it (one text per call, no padding) against
  Olive's model as Olive's evaluator feeds it (its data config pads to the longest row of the split: 64
  tokens here, every timed call the same padded batch);
- batch 32, the same two ways (ours in length-sorted batches padded to their longest; throughput).

Accuracy comes from one `evaluate` step over merged, ours and Olive's models (same texts for all). It prints
the ratios the issue asks for (p50 ours / Olive tuned at batch 1, throughput ours / Olive at batch 32), the
sizes, and the machine state (CPU, instruction set, idle share of the CPUs just before timing, load average).
Olive comes with the README's set-up (the `olive` extra) and runs with OLIVE_DISABLE_TELEMETRY=1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.recipes import ENV, ROOT, run_recipe  # noqa: E402

RECIPE = ROOT / "pipelines" / "recipes" / "spam-minilm-int8.yaml"
#: Olive's passes per model, as its BERT-on-CPU examples chain them.
OLIVE_MODELS = {
    "olive_plain": {"conversion": {"type": "OnnxConversion", "target_opset": 17},
                    "quantization": {"type": "OnnxDynamicQuantization"}},
    "olive_tuned": {"conversion": {"type": "OnnxConversion", "target_opset": 17},
                    "transformers_optimization": {"type": "OrtTransformersOptimization", "model_type": "bert",
                                                  "num_heads": 12, "hidden_size": 384},
                    "quantization": {"type": "OnnxDynamicQuantization"}},
}
MAX_LENGTH = 64


def build_olive(merged: Path, out: Path, name: str, passes: dict) -> Path:
    """Olive's model of `merged` through `passes` (olive.workflows.run), with the tokenizer and config beside it."""
    folder = out / name
    if (folder / "model.onnx").is_file():
        return folder
    axes = {"0": "batch", "1": "sequence"}
    names = ["input_ids", "attention_mask", "token_type_ids"]
    config = {
        "input_model": {"type": "HfModel", "model_path": str(merged), "task": "text-classification",
                        "io_config": {"input_names": names, "input_shapes": [[1, MAX_LENGTH]] * 3,
                                      "input_types": ["int64"] * 3, "output_names": ["logits"],
                                      "dynamic_axes": {n: axes for n in names}}},
        "systems": {"local": {"type": "LocalSystem",
                              "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "passes": passes, "host": "local", "target": "local", "log_severity_level": 3,
        "output_dir": str(out / f".{name}-olive"), "cache_dir": str(out / ".olive-cache"),
    }
    config_file = out / f"{name}.json"
    config_file.write_text(json.dumps(config, indent=1))
    subprocess.run(["olive", "run", "--config", str(config_file)], check=True, capture_output=True, cwd=out, env=ENV)
    built = next((out / f".{name}-olive").rglob("model.onnx"))
    folder.mkdir(parents=True)
    for f in built.parent.iterdir():
        if f.suffix in (".onnx", ".data") or f.name.endswith(".onnx.data"):
            shutil.copy2(f, folder / f.name)
    for f in merged.iterdir():  # the tokenizer and config, so evaluate and the timing tokenize alike
        if f.suffix in (".json", ".txt") and not (folder / f.name).exists():
            shutil.copy2(f, folder / f.name)
    return folder


def idle_before(seconds: float = 2.0) -> float:
    """The share of CPU time idle over `seconds` just before timing (the timing itself keeps every core busy)."""
    import time

    before = proc_stat()
    time.sleep(seconds)
    return cpu_idle_share(before, proc_stat())


def cpu_idle_share(before: list[int], after: list[int]) -> float:
    """The share of CPU time idle between two /proc/stat `cpu` lines (0 when the platform has none)."""
    if not before or not after:
        return 0.0
    deltas = [b - a for a, b in zip(before, after)]
    total = sum(deltas)
    return (deltas[3] + deltas[4]) / total if total else 0.0


def proc_stat() -> list[int]:
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "cls-vs-olive")
    parser.add_argument("--runs", type=int, default=3, help="timing runs (each interleaves every model anew)")
    parser.add_argument("--isa", default=None, help="build our int8 for this instruction set (target.isa; default: "
                        "this CPU's), e.g. avx2 with benchmarks/ort_avx2.py's onnxruntime")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per model and scenario in a run")
    args = parser.parse_args()
    try:
        import olive  # noqa: F401
    except ImportError:
        print("olive is not installed: pip install -c constraints.txt -e '.[olive]' (the README's set-up has it)", file=sys.stderr)
        return 2
    merged, ours, data = run_recipe(RECIPE, args.cache_dir, ("merged", "int8", "sms"), args.isa)
    olive_dirs = {name: build_olive(merged.path, args.cache_dir, name, passes) for name, passes in OLIVE_MODELS.items()}

    from benchmarks.ort_avx2 import kernels_note
    from passes.base import Artifact
    from passes.ort.isa import cpu_info

    olive_arts = [Artifact(kind="onnx_model", path=d, meta={"task": "text-classification", "labels": merged.meta.get("labels")},
                           digest=name, step=name) for name, d in olive_dirs.items()]
    quality = accuracy_and_size([merged, ours, *olive_arts], data, args.cache_dir)
    info = cpu_info()
    print(f"CPU: {info.model}, {info.isa} ({' '.join(info.flags)}), {os.cpu_count()} logical CPUs; {kernels_note()}"
          + (f"; ours built for {args.isa}" if args.isa else ""))
    results = [time_once(ours.path, olive_dirs, data, args.repeats, seed) for seed in range(args.runs)]
    report(results, quality, ours.step)
    return 0


def accuracy_and_size(models: list, data, cache_dir: Path) -> dict:
    """Accuracy on the test split and size of every model, from one evaluate step (same texts for all)."""
    from passes.base import SimpleContext
    from passes.evaluate.steps import Evaluate
    from schemas.steps import EvaluateConfig

    folder = cache_dir / "quality"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cfg = EvaluateConfig(type="evaluate", models=[m.step for m in models], data=data.step, split="test",
                         metrics=["accuracy", "size"])
    return Evaluate(cfg).run({"models": models, "data": data}, SimpleContext("quality", folder, quiet=True))["metrics"]


def time_once(ours: Path, olive_dirs: dict[str, Path], data, repeats: int, seed: int) -> dict:
    """One interleaved timing run of every scenario: {scenario: {model: summary}} plus the machine state."""
    from datasets import load_from_disk

    from passes.evaluate import latency
    from passes.ort.sessions import cpu_cores, make_cpu_session

    texts = list(load_from_disk(str(Path(data.path) / "data"))["test"]["text"])
    threads = cpu_cores()
    tokenizer = _tokenizer(ours)
    sessions = {"ours": make_cpu_session(ours / "model.onnx", threads)}
    for name, folder in olive_dirs.items():
        sessions[name] = _olive_session(folder / "model.onnx", threads)
    out: dict = {"idle": idle_before()}
    load_before = latency.load_average()
    for batch_size in (1, 32):
        count = max(1, min(200, repeats)) if batch_size == 1 else max(1, min(len(texts) // 32, repeats))
        real = latency.deployment_batches(texts, batch_size, count, lambda t: len(tokenizer.encode(t).ids))
        unpadded = [_feed(tokenizer, sessions["ours"], b, None) for b in real]
        padded = _feed(tokenizer, sessions["ours"], latency.latency_texts(texts, batch_size), MAX_LENGTH)
        runners = {"ours": latency.cycling([_call(sessions["ours"], f) for f in unpadded])}
        for name in olive_dirs:
            runners[f"{name} (same inputs)"] = latency.cycling([_call(sessions[name], f) for f in unpadded])
            runners[f"{name} (padded to {MAX_LENGTH})"] = _call(sessions[name], padded)
        timings = latency.time_interleaved(runners, warmup=10, repeats=repeats if batch_size == 1 else max(30, repeats // 5),
                                           blocks=10, seed=seed)
        out[batch_size] = {name: latency.summarize(s, batch_size) for name, s in timings.samples_ms.items()}
    out["load"] = max(load_before, latency.load_average())
    return out


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_LENGTH)
    return tokenizer


def _feed(tokenizer, session, texts: list[str], pad_to: int | None) -> dict:
    """The session's inputs for `texts`: padded to their longest (pad_to None) or to `pad_to` tokens."""
    import numpy as np

    if pad_to:
        tokenizer.enable_padding(length=pad_to)
    else:
        tokenizer.enable_padding()
    enc = tokenizer.encode_batch(texts)
    tokenizer.no_padding()
    columns = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc],
               "token_type_ids": [e.type_ids for e in enc]}
    return {i.name: np.asarray(columns[i.name], dtype=np.int64) for i in session.get_inputs()}


def _call(session, feed: dict):
    return lambda: session.run(None, feed)


def _olive_session(path: Path, threads: int):
    """Olive's model in an onnxruntime session with onnxruntime's defaults (what Olive's evaluator builds)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def report(results: list[dict], quality: dict, ours_step: str) -> None:
    """Each run's p50s and throughputs, the ratios the issue asks for, accuracy and sizes."""
    for i, r in enumerate(results, 1):
        print(f"\nrun {i}: CPUs idle {r['idle']:.0%} in the 2 s before timing, load average {r['load']:.2f} (1 min)")
        for batch_size in (1, 32):
            print(f"  batch {batch_size:>2}: " + "; ".join(
                f"{name} p50 {s['latency_p50_ms']:.2f} ms, {s['throughput_sps']:.0f}/s" for name, s in r[batch_size].items()))
    print("\nratios (median of the runs; < 1 is faster for p50, > 1 is more for throughput):")
    for label, olive_name in (("Olive tuned", "olive_tuned"), ("Olive plain", "olive_plain")):
        for how in ("same inputs", f"padded to {MAX_LENGTH}"):
            key = f"{olive_name} ({how})"
            p50 = statistics.median(r[1]["ours"]["latency_p50_ms"] / r[1][key]["latency_p50_ms"] for r in results)
            thr = statistics.median(r[32]["ours"]["throughput_sps"] / r[32][key]["throughput_sps"] for r in results)
            print(f"  vs {label}, {how:>15}: batch-1 p50 {p50:.2f}x, batch-32 throughput {thr:.2f}x")
    print("\naccuracy (test split) and size:")
    base = quality["merged"]["accuracy"]
    for name, m in quality.items():
        shown = ours_step + " (ours)" if name == ours_step else name
        print(f"  {shown:18} accuracy {m['accuracy']:.4f} ({(m['accuracy'] - base) * 100:+.2f} pt vs merged), "
              f"{m['size_mb']:.1f} MB")


if __name__ == "__main__":
    sys.exit(main())
