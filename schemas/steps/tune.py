"""`tune_session`: onnxruntime session options chosen by measuring them, as Olive's `tune-session-params` does."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from ..base import Dataset, OnnxModel, Ref, StepConfig
from ..registry import register_step


@register_step
class TuneSessionConfig(StepConfig):
    """Time an ONNX model under each combination of session options on real inputs and keep the fastest."""

    type: Literal["tune_session"] = Field(description="Choose onnxruntime session options by measuring them.")
    model: Ref[OnnxModel] = Field(description="The ONNX model step (an encoder or classifier graph).")
    data: Ref[Dataset] = Field(description="The dataset whose texts are timed (what the model will be given).")
    split: Literal["train", "validation", "test"] = Field("validation", description="The split the texts come from.")
    batch_size: int = Field(1, ge=1, le=1024, description="Texts per call, in length-sorted batches padded to their longest.")
    max_length: int = Field(64, ge=1, le=32768, description="Longest input in tokens (longer texts are truncated).")
    threads: list[int] | None = Field(
        None, min_length=1,
        description="Intra-op thread counts to try; default: 1, 2, 4, ... up to the cores, and the cores.")
    graph_levels: list[Literal["basic", "extended", "all"]] = Field(
        default_factory=lambda: ["extended", "all"], min_length=1,
        description="onnxruntime graph optimization levels to try (`all` adds layout transformations).")
    spinning: list[bool] = Field(
        default_factory=lambda: [True, False], min_length=1,
        description="Whether idle pool threads spin (fast hand-off) or sleep (kinder to a loaded machine): both tried.")
    execution_modes: list[Literal["sequential", "parallel"]] = Field(
        default_factory=lambda: ["sequential"], min_length=1,
        description="Operator scheduling; `parallel` runs independent branches at once (with 2 inter-op threads).")
    objective: Literal["latency_p50", "throughput"] = Field(
        "latency_p50", description="What the chosen options minimise (p50 latency) or maximise (samples per second).")
    repeats: int = Field(100, ge=5, le=100000, description="Timed calls per candidate (interleaved in shuffled blocks).")
    blocks: int = Field(5, ge=1, le=1000, description="Interleaved blocks (candidates take turns within each block).")
    warmup: int = Field(5, ge=0, le=10000, description="Untimed calls per candidate first.")

    output_kind: ClassVar[str] = "onnx_model"
    uses_target: ClassVar[bool] = True  # the providers and the thread budget are the target's
    uses_isa: ClassVar[bool] = True  # what is fastest depends on the CPU

    @field_validator("threads")
    @classmethod
    def _positive_threads(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(n < 1 or n > 256 for n in value):
            raise ValueError("thread counts are between 1 and 256")
        return sorted(set(value)) if value is not None else None
