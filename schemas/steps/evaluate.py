"""`evaluate`: quality, speed and size of several models side by side."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..base import Dataset, HfModel, OnnxModel, Ref, StepConfig
from ..registry import register_step

Metric = Literal["accuracy", "f1", "precision", "recall", "confusion_matrix", "latency", "size"]


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
    sequence_length: int = Field(64, ge=1, le=32768, description="Tokens per input for the latency measurement.")
    warmup: int = Field(10, ge=0, le=10000, description="Untimed runs before timing each model.")
    repeats: int = Field(200, ge=5, le=1000000, description="Timed runs per model (spread over shuffled blocks).")
    blocks: int = Field(10, ge=1, le=1000, description="Timing blocks; models are interleaved in shuffled block order.")
    threads: int | None = Field(None, ge=1, le=256, description="Threads for PyTorch and ONNX Runtime; default: the target's, else all cores.")

    output_kind: ClassVar[str] = "metrics"
    uses_target: ClassVar[bool] = True
