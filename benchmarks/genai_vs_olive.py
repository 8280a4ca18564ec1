"""Our onnxruntime-genai int4 exports of the chat recipe's model vs Olive 0.13's, side by side.

    python benchmarks/genai_vs_olive.py [--cache-dir DIR] [--runs N] [--repeat N] [--no-gptq] [--isa ISA]

Runs the chat recipe and the calibrated chains (pipelines/recipes/chat-smollm2-gptq.yaml: Olive mixed
precision + GPTQ -> our export, `int4_gptq`; Olive QuaRot + all-int4 GPTQ in the CPU's fastest format -> our export, `int4_rotated`, and
its block scales tuned by distillation (`tune_scales`) -> our export, `int4_tuned`;
GPTQ takes minutes the first time, all are cached afterwards), exports
the merged model a second time with Olive's own CLI (`olive capture-onnx-graph --use_model_builder
--precision int4`, its ModelBuilder pass, as a user would run it; Olive writes no thread setting, so genai runs
it on one thread, and a second copy, `olive_int4_threads`, gets ours), then in one process:
- one `evaluate` step with perplexity and size of merged (PyTorch fp32, the baseline), ours (the recipe's
  `int4`), the chains' `int4_gptq`, `int4_rotated` and `int4_tuned`, and Olive's;
- `--repeat` evaluate steps timing the int4 folders' greedy decode, interleaved within each step;
and prints each model's tokens/s ratio to Olive's (the median of the repeats' ratios, and their range; and to
Olive's with our thread setting),
its perplexity against fp32 (%), its size, with the machine state before each repeat (CPU model,
instruction set, idle % of the CPUs over 5 s, load).

Olive comes with the README's set-up (the `olive` extra: olive-ai 0.13) and runs with
OLIVE_DISABLE_TELEMETRY=1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.recipes import ENV, ROOT, run_recipe  # noqa: E402

RECIPES = ROOT / "pipelines" / "recipes"
OLIVE = "olive_builder_int4"
#: Olive's folder with the thread count ours gets (the machine's cores) written into its genai_config.json: what a
#: user of Olive's output could set by hand. Ratios to it show what our formats give beyond the thread setting.
OLIVE_THREADS = "olive_int4_threads"


def evaluate(models: list, data, metrics: list[str], runs: int, report: Path) -> dict:
    """One evaluate step over `models` (speed interleaved within it); its metrics per model."""
    from passes.base import SimpleContext
    from passes.evaluate.steps import Evaluate
    from schemas.steps import EvaluateConfig

    cfg = EvaluateConfig(type="evaluate", models=[m.step for m in models], data="qa", split="test", metrics=metrics,
                         max_new_tokens=64, generation_runs=runs)
    shutil.rmtree(report, ignore_errors=True)
    report.mkdir(parents=True)
    return Evaluate(cfg).run({"models": models, "data": data}, SimpleContext("compare", report, quiet=True))["metrics"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "genai-vs-olive")
    parser.add_argument("--runs", type=int, default=7, help="timed generations per model in each repeat")
    parser.add_argument("--repeat", type=int, default=3, help="evaluate steps timing decode (each interleaved)")
    parser.add_argument("--isa", default=None, help="build our formats for this instruction set (target.isa; "
                        "default: this CPU's), e.g. avx2 with benchmarks/ort_avx2.py's onnxruntime")
    parser.add_argument("--no-gptq", action="store_true", help="leave out the calibrated chain (GPTQ)")
    args = parser.parse_args()
    if shutil.which("olive") is None:
        print("olive is not installed: pip install -c constraints.txt -e '.[olive]' (the README's set-up has it)", file=sys.stderr)
        return 2
    import psutil

    from benchmarks.ort_avx2 import kernels_note
    from passes.base import Artifact
    from passes.ort.genai_build import set_threads
    from passes.ort.isa import cpu_info
    from passes.ort.sessions import cpu_cores

    merged, ours, data = run_recipe(RECIPES / "chat-smollm2-int4.yaml", args.cache_dir, ("merged", "int4", "qa"), args.isa)
    models = [ours]
    if not args.no_gptq:
        models += run_recipe(RECIPES / "chat-smollm2-gptq.yaml", args.cache_dir, ("int4_gptq", "int4_rotated", "int4_tuned"),
                             args.isa)
    olive_dir = args.cache_dir / "olive" / merged.digest[:12]  # rebuilt when the merged model changes
    if not (olive_dir / "genai_config.json").is_file():
        shutil.rmtree(olive_dir, ignore_errors=True)
        subprocess.run(["olive", "capture-onnx-graph", "-m", str(merged.path), "--use_model_builder", "--precision",
                        "int4", "-o", str(olive_dir)], check=True, env=ENV, capture_output=True,
                       cwd=args.cache_dir)  # Olive writes its own .olive-cache in the working folder
    threaded = olive_dir.with_name(olive_dir.name + "-threads")
    threaded.mkdir(exist_ok=True)
    for item in olive_dir.iterdir():  # the same files (links), but a genai_config.json of its own
        if item.name != "genai_config.json" and not (threaded / item.name).exists():
            (threaded / item.name).symlink_to(item.resolve())
    shutil.copyfile(olive_dir / "genai_config.json", threaded / "genai_config.json")
    set_threads(threaded, cpu_cores())
    for step, folder in ((OLIVE, olive_dir), (OLIVE_THREADS, threaded)):
        models.append(Artifact(kind="onnx_model", path=folder, meta={"task": "causal-lm", "format": "genai"},
                               digest=step, step=step))

    cpu = cpu_info()
    print(f"CPU: {cpu.model} ({cpu.arch}, {psutil.cpu_count()} logical CPUs), instruction set {cpu.isa}; "
          f"{kernels_note()}" + (f"; ours built for {args.isa}" if args.isa else ""))
    quality = evaluate([merged, *[m for m in models if m.step != OLIVE_THREADS]], data, ["perplexity", "size"], 1,
                       args.cache_dir / "report-quality")
    quality[OLIVE_THREADS] = quality[OLIVE]  # the same weights and graph
    speeds: dict[str, list[float]] = {m.step: [] for m in models}
    runtimes: dict[str, str] = {}
    for i in range(args.repeat):
        # the machine just before (as `vmstat 1 5` would show it): other work there slows every model
        idle, load = psutil.cpu_times_percent(interval=5).idle, os.getloadavg()[0]
        m = evaluate(models, data, ["tokens_per_second", "time_to_first_token"], args.runs,
                     args.cache_dir / f"report-speed-{i + 1}")
        for name, r in m.items():
            speeds[name].append(r["tokens_per_second"])
            runtimes[name] = r.get("runtime", "")
        print(f"repeat {i + 1}: " + ", ".join(f"{n} {r['tokens_per_second']:.1f} tok/s" for n, r in m.items())
              + f"; before it: CPUs {idle:.0f}% idle over 5 s, load average {load:.2f}")
        print("  ours/Olive: " + ", ".join(f"{s} {speeds[s][-1] / speeds[OLIVE][-1]:.2f}x" for s in speeds if s != OLIVE)
              + "; ours/Olive with our threads: "
              + ", ".join(f"{s} {speeds[s][-1] / speeds[OLIVE_THREADS][-1]:.2f}x" for s in speeds if "olive" not in s))
    fp32 = quality["merged"]["perplexity"]
    # Each repeat's ratio pairs two rates measured in the same minutes: their median is steadier than a ratio
    # of medians, and their range shows this machine's noise (two folders of one format differ only by it).
    print(f"\n{'model':20} {'tokens/s':>9} {'vs Olive':>9} {'(range)':>13} {'vs Olive+thr':>13} {'perplexity':>11} "
          f"{'vs fp32':>8} {'MB':>6}")
    print(f"{'merged (fp32)':20} {'':>9} {'':>9} {'':>13} {'':>13} {fp32:11.2f} {'':>8} {quality['merged']['size_mb']:6.0f}")

    def ratio(name: str, base: str) -> tuple[float, str]:
        values = [a / b for a, b in zip(speeds[name], speeds[base])]
        return statistics.median(values), f"{min(values):.2f}-{max(values):.2f}x"

    for model in models:
        q = quality[model.step]
        (shipped, spread), (threaded_ratio, _) = ratio(model.step, OLIVE), ratio(model.step, OLIVE_THREADS)
        print(f"{model.step:20} {statistics.median(speeds[model.step]):9.1f} {shipped:8.2f}x {spread:>13} "
              f"{threaded_ratio:12.2f}x {q['perplexity']:11.2f} {100 * (q['perplexity'] / fp32 - 1):+7.1f}% "
              f"{q['size_mb']:6.0f}")
    print(f"(tokens/s: median of {args.repeat} repeats of {args.runs} interleaved runs; reports in {args.cache_dir})")
    print("runtimes: " + "; ".join(f"{name} {text}" for name, text in runtimes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
