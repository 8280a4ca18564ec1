"""Native and Olive steps in one DAG on the real MiniLM and SMS spam (slow, CI): the recipe
spam-minilm-olive.yaml, reduced as the quickstart test reduces it (and sharing its cache, so the LoRA,
export and int8 steps are built once for both): export_onnx -> Olive OrtTransformersOptimization -> Olive
OnnxStaticQuantization calibrated on our load_data split -> evaluate; a re-run runs nothing."""

from __future__ import annotations

import json

import pytest

from tests.builders import ROOT, op_counts
from tests.e2e.test_quickstart import REDUCED, run_recipe

RECIPE = ROOT / "pipelines" / "recipes" / "spam-minilm-olive.yaml"
SETTINGS = [*REDUCED, "steps.olive_int8.samples=64"]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_olive_steps_on_minilm_chain_with_ours_and_rerun_cached(tmp_path, minilm_cache):
    out = tmp_path / "out"
    proc = run_recipe(RECIPE, minilm_cache, out, SETTINGS)
    assert proc.returncode == 0, proc.stderr[-5000:]
    doc = json.loads((out / "run.json").read_text())
    m = doc["metrics"]["report"]
    print(json.dumps({k: {x: v.get(x) for x in ("accuracy", "latency_p50_ms", "speedup", "size_mb")} for k, v in m.items()}, indent=1))
    assert m["merged"]["accuracy"] >= 0.9
    assert abs(m["olive_int8"]["accuracy"] - m["merged"]["accuracy"]) <= 0.03
    assert m["olive_int8"]["size_mb"] <= 0.35 * m["onnx"]["size_mb"]
    ops = op_counts(out / "model")
    assert ops["Attention"] == 6, ops  # Olive's optimizer fused attention, then QDQ around it
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    assert doc["steps"]["olive_int8"]["kind"] == "onnx_model"
    assert (out / "model" / "inference.py").is_file()
    again = run_recipe(RECIPE, minilm_cache, out, SETTINGS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {s["status"] for s in json.loads((out / "run.json").read_text())["steps"].values()} == {"cached"}
