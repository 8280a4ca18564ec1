"""The sweep recipe (spam-quantization-compare) reduced, on the real MiniLM (slow, run by CI).

The same reduction as the quickstart's e2e test, so with the shared `minilm_cache` its prefix (data,
LoRA, merge, export) is a cache hit and only 4 quantizations, one evaluation of 5 models and the select
step run. It checks the sweep's shape, that the deployed model is the one select chose and meets
its constraint, and that `inference.py` runs on it: not which method wins (that is a timing on a shared
machine; the README gives a full run's figures).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.builders import ROOT
from tests.e2e.test_quickstart import REDUCED, run_recipe

RECIPE = ROOT / "pipelines" / "recipes" / "spam-quantization-compare.yaml"
#: The quickstart's reduction (so the prefix is shared), the sweep narrowed to per-channel int8 (4 variants
#: instead of 6) and the quality pass to 100 rows: well under a minute on a quiet 2-core machine.
SWEEP_REDUCED = REDUCED + ["steps.int8.matrix.per_channel=[true]", "steps.int8.calibration_samples=32",
                           "steps.report.max_samples=100"]
VARIANTS = {"int8[method=dynamic_int8,per_channel=true]", "int8[method=static_int8,per_channel=true]",
            "weights[method=int4]", "weights[method=fp16]"}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_sweep_recipe_selects_and_deploys_a_model_that_meets_its_constraint(tmp_path, minilm_cache):
    proc = run_recipe(RECIPE, minilm_cache, tmp_path / "out", SWEEP_REDUCED)
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = tmp_path / "out"
    doc = json.loads((out / "run.json").read_text())
    assert VARIANTS <= set(doc["steps"])
    results = doc["metrics"]["report"]
    assert set(results) == {"onnx"} | VARIANTS  # every variant in one evaluation
    chosen = doc["steps"]["best"]["meta"]["selected"]
    assert results[chosen]["accuracy_delta_pt"] >= -0.5 - 1e-9
    eligible = [n for n, m in results.items() if m["accuracy_delta_pt"] >= -0.5 - 1e-9]
    assert results[chosen]["latency_p50_ms"] == min(results[n]["latency_p50_ms"] for n in eligible)
    assert (out / "reports" / "best" / "pareto.png").exists() and (out / "model" / "model.onnx").exists()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    answer = subprocess.run([sys.executable, str(out / "model" / "inference.py"), "WINNER!! Claim your free prize now"],
                            capture_output=True, text=True, env=env, timeout=300)
    # it runs and classifies (which label a 40-step LoRA gives is not the point here)
    assert answer.returncode == 0 and answer.stdout.split("\t")[0] in ("ham", "spam"), answer.stderr
    again = run_recipe(RECIPE, minilm_cache, tmp_path / "out", SWEEP_REDUCED)
    assert again.returncode == 0 and " started " not in again.stderr  # a re-run runs nothing
