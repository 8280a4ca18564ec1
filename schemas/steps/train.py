"""Training steps: `lora`, `finetune` and `merge_adapter`."""

from __future__ import annotations

from typing import ClassVar, Literal

from typing import Any

from pydantic import AliasChoices, Field, model_validator
from pydantic_core import PydanticCustomError

from ..base import Adapter, Dataset, HfModel, Ref, StepConfig, StrictModel
from ..registry import register_step


def _hf_name(ours: str, theirs: str) -> AliasChoices:
    """Accept `theirs` (the Hugging Face / PEFT name) for our field `ours`; the JSON Schema keeps ours."""
    return AliasChoices(ours, theirs)


#: The optimizers of transformers' `optim` that run without extra packages (the 8-bit ones need bitsandbytes).
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch", "adafactor", "sgd", "adagrad", "rmsprop",
              "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_32bit", "lion_8bit")


class TrainingSettings(StrictModel):
    """The settings people expect from transformers' `TrainingArguments`, shared by the training passes.

    Fields with a Hugging Face / PEFT name of their own accept it too (`num_train_epochs` for `epochs`);
    giving both names is an error. `HF_NAMES` lists them.
    """

    #: Hugging Face / PEFT field names accepted for ours (the same meaning): theirs -> ours.
    HF_NAMES: ClassVar[dict[str, str]] = {
        "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size", "lr_scheduler_type": "lr_scheduler",
    }

    epochs: float = Field(3.0, gt=0, le=1000, validation_alias=_hf_name("epochs", "num_train_epochs"),
                          description="Passes over the train split (ignored when `max_steps` is set); "
                          "`num_train_epochs` is accepted too.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(16, ge=1, le=4096, validation_alias=_hf_name("batch_size", "per_device_train_batch_size"),
                            description="Examples per device per step; `per_device_train_batch_size` is accepted too.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Steps to accumulate before an update.")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps with a linear warm-up.")
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = Field("linear", validation_alias=_hf_name("lr_scheduler", "lr_scheduler_type"),
              description="The learning-rate schedule; `lr_scheduler_type` is accepted too.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0: no clipping; transformers' default 1.0).")
    optim: Literal[OPTIMIZERS] = Field(  # type: ignore[valid-type]
        "adamw_torch_fused", description="The optimizer (transformers' `optim`; default: its own, fused AdamW). "
        "The 8-bit and paged ones need bitsandbytes.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, ~30% more time)."
    )
    save_steps: int | None = Field(
        None, ge=1, description="Save a resumable checkpoint every N optimizer steps (in the cache's `checkpoints/` folder; "
        "removed once the step is cached). Default: every 50 steps, and at every evaluation when the step evaluates "
        "(then it must be a multiple of `eval_steps`; with `eval_strategy: epoch` and a validation split, checkpoints "
        "follow the epochs). "
        "Does not change the result.")
    save_total_limit: int = Field(
        2, ge=1, le=100, description="Checkpoints kept on disk (the newest; the best evaluated one is kept as well). "
        "Does not change the result.")
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
    train_on: Literal["all_assistant", "last_turn", "all"] = Field(
        "all_assistant", description="causal-lm chat data: learn every assistant turn (default), only the last one, "
        "or every token (`all`, as `train_on_prompt: true`). Instruction pairs learn their response either way."
    )

    @model_validator(mode="before")
    @classmethod
    def _one_name_per_field(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for theirs, ours in cls.HF_NAMES.items():
                if theirs in data and ours in data:
                    raise PydanticCustomError(
                        "both_names", "`{theirs}` is the Hugging Face name of `{ours}`: give one of them, not both",
                        {"theirs": theirs, "ours": ours, "hint": f"keep `{ours}: {data[ours]}` or `{theirs}: {data[theirs]}`"},
                    )
        return data

    @model_validator(mode="after")
    def _check_training(self) -> "TrainingSettings":
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("`eval_strategy: steps` needs `eval_steps`")
        if self.early_stopping_patience is not None and self.eval_strategy == "no":
            raise ValueError("`early_stopping_patience` needs evaluation: set `eval_strategy` to epoch or steps")
        if self.save_steps is not None and self.eval_strategy == "steps" and self.save_steps % (self.eval_steps or 1):
            raise ValueError(f"`save_steps` ({self.save_steps}) must be a multiple of `eval_steps` ({self.eval_steps}): "
                             "the best evaluation is reloaded from its checkpoint")
        if self.train_on_prompt and self.train_on != "all" and "train_on" in self.model_fields_set:
            raise ValueError("`train_on_prompt: true` learns every token, as `train_on: all`: give one of them")
        return self


#: Fields that do not change what training produces (logging, checkpointing).
_TRAIN_KEY_EXCLUDE = frozenset({"logging_steps", "save_steps", "save_total_limit"})


@register_step
class LoraConfig(TrainingSettings, StepConfig):
    """Fine-tune a LoRA adapter with PEFT and the transformers Trainer."""

    type: Literal["lora"] = Field(description="LoRA fine-tuning (PEFT).")
    model: Ref[HfModel] = Field(description="The base model step.")
    data: Ref[Dataset] = Field(description="The dataset step (train and, when evaluating, validation splits).")
    task: Literal["text-classification", "causal-lm"] | None = Field(
        None, description="What to train for; default: the base model step's task."
    )
    HF_NAMES: ClassVar[dict[str, str]] = TrainingSettings.HF_NAMES | {"lora_alpha": "alpha", "lora_dropout": "dropout"}

    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(16, gt=0, validation_alias=_hf_name("alpha", "lora_alpha"),
                         description="LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with `use_rslora`); "
                         "`lora_alpha` is accepted too.")
    dropout: float = Field(0.05, ge=0, lt=1, validation_alias=_hf_name("dropout", "lora_dropout"),
                           description="Dropout on the LoRA input; `lora_dropout` is accepted too.")
    target_modules: list[str] | None = Field(
        None, min_length=1, description="Module names to adapt; default: picked per architecture."
    )
    use_dora: bool = Field(False, description="DoRA: learn each weight's magnitude apart from its LoRA direction (PEFT `use_dora`).")
    use_rslora: bool = Field(False, description="Rank-stabilized LoRA: scale by alpha / sqrt(r) (PEFT `use_rslora`).")
    modules_to_save: list[str] | None = Field(
        None, min_length=1, description="Modules trained in full and saved with the adapter (e.g. `lm_head`, `embed_tokens`); "
        "a new classification head is always added.")
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="Which biases train (PEFT `bias`): none, all, or those of the adapted layers.")

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
        True, description="Recompute activations in the backward pass (less memory, ~30% more time; on by default for QLoRA)."
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


@register_step
class TuneScalesConfig(TrainingSettings, StepConfig):
    """Quantization-aware tuning of a quantized checkpoint's block scales (EfficientQAT's end-to-end step).

    The integer codes stay as the quantizer chose them (GPTQ, RTN); only each block's scale (and, with
    `train_norms`, the float norm weights) trains, so the result keeps the checkpoint's exact format, size and
    speed and only its values move. With a `teacher` the loss is the KL divergence from the teacher's
    next-token distribution on the response tokens (distillation: the quantized model learns to match the
    model it was quantized from); without one, the usual cross-entropy on the responses.
    """

    type: Literal["tune_scales"] = Field(description="Train the block scales of an Olive-quantized checkpoint.")
    model: Ref[HfModel] = Field(description="An Olive-quantized checkpoint: the output of an `olive` step running "
                                "`Gptq` or `Rtn` (`quant_method: olive`).")
    data: Ref[Dataset] = Field(description="Instruction or chat data (train and, when evaluating, validation splits).")
    teacher: Ref[HfModel] | None = Field(
        None, description="The float model to distil from (usually the one that was quantized, e.g. the merged "
        "model); default: none, train on the responses' cross-entropy.")
    train_norms: bool = Field(
        True, description="Train the float norm weights too (they stay float in the deployed model).")
    epochs: float = Field(1.0, gt=0, le=1000, validation_alias=_hf_name("epochs", "num_train_epochs"),
                          description="Passes over the train split (ignored when `max_steps` is set).")
    learning_rate: float = Field(
        1e-3, gt=0, lt=1, description="Peak learning rate (each scale trains as s * (1 + d), so this is a relative "
        "change; the norm weights are near 1 and take it as it is).")
    batch_size: int = Field(8, ge=1, le=4096, validation_alias=_hf_name("batch_size", "per_device_train_batch_size"),
                            description="Examples per step.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps with a linear warm-up.")

    output_kind: ClassVar[str] = "hf_model"
    key_exclude: ClassVar[frozenset[str]] = _TRAIN_KEY_EXCLUDE
