"""`evaluate`: quality, speed and size of several models side by side."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..base import Dataset, HfModel, OnnxModel, Ref, StepConfig
from ..registry import register_step

#: Classifiers: quality on labels, latency at a batch size and sequence length, size on disk.
CLASSIFIER_METRICS = ("accuracy", "f1", "precision", "recall", "confusion_matrix", "latency")
#: Causal LMs: perplexity on the responses, sample answers, decode speed.
LM_METRICS = ("perplexity", "generate", "tokens_per_second", "time_to_first_token")
Metric = Literal["accuracy", "f1", "precision", "recall", "confusion_matrix", "latency", "size",
                 "perplexity", "generate", "tokens_per_second", "time_to_first_token"]

#: What a goal can be set on -> the metric the step must measure for it.
GOAL_METRICS = {
    "accuracy": "accuracy", "accuracy_delta_pt": "accuracy", "f1": "f1", "precision": "precision", "recall": "recall",
    "latency_p50_ms": "latency", "latency_p90_ms": "latency", "latency_p99_ms": "latency", "speedup": "latency",
    "throughput_sps": "latency", "size_mb": "size", "size_ratio": "size",
    "perplexity": "perplexity", "perplexity_ratio": "perplexity", "tokens_per_second": "tokens_per_second",
    "tokens_per_second_ratio": "tokens_per_second", "time_to_first_token_ms": "time_to_first_token",
}


class Goal(BaseModel):
    """A bound a measured metric must meet: `min`, `max` or both (inclusive)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    min: float | None = Field(None, description="The metric must be at least this.")
    max: float | None = Field(None, description="The metric must be at most this.")

    @model_validator(mode="after")
    def _check_bounds(self) -> "Goal":
        if self.min is None and self.max is None:
            raise ValueError("a goal needs `min`, `max` or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"`min` {self.min} is above `max` {self.max}")
        return self


@register_step
class EvaluateConfig(StepConfig):
    """Evaluate models (Hugging Face or ONNX; the first is the baseline) on a dataset split."""

    type: Literal["evaluate"] = Field(description="Evaluate and compare models.")
    models: list[Ref[HfModel, OnnxModel]] = Field(
        min_length=1, description="The model steps to evaluate; the first is the baseline."
    )
    data: Ref[Dataset] = Field(description="The dataset step.")
    split: Literal["train", "validation", "test"] = Field("test", description="The split to evaluate on.")
    metrics: list[Metric] = Field(
        default_factory=lambda: ["accuracy", "f1", "latency", "size"], min_length=1, description="What to measure."
    )
    max_samples: int | None = Field(None, ge=1, description="Evaluate on at most this many examples.")
    max_length: int = Field(128, ge=8, le=32768, description="Truncate inputs to this many tokens for the quality metrics.")
    batch_size: int = Field(1, ge=1, le=1024, description="Batch size for the latency measurement.")
    sequence_length: int = Field(
        64, ge=1, le=32768,
        description="Latency inputs: with `padding: longest` the longest input (longer texts are truncated to it), "
        "with `max_length` the length every input is padded to.")
    padding: Literal["longest", "max_length"] = Field(
        "longest",
        description="Latency inputs. `longest`: what a deployment runs (the exported inference.py does the same): "
        "the split's own texts, batches of similar length padded only to their longest (batch 1: no padding), "
        "a different batch each call. `max_length`: one batch padded to `sequence_length` every call (fixed-shape "
        "benchmarks; padding costs time the texts do not need).")
    warmup: int = Field(10, ge=0, le=10000, description="Untimed runs before timing each model.")
    repeats: int = Field(200, ge=5, le=1000000, description="Timed runs per model (spread over shuffled blocks).")
    blocks: int = Field(10, ge=1, le=1000, description="Timing blocks; models are interleaved in shuffled block order.")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Causal LMs: tokens each timed or sample generation decodes.")
    generate_samples: int = Field(3, ge=1, le=100, description="Causal LMs: how many sample answers the report shows.")
    prompts: list[str] | None = Field(
        None, min_length=1, description="Causal LMs: prompts for the sample answers; default: the split's first prompts."
    )
    generation_runs: int = Field(
        5, ge=1, le=1000, description="Causal LMs: timed generations per model for tokens/s (after `warmup` ones)."
    )
    threads: int | None = Field(None, ge=1, le=256, description="Threads for PyTorch and ONNX Runtime; default: the target's, else all cores. "
                                  "onnxruntime-genai folders run with their own genai_config.json count (at most this "
                                  "machine's CPUs, as their inference.py does) unless this is set.")
    goals: dict[str, dict[str, Goal]] = Field(
        default_factory=dict,
        description="Per model step, bounds on its metrics, e.g. {int8: {accuracy: {min: 0.98}, speedup: {min: 4}}}; "
                    "the report and run.json say which were met.",
    )
    on_goal_miss: Literal["warn", "fail"] = Field(
        "warn", description="A missed goal: `warn` (logged and reported) or `fail` (the run exits 1; the results are kept)."
    )

    output_kind: ClassVar[str] = "metrics"

    @model_validator(mode="after")
    def _check_metrics(self) -> "EvaluateConfig":
        lm = [m for m in self.metrics if m in LM_METRICS]
        clf = [m for m in self.metrics if m in CLASSIFIER_METRICS]
        if lm and clf:
            raise ValueError(f"{', '.join(clf)} measure classifiers and {', '.join(lm)} causal LMs: "
                             "one evaluate step measures one kind of model")
        return self

    #: What `evaluate` times: while it does, nothing else of the run may use the cores.
    TIMED_METRICS: ClassVar[frozenset[str]] = frozenset({"latency", "tokens_per_second", "time_to_first_token"})

    def runs_alone(self) -> bool:
        """Timing steps run alone: another step on the same cores would slow the timed runs unevenly."""
        return bool(self.TIMED_METRICS & set(self.metrics))

    @field_validator("goals")
    @classmethod
    def _check_goals(cls, goals: dict[str, dict[str, Goal]], info: ValidationInfo) -> dict[str, dict[str, Goal]]:
        models, metrics = info.data.get("models"), info.data.get("metrics")
        if models is None or metrics is None:  # already reported
            return goals
        for model, bounds in goals.items():
            if model not in models:
                raise ValueError(f"goals for {model!r}, which is not in `models` ({', '.join(models)})")
            for metric in bounds:
                needs = GOAL_METRICS.get(metric)
                if needs is None:
                    raise ValueError(f"{model}: no metric {metric!r}; goals can bound {', '.join(GOAL_METRICS)}")
                if needs not in metrics:
                    raise ValueError(f"{model}.{metric} needs `{needs}` in `metrics`")
        return goals
    uses_target: ClassVar[bool] = True
