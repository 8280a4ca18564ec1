"""`model`: a source step for a pretrained model."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..base import ModelSource, StepConfig
from ..registry import register_step

Task = Literal["text-classification", "causal-lm", "feature-extraction", "token-classification"]


@register_step
class ModelConfig(StepConfig):
    """A pretrained model: a local Hugging Face folder, a hub id, `pkg://package/folder`, or a GGUF file."""

    type: Literal["model"] = Field(description="A source step for a model.")
    path: ModelSource = Field(
        description="A local folder (relative to the workflow file), a hub id (`org/name`), "
        "or `pkg://package/sub/folder` (a folder inside an installed Python package)."
    )
    gguf_file: str | None = Field(
        None,
        pattern=r"^[^/\\]+\.gguf$",
        description="A GGUF file inside `path` to convert (once, cached) into a safetensors model.",
    )
    task: Task | None = Field(
        None, description="What the model is for; inferred from its config's architecture when left out."
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="The dtype the weights are saved in."
    )
    trust_remote_code: bool = Field(False, description="Allow code from the model folder to run (off by default).")
    revision: str | None = Field(None, description="A hub revision (branch, tag or commit); hub ids only.")

    output_kind: ClassVar[str] = "hf_model"
