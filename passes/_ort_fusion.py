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

from . import _onnx_utils as ou

#: Model types whose graphs the optimizer's BERT fusions recognise.
BERT_FAMILY = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "ernie"})


def fuse_encoder(src: Path, dst_dir: Path, config: Any, log: Callable[[str], None]) -> dict[str, int] | None:
    """Write the fused graph of `src` as `dst_dir/model.onnx`; None when the model type or graph does not fuse.

    Returns the fused operator counts (e.g. {"Attention": 6, "EmbedLayerNormalization": 1, ...}).
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in BERT_FAMILY:
        log(f"no transformer fusions for model type {model_type!r}: the graph stays unfused")
        return None
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    options.use_raw_attention_mask(True)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or 0
    optimizer_log = logging.getLogger("onnxruntime.transformers")
    level = optimizer_log.level
    optimizer_log.setLevel(logging.ERROR)  # it narrates every fusion at INFO/WARNING
    try:
        # opt_level 0: only the Python fusions; onnxruntime's own graph optimizations run at load time.
        fused = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden,
                               optimization_options=options, opt_level=0)
    finally:
        optimizer_log.setLevel(level)
    stats = {op: n for op, n in fused.get_fused_operator_statistics().items() if n}
    if not stats.get("Attention"):
        log(f"the transformer optimizer fused no attention in this graph ({stats or 'nothing'}): it stays unfused")
        return None
    ou.name_unnamed_nodes(fused.model)
    dst_dir.mkdir(parents=True, exist_ok=True)
    # The optimizer's own save adds the com.microsoft opset import its fused operators need.
    fused.save_model_to_file(str(dst_dir / ou.MODEL_FILE), use_external_data_format=fused.model.ByteSize() > ou.PROTOBUF_LIMIT)
    return stats
