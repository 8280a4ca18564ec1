"""The Trainer machinery shared by `lora` and `finetune`: arguments, progress, the run, the loss plot.

`train_with_trainer` is the one place a transformers `Trainer` is built: every `TrainingSettings`
field maps to a `TrainingArguments` field there. Checkpoints go to the step's checkpoint folder (see
`passes.train.resume`: a killed run resumes from them) or, without one, a temporary folder; they never
reach the artifact. The log history and loss plot are written next to the result.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from schemas.steps import TrainingSettings

from passes.hf.loading import classification_metrics
from passes.train.data import BUCKET_BATCHES, collator_for, length_bucket_sampler
from passes.train.resume import deferred_interrupts, last_checkpoint, stop_on_interrupt_callback
from passes.base import PassError, StepContext, tracking_environment

#: Checkpoint interval (optimizer steps) when the step does not evaluate and sets no `save_steps`:
#: a kill loses at most this many steps; on a 2-core CPU a LoRA step of SmolLM2-135M takes ~3 s.
DEFAULT_SAVE_STEPS = 50

# --- the Trainer -------------------------------------------------------------------------------------


def _metric_key(cfg: TrainingSettings) -> tuple[str, bool]:
    """(metric name for TrainingArguments, greater is better)."""
    return cfg.metric_for_best_model, cfg.metric_for_best_model != "loss"


def training_arguments(cfg: TrainingSettings, task: str, has_eval: bool, scratch: Path, report_to: Any = "none") -> Any:
    """`TrainingArguments` with every TrainingSettings field mapped.

    Checkpoints are full (optimizer, scheduler and RNG states too), so training can resume from them.
    When the run evaluates, the best evaluation's weights (by `metric_for_best_model`) are the result,
    as that field's description promises: checkpoints are written at each evaluation (the Trainer needs
    them in step) and the best is loaded at the end. Without evaluation they are written every
    `save_steps` (default DEFAULT_SAVE_STEPS).
    """
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    if cfg.precision == "fp16" and not cuda:
        raise PassError("fp16 needs a CUDA GPU; use bf16 or fp32")
    if cfg.metric_for_best_model != "loss" and task != "text-classification":
        raise PassError(f"metric_for_best_model {cfg.metric_for_best_model!r} needs classification; use loss for {task}")
    evaluate = cfg.eval_strategy if has_eval else "no"
    best = evaluate != "no"
    metric, greater = _metric_key(cfg)
    kwargs: dict[str, Any] = dict(
        output_dir=str(scratch),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        # A classifier's evaluation keeps no gradients and tiny logits: bigger batches fit and run faster.
        # A causal LM's logits are batch x tokens x vocabulary: keep the training batch size.
        per_device_eval_batch_size=max(cfg.batch_size, 64) if task == "text-classification" else cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optim,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        eval_strategy=evaluate,
        eval_steps=cfg.eval_steps if evaluate == "steps" else None,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        # With evaluation, the Trainer saves at its evaluations (to reload the best weights at the end).
        save_strategy=evaluate if best else "steps",
        save_steps=(cfg.save_steps or cfg.eval_steps) if evaluate == "steps" else (cfg.save_steps or DEFAULT_SAVE_STEPS),
        save_total_limit=cfg.save_total_limit,
        save_only_model=False,
        load_best_model_at_end=best,
        metric_for_best_model=metric if best else None,
        greater_is_better=greater if best else None,
        # Causal LMs: keep no logits in evaluation (vocab x tokens of memory for a loss-only metric).
        prediction_loss_only=task != "text-classification",
        remove_unused_columns=False,
        use_cpu=not cuda,
        dataloader_pin_memory=cuda,
        disable_tqdm=True,
        report_to=report_to,  # ["mlflow"] when the run is tracked (see tracking_environment)
    )
    try:
        return TrainingArguments(**kwargs)
    except ValueError as exc:  # e.g. bf16 on hardware without bf16 support
        raise PassError(f"invalid training settings: {exc}") from exc


def _callbacks(ctx: StepContext, cfg: TrainingSettings, has_eval: bool) -> list[Any]:
    """The progress callback, plus early stopping when asked."""
    from transformers import EarlyStoppingCallback, TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Advance the step's progress bar once per optimizer step, with the last logged loss."""

        def __init__(self) -> None:
            self.bar: Any = None
            self.loss: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.bar = ctx.progress(state.max_steps, "training")
            self.bar.__enter__()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            fields = {"loss": self.loss} if self.loss is not None else {}
            self.bar.advance(1, **fields)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.loss = round(float(logs["loss"]), 4)

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kw: Any) -> None:
            shown = ", ".join(f"{k[5:]} {v:.4f}" for k, v in (metrics or {}).items()
                              if k in ("eval_loss", "eval_accuracy", "eval_f1"))
            ctx.log(f"epoch {state.epoch:.2f}, step {state.global_step}: {shown}")

        def close(self) -> None:
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None

    callbacks: list[Any] = [ProgressCallback()]
    if has_eval and cfg.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    return callbacks


def _bucketed_trainer_class() -> Any:
    """A Trainer subclass whose train batches group similar lengths (see `length_bucket_sampler`)."""
    from transformers import Trainer

    class BucketedTrainer(Trainer):
        """A Trainer whose train batches group similar lengths (see `length_bucket_sampler`)."""

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if BUCKET_BATCHES <= 0:
                return super()._get_train_sampler(train_dataset)
            lengths = [len(ids) for ids in dataset["input_ids"]]
            return length_bucket_sampler(lengths, self.args.per_device_train_batch_size, self.args.seed, BUCKET_BATCHES)

    return BucketedTrainer


def train_with_trainer(
    model: Any, tokenizer: Any, task: str, train: Any, validation: Any, cfg: TrainingSettings,
    labels: list[str] | None, ctx: StepContext,
) -> dict[str, Any]:
    """Train `model` in place with a transformers Trainer; write training_log.json and loss.png to ctx.out_dir.

    When evaluating, the model ends as the best evaluated checkpoint by `metric_for_best_model`, and
    `eval_metrics` are that evaluation's. With no validation split, evaluation falls back to none
    (logged); early stopping then cannot work and is an error. Returns {"train_metrics", "eval_metrics"}.
    """
    if validation is None and cfg.eval_strategy != "no":
        if cfg.early_stopping_patience is not None:
            raise PassError("early_stopping_patience needs a validation split: add one in load_data `splits`, "
                            "or remove early_stopping_patience")
        ctx.log("no validation split: training without evaluation (add one in load_data `splits` to evaluate)")
    has_eval = validation is not None and cfg.eval_strategy != "no"
    num_labels = len(labels or [])

    def compute_metrics(pred: Any) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return classification_metrics(pred.label_ids, logits.argmax(-1), num_labels)

    # Pad on the right while training and evaluating: decoders count positions from the first token
    # of the sequence, so left padding (some chat tokenizers' default) would shift every position.
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        return _run(model, tokenizer, task, train, validation, cfg, ctx, has_eval, compute_metrics)
    finally:
        tokenizer.padding_side = side


def _run(model: Any, tokenizer: Any, task: str, train: Any, validation: Any, cfg: TrainingSettings,
         ctx: StepContext, has_eval: bool, compute_metrics: Any) -> dict[str, Any]:
    """The Trainer run of `train_with_trainer`, in the step's checkpoint folder (else a temporary one)."""
    from transformers import PrinterCallback

    checkpoints = getattr(ctx, "checkpoint_dir", None)
    with _checkpoint_folder(checkpoints) as scratch:
        args = training_arguments(cfg, task, has_eval, scratch, ["mlflow"] if getattr(ctx, "tracking", None) else "none")
        if cfg.save_steps is not None and args.save_strategy == "epoch":
            ctx.log(f"save_steps {cfg.save_steps} not used: with `eval_strategy: epoch` checkpoints follow the epochs")
        resume = last_checkpoint(checkpoints, ctx.log)
        with deferred_interrupts() as interrupt:
            callbacks = _callbacks(ctx, cfg, has_eval) + [stop_on_interrupt_callback(interrupt, ctx.log)]
            trainer = _bucketed_trainer_class()(
                model=model, args=args, train_dataset=train, eval_dataset=validation if has_eval else None,
                data_collator=collator_for(task, tokenizer), processing_class=tokenizer,
                compute_metrics=compute_metrics if task == "text-classification" and has_eval else None,
                callbacks=callbacks,
            )
            # With tqdm disabled the Trainer prints every log dict to stdout; the progress callback reports instead.
            trainer.remove_callback(PrinterCallback)
            if resume is not None:
                ctx.log(f"resuming from checkpoint at step {resume[1]} of {resume[2] or '?'} ({resume[0]})")
            start = time.perf_counter()
            try:
                with tracking_environment(ctx), warnings.catch_warnings():
                    # Checkpoint rotation warns on filesystems with coarse mtimes; harmless, it sorts by step.
                    warnings.filterwarnings("ignore", message="mtime may not be reliable")
                    result = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
            finally:
                callbacks[0].close()
        seconds = time.perf_counter() - start
        history = list(trainer.state.log_history)
        eval_metrics: dict[str, float] = {}
        if has_eval:
            # The result is the best evaluated checkpoint (loaded back by the Trainer): its logged metrics
            # are the final ones, no need to evaluate again.
            best_step = trainer.state.best_global_step
            best = next((h for h in history if "eval_loss" in h and h.get("step") == best_step), None)
            if best is None:  # nothing was evaluated (e.g. max_steps ended before the first evaluation)
                best = {**trainer.evaluate(), "step": trainer.state.global_step}
                history.append(best)
            elif best_step != trainer.state.global_step:
                ctx.log(f"kept the best evaluation by {cfg.metric_for_best_model}: step {best_step} "
                        f"(epoch {best.get('epoch', 0):.2f}) of {trainer.state.global_step}")
            history.append({"best_step": best_step, "metric_for_best_model": cfg.metric_for_best_model})
            eval_metrics = {k[5:]: round(float(v), 6) for k, v in best.items()
                            if k in ("eval_loss", "eval_accuracy", "eval_f1")}
    train_metrics = {
        "resumed_from_step": resume[1] if resume else None,
        "loss": round(float(result.training_loss), 6),
        "runtime_s": round(seconds, 2),
        "steps": int(result.global_step),
        "epochs": round(float(trainer.state.epoch or 0), 3),
        "samples_per_second": round(float(result.metrics.get("train_samples_per_second", 0.0)), 2),
    }
    (ctx.out_dir / "training_log.json").write_text(json.dumps(history, indent=1) + "\n")
    plot_loss(history, ctx.out_dir / "loss.png")
    return {"train_metrics": train_metrics, "eval_metrics": eval_metrics}


@contextlib.contextmanager
def _checkpoint_folder(folder: Path | None) -> Iterator[Path]:
    """The step's checkpoint folder (created; the runner removes it once the step is cached), else a temporary one."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="pipeline-train-") as scratch:
        yield Path(scratch)


def plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    """Train loss per logged step and, where present, validation loss (matplotlib, no display needed)."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def summary_metrics(eval_metrics: dict[str, float]) -> str:
    """`val accuracy 0.991, f1 0.967, loss 0.041` (or `no validation`)."""
    if not eval_metrics:
        return "no validation"
    return "val " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(eval_metrics.items()))


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; a 4-bit (bitsandbytes) weight counts its values, not its packed bytes."""
    def count(p: Any) -> int:
        state = getattr(p, "quant_state", None)
        return int(state.shape.numel()) if state is not None and hasattr(state, "shape") else p.numel()

    trainable = sum(count(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(count(p) for p in model.parameters())

