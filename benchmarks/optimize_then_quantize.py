"""optimize_onnx then quantize vs quantize alone, and the npu QDQ models vs fp32, on the quickstart's export.

    python benchmarks/optimize_then_quantize.py [--cache-dir DIR] [--repeats 300]

Runs the quickstart recipe (LoRA-tuned MiniLM on SMS spam; its steps come from the shared cache when
the quickstart ran before) with these steps added after `onnx`:

    opt       optimize_onnx (bert fusions, SkipLayerNorm unfused, level basic)
    opt_int8  quantize of opt (no method: the cpu target picks dynamic_int8)
    int8      quantize of onnx (the same choice; it fuses attention itself)
    qdq16     quantize of onnx for an npu target (QNN: static QDQ, uint16 activations, every op)
    qdq8      quantize of onnx for an npu target with OpenVINO (static QDQ, uint8 activations, every op)

and one evaluate step that measures all of them on the test split and times them interleaved in one
process (batch 1, 64 tokens, 2 threads). It prints accuracy and p50 latency side by side, with the
ratios the issue asks for.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "pipelines" / "recipes" / "spam-minilm-int8.yaml"

EXTRA_STEPS = """
  opt: {{type: optimize_onnx, model: onnx}}
  opt_int8: {{type: quantize, model: opt}}
  int8: {{type: quantize, model: onnx}}
  qdq16: {{type: quantize, model: onnx, data: sms, target: {{device: npu, fallback: cpu}}}}
  qdq8:
    type: quantize
    model: onnx
    data: sms
    target: {{device: npu, providers: [OpenVINOExecutionProvider], fallback: cpu}}
  report:
    type: evaluate
    models: [onnx, int8, opt_int8, qdq16, qdq8]
    data: sms
    split: test
    metrics: [accuracy, f1, latency, size]
    batch_size: 1
    sequence_length: 64
    threads: 2
    repeats: {repeats}
    blocks: 20
"""


def workflow_text(repeats: int) -> str:
    """The quickstart recipe up to its export, with the compared steps after it (paths made absolute)."""
    text = RECIPE.read_text()
    text = text.replace("path: data/sms_spam.csv", f"path: {RECIPE.parent / 'data' / 'sms_spam.csv'}")
    head = text[: text.index("  int8:")]
    return head.replace("name: spam-minilm-int8", "name: optimize-then-quantize") + EXTRA_STEPS.format(repeats=repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", help="the artifact cache (default: the shared one, so the quickstart's steps are reused)")
    parser.add_argument("--repeats", type=int, default=300, help="timed runs per model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wf = Path(tmp) / "optimize-then-quantize.yaml"
        wf.write_text(workflow_text(args.repeats))
        cmd = [sys.executable, "-m", "runner.cli", "run", str(wf), "--output", str(Path(tmp) / "out"), "--quiet"]
        if args.cache_dir:
            cmd += ["--cache-dir", args.cache_dir]
        proc = subprocess.run(cmd, cwd=ROOT, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode:
            return proc.returncode
        doc = json.loads((Path(tmp) / "out" / "run.json").read_text())
    m = doc["metrics"]["report"]
    print(f"{'model':10} {'accuracy':>9} {'p50 ms':>8} {'vs fp32':>8} {'size MB':>8}  provider")
    for name, row in m.items():
        print(f"{name:10} {row['accuracy']:9.4f} {row['latency_p50_ms']:8.2f} {row.get('speedup', 1.0):7.2f}x "
              f"{row['size_mb']:8.1f}  {row['latency_provider']}")
    ratio = m["int8"]["latency_p50_ms"] / m["opt_int8"]["latency_p50_ms"]
    print(f"\noptimize_onnx + quantize vs quantize alone: {ratio:.3f}x the speed (p50), accuracy "
          f"{100 * (m['opt_int8']['accuracy'] - m['int8']['accuracy']):+.2f} pt")
    for name in ("qdq16", "qdq8"):
        print(f"{name} (npu static QDQ) accuracy vs fp32: {100 * (m[name]['accuracy'] - m['onnx']['accuracy']):+.2f} pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
