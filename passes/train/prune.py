"""The `prune` pass: structured pruning of an encoder classifier's attention heads and feed-forward neurons.

Importance is the first-order Taylor estimate of the loss change when a unit is removed: for a head, the
|sum over its context outputs of activation x gradient| of each example (what the gradient of a head mask
gives, Michel et al., "Are Sixteen Heads Really Better than One?", 2019); for a feed-forward neuron the same over
its activation after the nonlinearity (Molchanov et al., "Importance Estimation for Neural Network Pruning",
2019). Per example, then summed over the scored rows, so the batch size does not decide what is kept.

Removal is transformers' own: `model.prune_heads` (which also records `pruned_heads` in the config, so
`from_pretrained` rebuilds the pruned shapes) and `pytorch_utils.prune_linear_layer` for the feed-forward
matrices (transformers prunes heads only; the kept count goes into `intermediate_size`, which is why every
layer keeps the same number). The folder saved is reloaded and its logits compared with the pruned model's
before the step succeeds.

Why it is here: the int8 GEMMs are most of a small encoder's time on the CPU (MiniLM-L6 int8, onnxruntime
profiler: 76% in DynamicQuantizeMatMul and QAttention), and the same kernel runs for us and for Olive; fewer
rows in every matrix is what makes the deployable faster on the same inputs. Measured on the quickstart
(MiniLM-L6 on SMS spam, 2-core Zen 4 AVX512-VNNI): the feed-forward cut to a quarter (384 of 1536) and half
the heads (6 of 12) lost no test accuracy without any retraining (0.9878, the merged model's) and ran the
int8 model in about half of Olive's tuned int8 time on the same inputs (benchmarks/cls_vs_olive.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from schemas.steps import PruneConfig

from passes.hf.folders import classifier_labels, human_count, read_config
from passes.hf.loading import load_dataset_dict, load_model, load_tokenizer
from passes.train.data import collator_for, prepare_data
from passes.base import Artifact, MemoryUse, Pass, PassError, StepContext
from passes.registry import register_pass

_PACKAGES = ("torch", "transformers", "datasets", "tokenizers", "safetensors")
#: How far the reloaded folder's logits may differ from the pruned model's, per unit of the largest logit.
RELOAD_TOLERANCE = 1e-4


def kept_count(keep: int | float | None, total: int, what: str) -> int:
    """How many of `total` to keep for a step's `heads` / `ffn` (a count, a fraction, or None: all)."""
    if keep is None:
        return total
    if isinstance(keep, float):
        return max(1, round(keep * total))
    if keep > total:
        raise PassError(f"{what}: {keep} kept per layer, but the model has {total} per layer; give at most {total} "
                        "or a fraction")
    return keep


def encoder_layers(model: Any, step: str) -> list[Any]:
    """The model's transformer layers when they have the BERT layout prune works on; else a PassError."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    needed = ("attention.prune_heads", "attention.self", "intermediate.dense", "output.dense")

    def has(layer: Any, path: str) -> bool:
        obj = layer
        for part in path.split("."):
            obj = getattr(obj, part, None)
        return obj is not None

    if not layers or not all(has(layer, p) for layer in layers for p in needed):
        raise PassError(f"prune works on encoders with BERT's layer layout (bert, roberta, xlm-roberta, electra, "
                        f"camembert, ...); {step!r} is {type(model).__name__} ({model.config.model_type}). For decoders, "
                        "Olive's SliceGPT runs as an `olive` step")
    return list(layers)


def batches(rows: Any, collate: Any, batch_size: int) -> Any:
    """(inputs, labels) per batch of tokenized rows, padded by `collate` to each batch's longest."""
    for start in range(0, len(rows), batch_size):
        batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        yield batch, batch.pop("labels")


def importance(model: Any, layers: list[Any], rows: Any, collate: Any, batch_size: int,
               ctx: StepContext) -> tuple[Any, Any]:
    """(heads [layers, heads], neurons [layers, intermediate]): per-example |activation x gradient|, summed."""
    import torch
    import torch.nn.functional as F

    cfg = model.config
    n_heads = cfg.num_attention_heads
    head_size = cfg.hidden_size // n_heads
    heads = torch.zeros(len(layers), n_heads, dtype=torch.float64)
    neurons = torch.zeros(len(layers), cfg.intermediate_size, dtype=torch.float64)
    seen: dict[tuple[str, int], Any] = {}

    def keep(key: tuple[str, int]) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            seen[key] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.attention.self.register_forward_hook(keep(("heads", i))))
        handles.append(layer.intermediate.register_forward_hook(keep(("ffn", i))))
    try:
        with ctx.progress(math.ceil(len(rows) / batch_size), "scoring heads and neurons") as bar:
            for batch, labels in batches(rows, collate, batch_size):
                seen.clear()
                logits = model(**batch).logits
                # A sum, not a mean: each example's gradient then is its own (the examples do not interact).
                loss = F.cross_entropy(logits, labels, reduction="sum")
                keys = list(seen)
                grads = torch.autograd.grad(loss, [seen[k] for k in keys])
                mask = batch["attention_mask"].unsqueeze(-1).to(logits.dtype)
                for key, grad in zip(keys, grads):
                    # Detached: accumulating a tensor that carries the graph would keep every batch's graph
                    # alive (measured: 3.7 GB after 794 MiniLM rows instead of 0.7).
                    taylor = (seen[key].detach() * grad * mask).sum(1)  # [batch, width]: over each example's tokens
                    kind, i = key
                    if kind == "heads":
                        heads[i] += taylor.view(len(taylor), n_heads, head_size).sum(-1).abs().sum(0).double()
                    else:
                        neurons[i] += taylor.abs().sum(0).double()
                bar.advance(1)
    finally:
        for handle in handles:
            handle.remove()
    return heads, neurons


def accuracy(model: Any, rows: Any, collate: Any, batch_size: int, ctx: StepContext, label: str) -> float | None:
    """The model's accuracy on tokenized rows (None without rows)."""
    import torch

    if rows is None or len(rows) == 0:
        return None
    right = 0
    with torch.no_grad(), ctx.progress(math.ceil(len(rows) / batch_size), label) as bar:
        for batch, labels in batches(rows, collate, batch_size):
            right += int((model(**batch).logits.argmax(-1) == labels).sum())
            bar.advance(1)
    return right / len(rows)


def _check_reload(pruned: Any, folder: Path, labels: list[str], rows: Any, collate: Any) -> float:
    """Reload the saved folder as a user would and compare its logits with the pruned model's: the max diff."""
    import torch

    reloaded, new = load_model(folder, "text-classification", labels)
    if new:
        raise PassError(f"the pruned folder does not reload: {', '.join(new[:5])} would be initialized anew")
    reloaded.eval()
    batch, _ = next(batches(rows, collate, 8))
    with torch.no_grad():
        want, got = pruned(**batch).logits, reloaded(**batch).logits
    diff = float((want - got).abs().max())
    if not diff <= RELOAD_TOLERANCE * max(1.0, float(want.abs().max())):
        raise PassError(f"the saved pruned model's logits differ from the pruned model's by {diff:.2e} on reload")
    return diff


@register_pass
class Prune(Pass[PruneConfig]):
    """Score heads and feed-forward neurons on the train split, keep the best per layer, save a smaller folder."""

    config_class = PruneConfig
    version = 1
    packages = _PACKAGES
    #: The libraries, the model, one batch's activations and their gradients, the pruned copy reloaded for the
    #: check. Measured on MiniLM-L6 (91 MB) and SMS spam: 1028 MB peak at batch 16 x 64 tokens, 1234 MB at the
    #: defaults (16 x 128), 1692 MB at 32 x 128; the estimate at the defaults is 1.27 GB.
    memory = MemoryUse(factor=4.0, base_mb=900)
    memory_hint = "use a smaller `batch_size` or `max_length`"

    def run(self, inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        import torch
        from transformers.pytorch_utils import prune_linear_layer

        cfg = self.config
        source: Artifact = inputs["model"]
        data: Artifact = inputs["data"]
        folder = Path(source.path)
        config = read_config(folder)
        task = source.meta.get("task")
        labels = source.meta.get("labels") or classifier_labels(config)
        if task != "text-classification" or not labels:
            raise PassError(f"prune works on text-classification models; {source.step!r} is a {task} model "
                            "(fine-tune a classifier first: `lora` + `merge_adapter`, or `finetune`)")
        if data.meta.get("format") != "classification" or not data.meta.get("labels"):
            raise PassError(f"prune scores on labelled data; the dataset {data.step!r} is "
                            f"{data.meta.get('format')!r} data: set `label` in its load_data step")
        if len(data.meta["labels"]) != len(labels):
            raise PassError(f"the dataset {data.step!r} has {len(data.meta['labels'])} labels, the model "
                            f"{source.step!r} {len(labels)}: score it on the data it was trained for")
        tokenizer = load_tokenizer(folder)
        train, validation, _ = prepare_data(load_dataset_dict(data), tokenizer, "text-classification",
                                            cfg.max_length, ctx)
        if len(train) > cfg.samples:
            train = train.shuffle(seed=cfg.seed).select(range(cfg.samples))
        collate = collator_for("text-classification", tokenizer)
        model, new = load_model(folder, "text-classification", labels)
        if new:
            raise PassError(f"{source.step!r} has no trained classification head ({', '.join(new[:3])} would be "
                            "initialized): prune a fine-tuned classifier")
        model.eval()
        layers = encoder_layers(model, source.step)
        n_heads, width = model.config.num_attention_heads, model.config.intermediate_size
        if getattr(model.config, "pruned_heads", None):
            raise PassError(f"{source.step!r} is already pruned (config.pruned_heads); prune the unpruned model once, "
                            "with the counts wanted")
        keep_heads = kept_count(cfg.heads, n_heads, "heads")
        keep_ffn = kept_count(cfg.ffn, width, "ffn")
        if keep_heads == n_heads and keep_ffn == width:
            raise PassError(f"nothing would be pruned: {source.step!r} has {n_heads} heads and {width} feed-forward "
                            "neurons per layer, and the step keeps all of them")
        params_before = sum(p.numel() for p in model.parameters())
        before = accuracy(model, validation, collate, cfg.batch_size, ctx, "validation accuracy before")
        ctx.log(f"scoring {n_heads} heads and {width} feed-forward neurons in each of {len(layers)} layers "
                f"on {len(train)} train rows")
        head_scores, neuron_scores = importance(model, layers, train, collate, cfg.batch_size, ctx)

        kept_heads: list[list[int]] = []
        with torch.no_grad():
            if keep_heads < n_heads:
                order = torch.argsort(head_scores, dim=1, descending=True)
                kept_heads = [sorted(order[i, :keep_heads].tolist()) for i in range(len(layers))]
                model.prune_heads({i: sorted(set(range(n_heads)) - set(k)) for i, k in enumerate(kept_heads)})
            if keep_ffn < width:
                order = torch.argsort(neuron_scores, dim=1, descending=True)
                for i, layer in enumerate(layers):
                    index = torch.sort(order[i, :keep_ffn]).values
                    layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index, dim=0)
                    layer.output.dense = prune_linear_layer(layer.output.dense, index, dim=1)
                model.config.intermediate_size = keep_ffn
        after = accuracy(model, validation, collate, cfg.batch_size, ctx, "validation accuracy after")
        params_after = sum(p.numel() for p in model.parameters())
        drop_pt = None if before is None else round((before - after) * 100, 4)
        if before is None:
            ctx.log(f"the dataset {data.step!r} has no validation split: the pruned model's accuracy is not checked")
        else:
            ctx.log(f"validation accuracy {before:.4f} before, {after:.4f} after ({-drop_pt:+.2f} pt)")
            limit = cfg.max_accuracy_drop_pt
            if limit is not None and drop_pt > limit:
                raise PassError(
                    f"pruning to {keep_heads} of {n_heads} heads and {keep_ffn} of {width} feed-forward neurons per "
                    f"layer cost {drop_pt:.2f} points of validation accuracy ({before:.4f} -> {after:.4f}), more than "
                    f"max_accuracy_drop_pt {limit}: keep more (`heads`, `ffn`), or raise `max_accuracy_drop_pt` and "
                    "recover with a `finetune` (or `lora` + `merge_adapter`) step after this one")
        model.save_pretrained(str(ctx.out_dir))
        tokenizer.save_pretrained(str(ctx.out_dir))
        reload_diff = _check_reload(model, ctx.out_dir, labels, validation if validation is not None else train, collate)
        # Work per token in the layers' matrix products (QKV, output, two feed-forward): what pruning saves.
        hidden = model.config.hidden_size
        head_size = hidden // n_heads
        work = lambda h, f: len(layers) * (4 * hidden * h * head_size + 2 * hidden * f)  # noqa: E731
        share = work(keep_heads, keep_ffn) / work(n_heads, width)
        pruned = ", ".join(part for part in (
            f"{keep_heads}/{n_heads} heads" if keep_heads < n_heads else "",
            f"{keep_ffn}/{width} feed-forward neurons" if keep_ffn < width else "") if part)
        accuracy_text = (f"validation accuracy {before:.4f} -> {after:.4f}" if before is not None
                         else "no validation split")
        return {
            "task": "text-classification",
            "labels": labels,
            "model_type": model.config.model_type,
            "architecture": type(model).__name__,
            "dtype": "float32",
            "num_parameters": params_after,
            "num_parameters_before": params_before,
            "heads_kept": keep_heads,
            "heads_total": n_heads,
            "heads_kept_per_layer": kept_heads or None,
            "ffn_kept": keep_ffn,
            "ffn_total": width,
            "layer_work_share": round(share, 4),
            "scored_rows": len(train),
            "val_accuracy_before": before,
            "val_accuracy_after": after,
            "accuracy_drop_pt": drop_pt,
            "reload_max_abs_diff": reload_diff,
            "metrics": {"num_parameters": params_after, "layer_work_share": round(share, 4)}
            | ({"val_accuracy_before": before, "val_accuracy_after": after} if before is not None else {}),
            "summary": (f"kept {pruned} in each of {len(layers)} layers: {share:.0%} of the layers' matrix work, "
                        f"{human_count(params_before)} -> {human_count(params_after)} parameters; {accuracy_text}"),
        }


__all__ = ["Prune", "encoder_layers", "importance", "kept_count"]
