"""Our onnxruntime-genai int4 export of the chat recipe's model vs Olive 0.13's, in one evaluate step.

    python benchmarks/genai_vs_olive.py [--cache-dir DIR] [--runs N]

Runs the chat recipe (cached after the first time), exports its merged model a second time with Olive
(`olive capture-onnx-graph --use_model_builder --precision int4`, Olive's ModelBuilder pass), then
evaluates merged (PyTorch fp32), our int4, the recipe's builder-defaults int4 and Olive's int4 on the
test split in one `evaluate` step (perplexity, interleaved decode speed, size) and prints the ratios.

Olive comes with the README's set-up (the `olive` extra: olive-ai 0.13). Olive runs with
OLIVE_DISABLE_TELEMETRY=1. The calibrated chain (Olive mixed precision + GPTQ -> our export) is the recipe
pipelines/recipes/chat-smollm2-gptq.yaml, which compares it with both exports in one evaluate step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RECIPE = ROOT / "pipelines" / "recipes" / "chat-smollm2-int4.yaml"


def artifact(cache: Path, run: dict, step: str):
    """The cached artifact of `step` in the run, named after it (a shared cache may have built it as another step)."""
    from runner.cache import Cache

    return dataclasses.replace(Cache(cache).lookup(run["steps"][step]["key"]), step=step)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "genai-vs-olive")
    parser.add_argument("--runs", type=int, default=7, help="timed generations per model")
    args = parser.parse_args()
    if shutil.which("olive") is None:
        print("olive is not installed: pip install -c constraints.txt -e '.[olive]' (the README's set-up has it)", file=sys.stderr)
        return 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OLIVE_DISABLE_TELEMETRY": "1"}
    cache, out = args.cache_dir / "cache", args.cache_dir / "out"
    subprocess.run([sys.executable, "-m", "runner.cli", "run", str(RECIPE), "--cache-dir", str(cache),
                    "--output", str(out), "--quiet"], check=True, cwd=ROOT, env=env)
    run = json.loads((out / "run.json").read_text())
    merged, ours, defaults = (artifact(cache, run, s) for s in ("merged", "int4", "int4_builder_defaults"))
    olive_dir = args.cache_dir / "olive"
    if not (olive_dir / "genai_config.json").is_file():
        shutil.rmtree(olive_dir, ignore_errors=True)
        subprocess.run(["olive", "capture-onnx-graph", "-m", str(merged.path), "--use_model_builder", "--precision",
                        "int4", "-o", str(olive_dir)], check=True, env=env, capture_output=True,
                       cwd=args.cache_dir)  # Olive writes its own .olive-cache in the working folder
    from passes.base import Artifact, SimpleContext
    from passes.evaluate.steps import Evaluate
    from schemas.steps import EvaluateConfig

    olive = Artifact(kind="onnx_model", path=olive_dir, meta={"task": "causal-lm", "format": "genai"}, digest="olive",
                     step="olive_int4")
    data = artifact(cache, run, "qa")
    models = [merged, ours, defaults, olive]
    cfg = EvaluateConfig(type="evaluate", models=[m.step for m in models], data="qa", split="test",
                         metrics=["perplexity", "tokens_per_second", "time_to_first_token", "size"],
                         max_new_tokens=64, generation_runs=args.runs)
    report = args.cache_dir / "report"
    shutil.rmtree(report, ignore_errors=True)
    report.mkdir(parents=True)
    result = Evaluate(cfg).run({"models": models, "data": data}, SimpleContext("compare", report, quiet=True))
    m = result["metrics"]
    print(f"{'model':24} {'perplexity':>10} {'tokens/s':>9} {'TTFT ms':>8} {'MB':>6}")
    for name, r in m.items():
        print(f"{name:24} {r['perplexity']:10.2f} {r['tokens_per_second']:9.1f} {r['time_to_first_token_ms']:8.0f} "
              f"{r['size_mb']:6.0f}")
    ratio = m["int4"]["tokens_per_second"] / m["olive_int4"]["tokens_per_second"]
    print(f"ours / Olive decode tokens/s: {ratio:.2f}x; perplexity {m['int4']['perplexity']:.2f} vs "
          f"{m['olive_int4']['perplexity']:.2f} (merged fp32 {m['merged']['perplexity']:.2f}); report in {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
