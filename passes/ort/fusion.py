"""Transformer fusions for encoder graphs with onnxruntime's transformer optimizer (CPU-minded).

The optimizer rewrites a BERT-family graph into onnxruntime's fused operators: one `Attention` per
layer, `EmbedLayerNormalization`, `BiasGelu`. That matters most for int8: `quantize_dynamic` turns a
fused `Attention` into `QAttention`, and on MiniLM (batch 1, sequence 64, 2 threads) the fused int8
graph ran ~1.2x faster than the unfused one, which is what takes dynamic int8 past 4x PyTorch.
SkipLayerNormalization is *not* fused: it is slower than Add + LayerNormalization in this onnxruntime on
x86 CPUs (PERFORMANCE-NOTES.md), so the sessions also disable `SkipLayerNormFusion`. The raw 2-D
attention mask is kept (not reduced to a per-row length), so left padding stays correct too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from passes.ort import files

#: Model types whose graphs the optimizer's BERT fusions recognise.
BERT_FAMILY = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "ernie"})
#: config.json model_type -> the transformer optimizer's model type, beyond the BERT family.
OPTIMIZER_MODEL_TYPES = {"gpt2": "gpt2", "gpt_neox": "gpt_neox", "phi": "phi", "qwen3": "qwen3", "t5": "t5",
                         "mt5": "t5", "bart": "bart", "vit": "vit", "swin": "swin", "clip": "clip"}


def optimizer_model_type(config: Any) -> str | None:
    """The transformer optimizer's model type for a Hugging Face config (None when it has no fusions for it)."""
    model_type = getattr(config, "model_type", None)
    return "bert" if model_type in BERT_FAMILY else OPTIMIZER_MODEL_TYPES.get(model_type)


def heads_and_hidden(config: Any) -> tuple[int, int]:
    """Attention heads and hidden size from a config (0 lets the optimizer read them from the graph)."""
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or getattr(config, "n_head", None) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or getattr(config, "n_embd", None) or 0
    return int(heads), int(hidden)


def fusion_options(model_type: str, skip_layer_norm: bool, switches: dict[str, bool] | None = None) -> Any:
    """onnxruntime's FusionOptions for `model_type`, the raw 2-D attention mask kept, `switches` applied.

    A switch is a FusionOptions attribute (`enable_gelu`, ...); an unknown one is a ValueError naming the known.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(model_type)
    options.enable_skip_layer_norm = skip_layer_norm
    if model_type == "bert":
        options.use_raw_attention_mask(True)  # left padding stays correct
    known = sorted(k for k, v in vars(options).items() if k.startswith("enable_") and isinstance(v, bool))
    for name, value in (switches or {}).items():
        if name not in known:
            raise ValueError(f"unknown fusion option {name!r}; FusionOptions for {model_type} has {', '.join(known)}")
        setattr(options, name, value)
    return options


def fuse(src: Path, model_type: str, config: Any, options: Any, use_gpu: bool = False) -> Any:
    """The transformer optimizer's fusions on `src` (no onnxruntime graph optimization): its OnnxModel."""
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = heads_and_hidden(config)
    optimizer_log = logging.getLogger("onnxruntime.transformers")
    level = optimizer_log.level
    optimizer_log.setLevel(logging.ERROR)  # it narrates every fusion at INFO/WARNING
    try:
        # opt_level 0: only the Python fusions; onnxruntime's own graph optimizations run at load time.
        fused = optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden,
                               optimization_options=options, opt_level=0, use_gpu=use_gpu)
    finally:
        optimizer_log.setLevel(level)
    files.name_unnamed_nodes(fused.model)
    return fused


def fused_counts(fused: Any) -> dict[str, int]:
    """The fused operator counts the optimizer reports, without the zeros."""
    return {op: n for op, n in fused.get_fused_operator_statistics().items() if n}


def save_fused(fused: Any, dst_dir: Path) -> Path:
    """Write an optimizer OnnxModel as `dst_dir/model.onnx` (external data past 2 GB)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    # The optimizer's own save adds the com.microsoft opset import its fused operators need.
    fused.save_model_to_file(str(dst_dir / files.MODEL_FILE), use_external_data_format=fused.model.ByteSize() > files.PROTOBUF_LIMIT)
    return dst_dir / files.MODEL_FILE


def fuse_encoder(src: Path, dst_dir: Path, config: Any, log: Callable[[str], None],
                 skip_layer_norm: bool = False) -> dict[str, int] | None:
    """Write the fused graph of `src` as `dst_dir/model.onnx`; None when the model type or graph does not fuse.

    `skip_layer_norm`: fuse SkipLayerNormalization too (for CPUs where it is not slower: `isa.fuse_skip_layer_norm`).

    Returns the fused operator counts (e.g. {"Attention": 6, "EmbedLayerNormalization": 1, ...}).
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in BERT_FAMILY:
        log(f"no transformer fusions for model type {model_type!r}: the graph stays unfused")
        return None
    fused = fuse(src, "bert", config, fusion_options("bert", skip_layer_norm=skip_layer_norm))
    stats = fused_counts(fused)
    if not stats.get("Attention"):
        log(f"the transformer optimizer fused no attention in this graph ({stats or 'nothing'}): it stays unfused")
        return None
    save_fused(fused, dst_dir)
    return stats
