"""A fake `evaluate` for sweep and select tests: metrics from a table in its config, no ML library."""

from __future__ import annotations

import os
from typing import ClassVar, Literal

from pydantic import Field

from passes.base import Pass
from passes.registry import register_pass
from schemas import HfModel, Ref, StepConfig, register_step


@register_step
class FakeEvalConfig(StepConfig):
    """Report per-model metrics: from `table` when given, else from the model file's length."""

    type: Literal["fake_eval"] = Field(description="test evaluation")
    models: list[Ref[HfModel]] = Field(min_length=1, description="the models; the first is the baseline")
    metrics: list[str] = Field(default_factory=lambda: ["accuracy", "latency", "size"], description="what is measured")
    table: dict[str, dict[str, float]] = Field(default_factory=dict, description="model name -> metrics to report")

    output_kind: ClassVar[str] = "metrics"


@register_pass
class FakeEval(Pass[FakeEvalConfig]):
    """Writes metrics.json-like meta as evaluate does (deltas and ratios against the first model)."""

    config_class = FakeEvalConfig

    def run(self, inputs, ctx):
        counter = os.environ.get("FAKE_COUNTER")
        if counter:
            with open(counter, "a") as f:
                f.write(ctx.step + "\n")
        results = {}
        for art in inputs["models"]:
            n = len((art.path / "model.txt").read_text())
            results[art.step] = dict(self.config.table.get(art.step) or
                                     {"accuracy": 0.9, "latency_p50_ms": float(n), "size_mb": n / 10})
        base = results[inputs["models"][0].step]
        for m in results.values():
            if "accuracy" in m and "accuracy" in base:
                m["accuracy_delta_pt"] = (m["accuracy"] - base["accuracy"]) * 100
            if "latency_p50_ms" in m and "latency_p50_ms" in base:
                m["speedup"] = base["latency_p50_ms"] / m["latency_p50_ms"]
            if "size_mb" in m and "size_mb" in base:
                m["size_ratio"] = m["size_mb"] / base["size_mb"]
        return {"metrics": results, "baseline": inputs["models"][0].step, "summary": f"{len(results)} models"}
