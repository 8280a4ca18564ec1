"""The `tune_scales` pass: quantization-aware tuning of an Olive-quantized checkpoint's block scales.

EfficientQAT (Chen et al., 2024) trains a quantized model end to end with its integer codes frozen and only the
quantization parameters learning; here the codes are GPTQ's (or RTN's), each block's scale trains as
`s0 * (1 + d)` (`passes.hf.packed`), and the float norm weights train too when `train_norms`. The loss is the KL
divergence from a `teacher`'s next-token distribution on the response tokens (the float model the checkpoint
was quantized from: the quantized model learns to answer as it did), else the responses' cross-entropy. The
output is the same checkpoint format with new scales, so `export_onnx` builds it exactly as before: same
MatMulNBits, same size, same speed.

Measured on the chat recipe (SmolLM2-135M, QuaRot + symmetric GPTQ block 32, 2-core Zen 3): see
`chat-smollm2-gptq.yaml` and the README; the validation KL to the teacher before and after is in the
artifact (`kl_before`, `kl_after`).

Why by hand: no maintained library trains the scales of Olive's packed format (Olive's QuantLinear keeps them as
fixed buffers; EfficientQAT's code targets its own GPTQ-style format on a GPU). The Trainer run is the shared
one (`passes.train.trainer`: progress, checkpoints, resume, the loss plot).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schemas.steps import TuneScalesConfig

from passes.hf.chat import chat_settings, check_chat_template
from passes.hf.folders import human_count
from passes.hf.loading import load_dataset_dict, load_model, load_tokenizer
from passes.hf.packed import load_packed_lm, packed_summary, save_packed
from passes.train.data import collator_for, prepare_data
from passes.train.trainer import summary_metrics, train_with_trainer
from passes.base import Artifact, MemoryUse, Pass, PassError, StepContext
from passes.registry import register_pass

_PACKAGES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "safetensors")
#: Masked label (the Trainer's and our collator's ignore index).
IGNORE = -100


def _distiller(student: Any, teacher: Any | None) -> Any:
    """The module the Trainer trains: the student's loss on the response tokens (KL to the teacher, or CE)."""
    import torch
    import torch.nn.functional as F

    class Distiller(torch.nn.Module):
        """Runs the student's decoder, and its head on the scored positions only (the vocabulary-wide logits of
        every position would be most of the step's memory), against the teacher's on the same positions."""

        def __init__(self) -> None:
            super().__init__()
            self.student = student
            # Not a submodule: never trained, never in a checkpoint.
            object.__setattr__(self, "teacher", teacher)

        @staticmethod
        def _head_inputs(model: Any, input_ids: Any, attention_mask: Any, chosen: Any) -> Any:
            decoder = getattr(model, model.base_model_prefix)
            hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return model.get_output_embeddings()(hidden[:, :-1][chosen])

        def forward(self, input_ids: Any, attention_mask: Any = None, labels: Any = None) -> dict[str, Any]:
            # No **kwargs: the Trainer then scales the loss for gradient accumulation itself.
            targets = labels[:, 1:]
            chosen = targets != IGNORE
            logits = self._head_inputs(self.student, input_ids, attention_mask, chosen)
            if self.teacher is None:
                return {"loss": F.cross_entropy(logits, targets[chosen])}
            with torch.no_grad():
                wanted = self._head_inputs(self.teacher, input_ids, attention_mask, chosen)
            loss = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(wanted, -1), log_target=True,
                            reduction="batchmean")
            return {"loss": loss}

        def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
            self.student.gradient_checkpointing_enable(**kwargs)

    return Distiller()


def _mean_loss(model: Any, rows: Any, collate: Any, batch_size: int, ctx: StepContext, label: str) -> float | None:
    """The model's mean loss over `rows` (per scored token batch, averaged by tokens), without gradients."""
    import torch

    if rows is None or len(rows) == 0:
        return None
    total = count = 0.0
    starts = range(0, len(rows), batch_size)
    with torch.no_grad(), ctx.progress(len(starts), label) as bar:
        for start in starts:
            batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            n = float((batch["labels"][:, 1:] != IGNORE).sum())
            if n:
                total += float(model(batch["input_ids"], batch["attention_mask"], batch["labels"])["loss"]) * n
                count += n
            bar.advance(1)
    return round(total / count, 6) if count else None


@register_pass
class TuneScales(Pass[TuneScalesConfig]):
    """Train the block scales (and norms) of an Olive-quantized causal LM; write the same format back."""

    config_class = TuneScalesConfig
    version = 1
    packages = _PACKAGES
    #: The student's 1-byte codes plus its float weights rebuilt each step and their gradients (about 2.5x the
    #: packed checkpoint), the teacher's float weights (its size on disk), activations. Measured on the chat
    #: recipe (197 MB checkpoint + 538 MB teacher, batch 8 x 160 tokens): about 3.0 GB resident mid-training,
    #: the runner included, under this estimate's 3.6 GB.
    memory = MemoryUse(factor=4.0, base_mb=600)
    memory_hint = "use a smaller `batch_size` or `max_length`, `gradient_checkpointing: true`, or no `teacher`"

    def run(self, inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        from transformers import set_seed

        cfg = self.config
        source: Artifact = inputs["model"]
        data: Artifact = inputs["data"]
        teacher_art: Artifact | None = inputs.get("teacher")
        folder = Path(source.path)
        if source.meta.get("task") not in (None, "causal-lm"):
            raise PassError(f"tune_scales trains causal LMs; {source.step!r} is a {source.meta.get('task')} model")
        if data.meta.get("format") not in ("instruction", "chat"):
            raise PassError(f"dataset {data.step!r} is {data.meta.get('format')!r} data; tune_scales needs instruction "
                            "data (`prompt`/`response` in load_data) or chat data")
        tokenizer = load_tokenizer(folder, causal=True)
        chat = chat_settings(data.meta)
        check_chat_template(tokenizer, chat, f"the model {source.step!r}")
        train, validation, truncation = prepare_data(
            load_dataset_dict(data), tokenizer, "causal-lm", cfg.max_length, ctx, chat=chat,
            train_on_prompt=cfg.train_on_prompt, packing=cfg.packing, train_on=cfg.train_on,
        )
        set_seed(cfg.seed)
        student, layers = load_packed_lm(folder)
        if getattr(student.config, "final_logit_softcapping", None):
            raise PassError(f"{source.step!r} soft-caps its logits ({type(student).__name__}): tune_scales does not "
                            "support that head")
        norms = []
        for name, p in student.named_parameters():  # the scales train, and the norms when asked; nothing else
            is_norm = cfg.train_norms and "norm" in name.rsplit(".", 2)[-2]
            p.requires_grad_(name.endswith(".scale_delta") or is_norm)
            if is_norm:
                norms.append(name)
        teacher = None
        if teacher_art is not None:
            teacher, _ = load_model(Path(teacher_art.path), "causal-lm", None)
            teacher.eval().requires_grad_(False)
            if teacher.config.vocab_size != student.config.vocab_size:
                raise PassError(f"the teacher {teacher_art.step!r} has a vocabulary of {teacher.config.vocab_size}, "
                                f"the model {source.step!r} {student.config.vocab_size}: distillation needs the same one")
        model = _distiller(student, teacher)
        scales = sum(layer.scale_delta.numel() for layer in layers.values())
        packed_weights = sum(layer.rows * layer.cols for layer in layers.values())
        norm_values = sum(p.numel() for n, p in student.named_parameters() if n in norms)
        loss_name = f"KL to {teacher_art.step!r}" if teacher_art is not None else "cross-entropy"
        packed = packed_summary(folder)
        ctx.log(f"{packed}: {len(layers)} packed layers; {human_count(scales)} block scales"
                + (f" and {human_count(norm_values)} norm weights" if norms else "")
                + f" train, the {human_count(packed_weights)} codes stay; loss: {loss_name} on the responses; "
                f"{len(train)} train rows")
        collate = collator_for("causal-lm", tokenizer)
        # Right padding for the collator, as train_with_trainer uses while training (decoders count positions
        # from the first token).
        side, tokenizer.padding_side = tokenizer.padding_side, "right"
        try:
            before = _mean_loss(model, validation, collate, cfg.batch_size, ctx, "validation before")
            result = train_with_trainer(model, tokenizer, "causal-lm", train, validation, cfg, None, ctx)
            after = _mean_loss(model, validation, collate, cfg.batch_size, ctx, "validation after")
        finally:
            tokenizer.padding_side = side
        if before is not None:
            ctx.log(f"validation {loss_name}: {before:.4f} before, {after:.4f} after")

        facts = save_packed(student, layers, folder, ctx.out_dir, norms)
        tm, em = result["train_metrics"], result["eval_metrics"]
        change = f"{before:.4f} -> {after:.4f}" if before is not None else "no validation"
        return {
            "task": "causal-lm",
            "labels": None,
            "model_type": student.config.model_type,
            "architecture": type(student).__name__,
            "quantization": source.meta.get("quantization", "olive"),
            "packed": packed,
            "teacher": teacher_art.step if teacher_art is not None else None,
            "loss": "kl" if teacher_art is not None else "cross_entropy",
            "trained_norms": len(norms),
            "scales": facts,
            "kl_before" if teacher_art is not None else "loss_before": before,
            "kl_after" if teacher_art is not None else "loss_after": after,
            "truncation": truncation or None,
            "chat": chat,
            "train_metrics": tm,
            "eval_metrics": em,
            "metrics": {f"val_{k}": v for k, v in em.items()} | {"train_loss": tm["loss"], "train_s": tm["runtime_s"]},
            "summary": (f"scales of {len(layers)} layers tuned ({packed}), {tm['steps']} steps in "
                        f"{tm['runtime_s']:.1f}s, validation {loss_name} {change}, {summary_metrics(em)}"),
        }
