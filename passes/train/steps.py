"""The training passes: `lora` (PEFT LoRA adapter), `finetune` (full or last-N-blocks) and `merge_adapter`.

Both trainers run a transformers `Trainer` (see `passes.train.trainer.train_with_trainer`) whose
checkpoints go to the step's checkpoint folder (a killed run resumes from them, see `passes.train.resume`),
never to the artifact, and write `training_log.json` (the Trainer's log history) and `loss.png` next to
the result.

Tasks: `text-classification` (AutoModelForSequenceClassification with the dataset's label names; an
encoder without a head gets a new one) and `causal-lm` (AutoModelForCausalLM on instruction data,
loss on the response tokens only, or on chat data, loss on the assistant turns by `train_on`). The default task is the base model's; an encoder (feature
extraction) with labelled data becomes a classifier.

When the run evaluates (a validation split and `eval_strategy` other than `no`), the result is the
best evaluated checkpoint by `metric_for_best_model`; without a validation split training goes on
without evaluation (a log line says so) unless early stopping was asked for (an error).

Measured for the quickstart (MiniLM-L6 + SMS spam from `load_data`: 794 balanced train rows, 452
validation, 904 test; 2 CPU cores): LoRA r=8, alpha 16 on query/value, learning rate 2e-3, 3 epochs,
batch 16, max_length 64, evaluation each epoch, best by validation loss: test accuracy 0.987-0.990
over three seeds (the last epoch alone: 0.979-0.990): the quickstart recipe's goals check it on every full run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from schemas.steps import FinetuneConfig, LoraConfig, MergeAdapterConfig, QloraConfig

from passes.hf.chat import chat_settings, check_chat_template
from passes.hf.folders import human_count
from passes.hf.loading import load_dataset_dict, load_model, load_tokenizer, quiet_transformers
from passes.train.layers import default_target_modules, freeze_all_but_last, new_module_paths
from passes.train.data import check_classifiable, prepare_data, resolve_task
from passes.train.trainer import count_parameters, summary_metrics, train_with_trainer
from passes.base import Artifact, MemoryUse, Pass, PassError, StepContext
from passes.registry import register_pass

#: Packages whose versions change what training produces (they enter the cache key).
_TRAIN_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers")

#: Texts the merge check runs through both models (any text works: it compares two equal functions).
CHECK_TEXTS = (
    "WINNER!! You have been selected to receive a prize. Call now to claim.",
    "Are we still meeting for lunch tomorrow?",
    "ok",
    "The quick brown fox jumps over the lazy dog, and then it runs back home before the rain starts.",
)
#: How far merged and adapter logits may differ, per unit of the largest logit (float32 rounding is ~1e-6).
MERGE_TOLERANCE = 1e-4


def _load_for_training(cfg: Any, inputs: dict[str, Any], ctx: StepContext,
                       load_kwargs: dict[str, Any] | None = None) -> "Loaded":
    """Resolve the task, tokenize the data and load the model (with `load_kwargs`, e.g. a 4-bit config)."""
    from transformers import set_seed

    base: Artifact = inputs["model"]
    data: Artifact = inputs["data"]
    folder = Path(base.path)
    task = resolve_task(cfg.task, base, data, ctx)
    labels = list(data.meta["labels"]) if task == "text-classification" else None
    if task == "text-classification":
        check_classifiable(folder, base.step)
        old_labels = base.meta.get("labels")
        if old_labels and list(old_labels) != labels:
            ctx.log(f"the base's labels {', '.join(old_labels)} become the dataset's {', '.join(labels)} "
                    "(a head of another size is replaced, one of the same size is trained on)")
    tokenizer = load_tokenizer(folder, causal=task == "causal-lm")
    chat = chat_settings(data.meta)
    if task == "causal-lm":
        check_chat_template(tokenizer, chat, f"the base {base.step!r}")
    train, validation, truncation = prepare_data(
        load_dataset_dict(data), tokenizer, task, cfg.max_length, ctx, chat=chat,
        train_on_prompt=cfg.train_on_prompt, packing=cfg.packing, train_on=cfg.train_on,
    )
    set_seed(cfg.seed)  # before loading: a new head is initialized from the seed
    model, new_keys = load_model(folder, task, labels, **(load_kwargs or {}))
    if task == "causal-lm" and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if new_keys:
        ctx.log(f"new weights (trained and saved): {', '.join(new_module_paths(new_keys))}"
                + (f" for labels {', '.join(labels)}" if labels else ""))
    return Loaded(task, labels, tokenizer, train, validation, model, new_keys, truncation, chat)


class Loaded(NamedTuple):
    """What `_load_for_training` prepared."""

    task: str
    labels: list[str] | None
    tokenizer: Any
    train: Any
    validation: Any
    model: Any
    new_keys: list[str]
    truncation: dict[str, Any]
    chat: dict[str, Any]


def _stable_base_name(config_file: Path, name: str) -> None:
    """Record a stable base name instead of the cache path the base was loaded from.

    A path would make the artifact's bytes, and so every downstream cache key, depend on where the
    cache lives. Rewritten after saving because PEFT reads the base's config from that path while saving.
    """
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = name
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@register_pass
class Lora(Pass[LoraConfig]):
    """Train a LoRA adapter with PEFT and the transformers Trainer; save the adapter, tokenizer and log.

    Classification uses PEFT's SEQ_CLS task, so the new head (and any other newly initialized module)
    is trained in full and saved with the adapter through `modules_to_save`.
    """

    config_class = LoraConfig
    version = 1
    packages = _TRAIN_PACKAGES
    #: Measured (benchmarks/jobs_sweep.py, the quantization recipe's MiniLM: 92 MB base, batch 16 x 64 tokens):
    #: 1261 MB peak. torch + transformers + peft take about 500 MB (merge_adapter's 712 MB on the same base
    #: bounds it); the rest, 8.3x the base, is its fp32 weights, the activations and the adapter's optimizer.
    memory = MemoryUse(factor=8.5, base_mb=500)
    memory_hint = ("use `type: qlora` (the base's linear layers in 4 bits), or a smaller `batch_size` or "
                   "`max_length`")

    def run(self, inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Train and save the adapter into ctx.out_dir; return its meta."""
        from peft import LoraConfig as PeftLoraConfig
        from peft import TaskType, get_peft_model

        cfg = self.config
        base: Artifact = inputs["model"]
        loaded = _load_for_training(cfg, inputs, ctx, self._load_kwargs(ctx))
        task, labels, tokenizer, model = loaded.task, loaded.labels, loaded.tokenizer, loaded.model
        extra = self._prepare(model, ctx)
        targets = cfg.target_modules or default_target_modules(model)
        new_modules = new_module_paths(loaded.new_keys)
        peft_config = PeftLoraConfig(
            task_type=TaskType.SEQ_CLS if task == "text-classification" else TaskType.CAUSAL_LM,
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
            use_dora=cfg.use_dora, use_rslora=cfg.use_rslora, bias=cfg.bias,
            # New weights train in full (a random head cannot be low-rank-adapted) and are saved with the adapter.
            modules_to_save=list(dict.fromkeys(new_modules + (cfg.modules_to_save or []))) or None,
            exclude_modules=new_modules or None,
        )
        try:
            model = get_peft_model(model, peft_config)
        except ValueError as exc:  # e.g. target modules not found in the model
            raise PassError(f"cannot apply LoRA: {exc}. Check `target_modules`") from exc
        trainable, total = count_parameters(model)
        ctx.log(f"LoRA r={cfg.r} on {targets if isinstance(targets, str) else ', '.join(targets)}: "
                f"{human_count(trainable)} of {human_count(total)} parameters train; {len(loaded.train)} train rows")
        result = train_with_trainer(model, tokenizer, task, loaded.train, loaded.validation, cfg, labels, ctx)

        model.save_pretrained(str(ctx.out_dir))
        _stable_base_name(ctx.out_dir / "adapter_config.json", base.meta.get("architecture") or base.step)
        # PEFT's empty model-card template, which also records the cache path of the base.
        (ctx.out_dir / "README.md").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(ctx.out_dir))
        tm, em = result["train_metrics"], result["eval_metrics"]
        summary = (f"{self.label}, {task}, {tm['steps']} steps in {tm['runtime_s']:.1f}s, "
                   f"train loss {tm['loss']:.4f}, {summary_metrics(em)}")
        return {
            "task": task,
            "labels": labels,
            "model_type": model.config.model_type,
            "base_architecture": base.meta.get("architecture"),
            "target_modules": targets,
            "modules_to_save": list(dict.fromkeys(new_modules + (cfg.modules_to_save or []))),
            "lora_options": {"use_dora": cfg.use_dora, "use_rslora": cfg.use_rslora, "bias": cfg.bias},
            "trainable_parameters": trainable,
            "train_metrics": tm,
            "eval_metrics": em,
            "truncation": loaded.truncation or None,
            "chat": loaded.chat if task == "causal-lm" else None,
            "metrics": {f"val_{k}": v for k, v in em.items()} | {"train_loss": tm["loss"], "train_s": tm["runtime_s"]}
            | extra.get("metrics", {}),
            "summary": summary + extra.get("summary", ""),
        } | {k: v for k, v in extra.items() if k not in ("metrics", "summary")}

    @property
    def label(self) -> str:
        """How the summary names the method."""
        return f"LoRA r={self.config.r}"

    def _load_kwargs(self, ctx: StepContext) -> dict[str, Any]:
        """Extra `from_pretrained` arguments for the base (QLoRA: the 4-bit quantization config)."""
        return {}

    def _prepare(self, model: Any, ctx: StepContext) -> dict[str, Any]:
        """Adjust the loaded base before LoRA is applied; return meta to merge into the result."""
        return {}


@register_pass
class Qlora(Lora):
    """QLoRA: the base's linear layers loaded in 4-bit with bitsandbytes, LoRA trained on top.

    `prepare_model_for_kbit_training` casts the norms to float32 and turns on gradient checkpointing;
    bitsandbytes' CPU backend runs the 4-bit layers here (fp32 or bf16 compute). The adapter is saved
    like a LoRA adapter, marked `quantized_base`, so `merge_adapter` merges it into the de-quantized base.
    """

    config_class = QloraConfig  # type: ignore[assignment]
    version = 1
    packages = _TRAIN_PACKAGES + ("bitsandbytes",)
    #: Not measured: lora's (above) with the base's fp32 weights in 4 bits, plus bitsandbytes (about 50 MB).
    memory = MemoryUse(factor=6.0, base_mb=550)
    memory_hint = "a smaller `batch_size` or `max_length`"

    @property
    def label(self) -> str:
        return f"QLoRA {self.config.quant_type} r={self.config.r}"

    def _load_kwargs(self, ctx: StepContext) -> dict[str, Any]:
        return {"quantization_config": bnb_config(self.config), "device_map": "cpu"}

    def _prepare(self, model: Any, ctx: StepContext) -> dict[str, Any]:
        from peft import prepare_model_for_kbit_training

        cfg = self.config
        quantized = model.get_memory_footprint()
        # A 4-bit weight is stored as uint8 holding two values; in float32 each value takes 4 bytes.
        full = sum(p.numel() * (4 if p.dtype.is_floating_point else 8) for p in model.parameters())
        ctx.log(f"base in 4-bit {cfg.quant_type}: {quantized / 2**20:.1f} MB of memory, against "
                f"{full / 2**20:.1f} MB in float32 ({quantized / full:.0%})")
        prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                        gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.gradient_checkpointing:
            model.config.use_cache = False  # no KV cache while training (transformers warns otherwise)
        memory = {"base_4bit_mb": round(quantized / 2**20, 1), "base_fp32_mb": round(full / 2**20, 1)}
        return {
            "quantized_base": {"bits": 4, "quant_type": cfg.quant_type, "double_quant": cfg.double_quant,
                               "compute_dtype": cfg.compute_dtype},
            "memory": memory,
            "metrics": memory,
            "summary": f"; base {memory['base_4bit_mb']:.0f} MB in 4-bit vs {memory['base_fp32_mb']:.0f} MB fp32",
        }


def _dequantize_into(model: Any, folder: Path, task: str, labels: list[str] | None, quantized: dict[str, Any]) -> int:
    """Replace `model`'s linear weights by their 4-bit round trip (as QLoRA trained on); return how many.

    A QLoRA adapter learned corrections to the quantized weights, so it is merged into those (de-quantized
    to float32), not into the original float32 weights. The same BitsAndBytesConfig reproduces them.
    """
    from types import SimpleNamespace

    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    q_model, _ = load_model(folder, task, labels, quantization_config=bnb_config(SimpleNamespace(**quantized)),
                            device_map="cpu")
    q_modules = dict(q_model.named_modules())
    done = 0
    for name, module in model.named_modules():
        q = q_modules.get(name)
        if isinstance(q, bnb.nn.Linear4bit):
            module.weight.data.copy_(dequantize_4bit(q.weight.data, q.weight.quant_state).float())
            done += 1
    return done


def bnb_config(settings: Any) -> Any:
    """transformers' BitsAndBytesConfig for a 4-bit base (`quant_type`, `double_quant`, `compute_dtype`)."""
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401  (a clear error here beats transformers' long one)
    except ImportError as exc:
        raise PassError("qlora needs bitsandbytes: pip install 'bitsandbytes>=0.45'") from exc
    if settings.compute_dtype == "float16" and not torch.cuda.is_available():
        raise PassError("compute_dtype float16 needs a CUDA GPU; use float32 or bfloat16 on the CPU")
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=settings.quant_type, bnb_4bit_use_double_quant=settings.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, settings.compute_dtype),
    )


@register_pass
class Finetune(Pass[FinetuneConfig]):
    """Fine-tune every weight, or only the last `train_layers` blocks plus the final norm and the head."""

    config_class = FinetuneConfig
    version = 1
    packages = _TRAIN_PACKAGES
    #: Not measured: lora's (above) plus, for every trained weight, its gradient and Adam's two moments (3x more).
    memory = MemoryUse(factor=12.0, base_mb=500)
    memory_hint = "train fewer blocks (`train_layers`), or use `lora` or `qlora` instead"

    def run(self, inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Train and save a plain model folder into ctx.out_dir; return its meta."""
        cfg = self.config
        task, labels, tokenizer, train, validation, model, *_ = _load_for_training(cfg, inputs, ctx)
        frozen = None
        if cfg.train_layers is not None:
            frozen = freeze_all_but_last(model, cfg.train_layers, ctx.log)
            ctx.log(f"training {frozen['blocks']}, norms {frozen['norms'] or 'none'}, head {frozen['head'] or 'none'}")
        trainable, total = count_parameters(model)
        ctx.log(f"{human_count(trainable)} of {human_count(total)} parameters train; {len(train)} train rows")
        result = train_with_trainer(model, tokenizer, task, train, validation, cfg, labels, ctx)

        for p in model.parameters():  # a saved model should not remember which weights were frozen
            p.requires_grad = True
        model.save_pretrained(str(ctx.out_dir))
        tokenizer.save_pretrained(str(ctx.out_dir))
        tm, em = result["train_metrics"], result["eval_metrics"]
        what = "full" if cfg.train_layers is None else f"last {cfg.train_layers} blocks"
        return {
            "task": task,
            "labels": labels,
            "model_type": model.config.model_type,
            "architecture": type(model).__name__,
            "num_parameters": total,
            "trainable_parameters": trainable,
            "frozen": frozen,
            "train_metrics": tm,
            "eval_metrics": em,
            "metrics": {f"val_{k}": v for k, v in em.items()} | {"train_loss": tm["loss"], "train_s": tm["runtime_s"]},
            "summary": (f"fine-tuned ({what}, {human_count(trainable)} trainable), {tm['steps']} steps in "
                        f"{tm['runtime_s']:.1f}s, train loss {tm['loss']:.4f}, {summary_metrics(em)}"),
        }


@register_pass
class MergeAdapter(Pass[MergeAdapterConfig]):
    """Merge a LoRA adapter into its base (`merge_and_unload`), check the logits, save a plain model folder."""

    config_class = MergeAdapterConfig
    version = 1
    packages = ("torch", "transformers", "peft", "safetensors")
    #: Measured (benchmarks/jobs_sweep.py, MiniLM, 93 MB of inputs): 712 MB peak: the libraries (about 500 MB),
    #: the base, the merged copy and the logits check.
    memory = MemoryUse(factor=2.5, base_mb=500)

    def run(self, inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Merge, verify on CHECK_TEXTS within MERGE_TOLERANCE, save into ctx.out_dir; return the meta."""
        import torch
        from peft import PeftModel

        adapter: Artifact = inputs["adapter"]
        base: Artifact | None = inputs.get("model")
        if base is None:
            raise PassError("merge_adapter needs the base model: set `model` to the step the adapter was trained on")
        task, labels = adapter.meta.get("task"), adapter.meta.get("labels")
        if task not in ("text-classification", "causal-lm"):
            raise PassError(f"the adapter step {adapter.step!r} has no known task ({task!r}); re-run it")
        want_type = adapter.meta.get("model_type")
        model_type = base.meta.get("model_type")
        if want_type and model_type and want_type != model_type:
            raise PassError(f"the adapter {adapter.step!r} was trained on a {want_type} model, but {base.step!r} is "
                            f"{model_type}: set `model` to the adapter's base")
        tokenizer = load_tokenizer(Path(adapter.path), causal=task == "causal-lm")
        torch.manual_seed(0)  # any head initialized at load is replaced by the adapter's saved copy
        model, _ = load_model(Path(base.path), task, labels)
        quantized = adapter.meta.get("quantized_base")
        if quantized:
            layers = _dequantize_into(model, Path(base.path), task, labels, quantized)
            ctx.log(f"{adapter.step!r} is a QLoRA adapter: merging into the de-quantized base ({layers} linear "
                    f"layers of {base.step!r} taken through 4-bit {quantized['quant_type']} and back to float32, "
                    "the weights the adapter was trained against)")
        with quiet_transformers():
            try:
                peft_model = PeftModel.from_pretrained(model, str(adapter.path))
            except (ValueError, RuntimeError, OSError) as exc:
                raise PassError(f"cannot load the adapter {adapter.step!r} onto {base.step!r}: {exc}") from exc
        peft_model.eval()
        encoded = [tokenizer(t, return_tensors="pt", truncation=True, max_length=64) for t in CHECK_TEXTS]
        with torch.no_grad():
            before = [peft_model(**e).logits for e in encoded]
            merged = peft_model.merge_and_unload()
            merged.eval()
            after = [merged(**e).logits for e in encoded]
        diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
        # Relative to the logits' size: a causal LM's logits reach ~30, where float32 rounding alone is ~1e-5.
        scale = max(1.0, max(float(a.abs().max()) for a in before))
        tolerance = MERGE_TOLERANCE * scale
        ctx.log(f"merged vs adapter logits on {len(CHECK_TEXTS)} texts: max abs diff {diff:.2e} (allowed {tolerance:.1e})")
        if not diff <= tolerance:  # also catches NaN
            raise PassError(f"merged model's logits differ from the adapter model's by {diff:.2e} (> {tolerance:.1e}); "
                            "the adapter does not match this base model")
        dtype = base.meta.get("dtype")
        if dtype in ("float16", "bfloat16"):
            merged = merged.to(getattr(torch, dtype))  # keep the base's storage dtype
        merged.save_pretrained(str(ctx.out_dir))
        tokenizer.save_pretrained(str(ctx.out_dir))
        total = sum(p.numel() for p in merged.parameters())
        architecture = type(merged).__name__
        how = " (de-quantized QLoRA base)" if quantized else ""
        return {
            "merged_into": "dequantized_4bit_base" if quantized else "base",
            "task": task,
            "labels": labels,
            "model_type": merged.config.model_type,
            "architecture": architecture,
            "num_parameters": total,
            "dtype": dtype or "float32",
            "merge_max_abs_diff": diff,
            "metrics": {"merge_max_abs_diff": diff},
            "summary": f"merged {adapter.step} into {base.step}{how}: {architecture}, {human_count(total)} parameters, "
                       f"logits match (max diff {diff:.1e})",
        }


__all__ = ["Finetune", "Lora", "MergeAdapter", "Qlora", "bnb_config"]
