"""`prune`: structured pruning of a transformer encoder's attention heads and feed-forward neurons."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..base import Dataset, HfModel, Ref, StepConfig
from ..registry import register_step

_KEEP = ("a count (an integer of at least 1) or a fraction of the model's (0 < f < 1); default: all, "
         "nothing pruned there")


@register_step
class PruneConfig(StepConfig):
    """Remove the least important attention heads and feed-forward neurons of every layer of an encoder classifier.

    Each head's and neuron's importance is the first-order Taylor estimate of how much the loss changes without it
    (|activation x gradient| summed per example, Michel et al. 2019 and Molchanov et al. 2019), over labelled rows
    of the train split. The same number is kept in every layer, so the result is a plain Hugging Face folder whose
    config rebuilds it (`pruned_heads`, `intermediate_size`) and whose ONNX export fuses as before, only smaller:
    fewer rows in every matrix product.
    """

    type: Literal["prune"] = Field(description="Structured pruning of attention heads and feed-forward neurons.")
    model: Ref[HfModel] = Field(description="A text-classification encoder of the BERT family (bert, roberta, "
                                "xlm-roberta, electra, ...), e.g. a `merge_adapter` step's output.")
    data: Ref[Dataset] = Field(description="Labelled data: importance comes from the loss on its train split, the "
                               "accuracy check from its validation split.")
    heads: int | float | None = Field(None, description="Attention heads kept in every layer: " + _KEEP + ".")
    ffn: int | float | None = Field(None, description="Feed-forward (intermediate) neurons kept in every layer: "
                                    + _KEEP + ".")
    samples: int = Field(512, ge=8, le=1_000_000, description="Train rows scored (a seeded sample; all when fewer).")
    batch_size: int = Field(16, ge=1, le=4096, description="Rows per scoring batch.")
    max_length: int = Field(128, ge=8, le=32768, description="Tokens per row; longer rows are truncated.")
    max_accuracy_drop_pt: float | None = Field(
        1.0, ge=0, le=100, description="Fail the step when pruning costs more validation accuracy than this, in "
        "points (the check needs a validation split); null: measure and report only. A step that fails here "
        "caches nothing: keep more heads or neurons, or allow the drop and recover it with a `finetune` (or "
        "`lora` + `merge_adapter`) step after this one.")
    seed: int = Field(42, description="Seed of the scored rows' sample.")

    output_kind: ClassVar[str] = "hf_model"

    @field_validator("heads", "ffn", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        if isinstance(value, bool):  # YAML's `yes`/`true`: pydantic would read it as 1
            raise ValueError("give a count or a fraction, not a boolean")
        return value

    @field_validator("heads", "ffn")
    @classmethod
    def _count_or_fraction(cls, value: int | float | None) -> int | float | None:
        if value is None:
            return value
        if isinstance(value, float) and not 0 < value < 1:
            raise ValueError(f"{value} is neither a count (an integer) nor a fraction between 0 and 1 (exclusive): "
                             "write e.g. 6 to keep six, or 0.5 to keep half")
        if isinstance(value, int) and value < 1:
            raise ValueError("at least one must be kept in every layer")
        return value

    @model_validator(mode="after")
    def _something_to_prune(self) -> "PruneConfig":
        if self.heads is None and self.ffn is None:
            raise ValueError("nothing to prune: set `heads` (attention heads kept per layer), `ffn` (feed-forward "
                             "neurons kept per layer) or both, as a count or a fraction (e.g. `ffn: 0.25`)")
        return self
