"""The README's quickstart end to end on the real MiniLM and the real SMS spam data (slow, run by CI).

A reduced run of the recipe (`--set`: 1500 rows, 80 LoRA steps, 30 timed runs per model) that still
goes through every step (prune included): it proves the path, the deployable folder, the report, the goals and the cache,
and checks the int8 model by its structure (fused attention, int8 MatMuls, no SkipLayerNormalization),
not by a latency ratio: a loaded or throttled CI machine must not fail a test. The full recipe's figures
(accuracy 0.990, 4.4x PyTorch) are in the README and come from `pipeline run` on the whole recipe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
import pytest

from tests.builders import ROOT, op_counts

RECIPE = ROOT / "pipelines" / "recipes" / "spam-minilm-int8.yaml"
#: Fewer rows and steps than the recipe: minutes on a slow 2-core machine instead of a quarter hour.
REDUCED = ["steps.sms.max_samples=1500", "steps.tune.max_steps=80", 'steps.tune.eval_strategy="no"',
           "steps.report.repeats=30", "steps.report.blocks=3", "steps.report.warmup=3"]
MINILM_LAYERS = 6


def run_recipe(recipe, cache, out, settings=REDUCED):
    """`pipeline run RECIPE --set ...` in a subprocess, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OLIVE_DISABLE_TELEMETRY": "1"}
    cmd = [sys.executable, "-m", "runner.cli", "run", str(recipe), "--cache-dir", str(cache), "--output", str(out)]
    for item in settings:
        cmd += ["--set", item]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3000)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, minilm_cache):
    folder = tmp_path_factory.mktemp("quickstart")
    proc = run_recipe(RECIPE, minilm_cache, folder / "out")
    assert proc.returncode == 0, proc.stderr[-5000:]
    return folder, proc, run_recipe(RECIPE, minilm_cache, folder / "out")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_quickstart_runs_every_step_and_reports(quickstart):
    folder, _, _ = quickstart
    doc = json.loads((folder / "out" / "run.json").read_text())
    assert doc["status"] == "ok"
    assert set(doc["steps"]) == {"base", "sms", "tune", "merged", "pruned", "onnx", "int8", "report"}
    pruned = doc["steps"]["pruned"]["meta"]
    assert (pruned["heads_kept"], pruned["heads_total"], pruned["ffn_kept"], pruned["ffn_total"]) == (6, 12, 384, 1536)
    assert pruned["accuracy_drop_pt"] <= 1.0 and pruned["num_parameters"] < pruned["num_parameters_before"]
    m = doc["metrics"]["report"]
    merged, onnx, int8 = m["merged"], m["onnx"], m["int8"]
    print(json.dumps({k: {x: v.get(x) for x in ("accuracy", "f1", "latency_p50_ms", "speedup", "size_mb")}
                      for k, v in m.items()}, indent=1))
    # A real classifier after 40 steps, and the exported and quantized models agree with it.
    assert merged["accuracy"] >= 0.9, merged
    assert abs(onnx["accuracy"] - merged["accuracy"]) <= 0.005
    assert abs(int8["accuracy"] - merged["accuracy"]) <= 0.02
    assert int8["size_mb"] <= 0.30 * onnx["size_mb"]
    # Latency is measured and recorded (its ratio is a goal in the report, not a test assertion).
    for row in (merged, onnx, int8):
        assert row["latency_p50_ms"] > 0 and row["speedup"] > 0
    assert int8["parallel_speedup"] > 0 and int8["settle_wait_s"] >= 0
    goals = {r["metric"]: r for r in doc["steps"]["report"]["meta"]["goals"]}
    assert set(goals) == {"accuracy", "accuracy_delta_pt", "size_ratio", "speedup"}
    assert goals["size_ratio"]["met"] and goals["speedup"]["value"] == pytest.approx(int8["speedup"])
    report = (folder / "out" / "report.md").read_text()
    assert "int8" in report and "speedup" in report.lower() and "### Goals" in report


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_quickstart_int8_model_has_the_fast_structure(quickstart):
    """What makes int8 fast, checked by structure: fused attention, int8 weights, SkipLayerNorm unfused, pruned shapes."""
    folder, _, _ = quickstart
    int8 = op_counts(folder / "out" / "model")
    assert int8["QAttention"] + int8["Attention"] == MINILM_LAYERS, int8
    assert int8["QAttention"] == MINILM_LAYERS  # attention's projections in int8 too
    # q/k/v are inside (Q)Attention; per layer: attention output, FFN in and out in int8
    assert int8["DynamicQuantizeMatMul"] + int8["MatMulInteger"] >= 3 * MINILM_LAYERS, int8
    assert int8["SkipLayerNormalization"] == 0  # slow on this CPU: kept unfused (PERFORMANCE-NOTES)
    assert int8["MatMul"] <= 1, int8  # at most the classifier head stays fp32
    # The pruned shapes (6 of 12 heads, 384 of 1536 feed-forward neurons): every matrix product is smaller.
    graph = onnx.load(str(folder / "out" / "model" / "model.onnx")).graph
    assert {a.i for n in graph.node if n.op_type == "QAttention" for a in n.attribute if a.name == "num_heads"} == {6}
    weights = {i.name: tuple(i.dims) for i in graph.initializer}
    ffn = [weights[n.input[1]] for n in graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")
           and n.input[1] in weights]
    assert ffn and max(max(shape) for shape in ffn) == 384, ffn


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_quickstart_deployable_folder_and_inference_script(quickstart):
    folder, _, _ = quickstart
    model = folder / "out" / "model"
    for name in ("model.onnx", "tokenizer.json", "config.json", "inference.py"):
        assert (model / name).exists(), name
    # runpy keeps us in one interpreter so that we can see what the script imported
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['inference.py', '--json', 'WINNER!! You have won a free prize, txt CLAIM to 81010 now', "
        "'are we still on for lunch tomorrow?']\n"
        "try:\n"
        f"    runpy.run_path({str(model / 'inference.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, cwd=model)
    assert proc.returncode == 0, proc.stderr
    assert "NO-TORCH" in proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    labels = [r["label"] for r in results]
    assert labels == ["spam", "ham"], results


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_quickstart_rerun_is_fully_cached(quickstart):
    folder, _, again = quickstart
    assert again.returncode == 0, again.stderr[-3000:]
    doc = json.loads((folder / "out" / "run.json").read_text())
    assert {s["status"] for s in doc["steps"].values()} == {"cached"}
