"""Training steps: `lora`, `finetune` and `merge_adapter`."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ..base import Adapter, Dataset, HfModel, Ref, StepConfig, StrictModel
from ..registry import register_step


class TrainingSettings(StrictModel):
    """The settings people expect from transformers' `TrainingArguments`, shared by the training passes."""

    epochs: float = Field(3.0, gt=0, le=1000, description="Passes over the train split (ignored when `max_steps` is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(16, ge=1, le=4096, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Steps to accumulate before an update.")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps with a linear warm-up.")
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = Field("linear", description="The learning-rate schedule.")
    max_length: int = Field(128, ge=8, le=32768, description="Tokens per example; longer inputs are truncated.")
    seed: int = Field(42, description="Seed for initialisation, shuffling and dropout.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Training precision; fp16 needs a GPU, bf16 a CPU or GPU that supports it."
    )
    eval_strategy: Literal["epoch", "steps", "no"] = Field(
        "epoch", description="When to evaluate on the validation split."
    )
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps (with `eval_strategy: steps`).")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement (needs evaluation)."
    )
    metric_for_best_model: Literal["loss", "accuracy", "f1"] = Field(
        "loss", description="The validation metric that picks the best checkpoint (loss for causal LMs)."
    )
    logging_steps: int = Field(10, ge=1, description="Log the loss every N steps (does not change the result).")
    train_on_prompt: bool = Field(
        False, description="causal-lm: learn the prompt tokens too (default: the loss is on the response only)."
    )
    packing: bool = Field(
        False, description="causal-lm: pack whole train examples into rows of up to `max_length` tokens."
    )

    @model_validator(mode="after")
    def _check_training(self) -> "TrainingSettings":
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("`eval_strategy: steps` needs `eval_steps`")
        if self.early_stopping_patience is not None and self.eval_strategy == "no":
            raise ValueError("`early_stopping_patience` needs evaluation: set `eval_strategy` to epoch or steps")
        return self


_TRAIN_KEY_EXCLUDE = frozenset({"logging_steps"})


@register_step
class LoraConfig(TrainingSettings, StepConfig):
    """Fine-tune a LoRA adapter with PEFT and the transformers Trainer."""

    type: Literal["lora"] = Field(description="LoRA fine-tuning (PEFT).")
    model: Ref[HfModel] = Field(description="The base model step.")
    data: Ref[Dataset] = Field(description="The dataset step (train and, when evaluating, validation splits).")
    task: Literal["text-classification", "causal-lm"] | None = Field(
        None, description="What to train for; default: the base model step's task."
    )
    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        None, min_length=1, description="Module names to adapt; default: picked per architecture."
    )

    output_kind: ClassVar[str] = "adapter"
    key_exclude: ClassVar[frozenset[str]] = _TRAIN_KEY_EXCLUDE


@register_step
class QloraConfig(LoraConfig):
    """QLoRA: the base loaded in 4-bit (bitsandbytes NF4/FP4), `prepare_model_for_kbit_training`, LoRA on top."""

    type: Literal["qlora"] = Field(description="LoRA on a 4-bit quantized base (bitsandbytes).")  # type: ignore[assignment]
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="The 4-bit data type of the base's weights.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit per weight).")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="The dtype the 4-bit layers compute in (float16 needs a GPU)."
    )
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in the backward pass (less memory, ~30% more time)."
    )


@register_step
class FinetuneConfig(TrainingSettings, StepConfig):
    """Full fine-tuning, or partial: only the last `train_layers` blocks, the final norm and the head."""

    type: Literal["finetune"] = Field(description="Full or partial fine-tuning.")
    model: Ref[HfModel] = Field(description="The model step to fine-tune.")
    data: Ref[Dataset] = Field(description="The dataset step.")
    task: Literal["text-classification", "causal-lm"] | None = Field(
        None, description="What to train for; default: the model step's task."
    )
    train_layers: int | None = Field(
        None, ge=0, description="Train only the last N transformer blocks (plus final norm and head); all when unset."
    )
    learning_rate: float = Field(5e-5, gt=0, lt=1, description="Peak learning rate.")

    output_kind: ClassVar[str] = "hf_model"
    key_exclude: ClassVar[frozenset[str]] = _TRAIN_KEY_EXCLUDE


@register_step
class MergeAdapterConfig(StepConfig):
    """Merge a LoRA adapter into its base model (`merge_and_unload`) and save a plain model folder."""

    type: Literal["merge_adapter"] = Field(description="Merge a LoRA adapter into its base.")
    adapter: Ref[Adapter] = Field(description="The adapter step (a `lora` step).")
    model: Ref[HfModel] | None = Field(
        None, description="The base model step; default: the model the adapter step was trained on."
    )

    output_kind: ClassVar[str] = "hf_model"

    def with_defaults_from(self, steps: dict[str, StepConfig]) -> StepConfig:
        """Take the base model from the adapter step's own `model` reference when not given."""
        if self.model is not None:
            return self
        source = steps.get(self.adapter)
        base = getattr(source, "model", None)
        if base is None:
            return self
        return self.model_copy(update={"model": base})
