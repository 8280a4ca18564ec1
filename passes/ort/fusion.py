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
import os
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
    pruned = getattr(config, "pruned_heads", None)
    if pruned and heads and hidden:
        # A `prune` step's model: every layer kept the same heads count, so the attention is that many heads of
        # the same size (hidden is the attention's width). Uneven pruning: 0, the optimizer reads each layer's.
        counts = {len(v) for v in pruned.values()}
        layers = getattr(config, "num_hidden_layers", None)
        if len(counts) != 1 or len(pruned) != layers:
            return 0, 0
        head_size = int(hidden) // int(heads)
        heads = int(heads) - counts.pop()
        hidden = heads * head_size
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


def _optimizer_loggers() -> list[logging.Logger]:
    """The transformer optimizer's loggers: its package's, and its fusion modules' (they import each other as
    top-level modules, `fusion_attention`, and log under those names: a pruned model's attention, narrower than
    the hidden size, warns there on every layer although the fusion is right)."""
    import sys

    names = ["onnxruntime.transformers"]
    for name, module in list(sys.modules.items()):
        where = getattr(module, "__file__", None) or ""
        if "." not in name and f"onnxruntime{os.sep}transformers{os.sep}" in where:
            names.append(name)
    return [logging.getLogger(name) for name in names]


def fuse(src: Path, model_type: str, config: Any, options: Any, use_gpu: bool = False) -> Any:
    """The transformer optimizer's fusions on `src` (no onnxruntime graph optimization): its OnnxModel."""
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = heads_and_hidden(config)
    loggers = _optimizer_loggers()
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)  # it narrates every fusion at INFO/WARNING
    try:
        # opt_level 0: only the Python fusions; onnxruntime's own graph optimizations run at load time.
        fused = optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden,
                               optimization_options=options, opt_level=0, use_gpu=use_gpu)
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
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


def first_token_tail(fused: Any, log: Callable[[str], None]) -> dict[str, int]:
    """`prune_to_first_token` on an optimizer OnnxModel, logged: {"FirstTokenTail": 1} when it applied, else {}."""
    reason = prune_to_first_token(fused.model)
    if reason is None:
        log("the last layer's output projection and feed-forward run on the first token only (all the head reads)")
        return {"FirstTokenTail": 1}
    log(f"the last layer runs on every token: {reason}")
    return {}


def fuse_encoder(src: Path, dst_dir: Path, config: Any, log: Callable[[str], None],
                 skip_layer_norm: bool = False) -> dict[str, int] | None:
    """Write the fused graph of `src` as `dst_dir/model.onnx`; None when the model type or graph does not fuse.

    `skip_layer_norm`: fuse SkipLayerNormalization too (for CPUs where it is not slower: `isa.fuse_skip_layer_norm`).
    A classifier whose head reads the first token also gets `first_token_tail` (counted as `FirstTokenTail`).

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
    stats.update(first_token_tail(fused, log))
    save_fused(fused, dst_dir)
    return stats


#: Operators that work on each token by itself (no mixing along the sequence): the last layer's tail after
#: attention is made of these, so it can run on the first token alone.
PER_TOKEN_OPS = frozenset({"MatMul", "Add", "Sub", "Mul", "Div", "LayerNormalization", "SkipLayerNormalization",
                           "SimplifiedLayerNormalization", "BiasGelu", "Gelu", "FastGelu", "Erf", "Tanh", "Relu",
                           "Sigmoid", "Cast", "Identity"})


def prune_to_first_token(model: Any) -> str | None:
    """Run the last layer's tail (attention output, feed-forward, norms) on the first token only; None when done.

    A sequence classifier whose head reads token 0 (BERT's pooler, RoBERTa's head: `hidden[:, 0]`, exported
    as Gather(axis=1, index 0)) uses no other token's output of the last layer after its attention: the
    keys and values need every token, the rest does not. Slicing the attention output and its residual to
    the first token skips (tokens - 1) / tokens of the last layer's output projection and feed-forward:
    1/6 of MiniLM-L6's matrix work. The same idea as onnxruntime-genai's `prune_lm_head` for causal LMs;
    no optimizer of onnxruntime does it, hence this rewrite. Returns why it did not apply otherwise
    (the graph is then unchanged). Works on the optimizer's fused graph (one Attention node per layer).
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    if [o.name for o in graph.output] != ["logits"]:
        return "the graph has outputs besides logits"
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            constants[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[1] in constants
               and constants[n.input[1]].ndim == 0 and int(constants[n.input[1]]) == 0
               and any(a.name == "axis" and a.i == 1 for a in n.attribute)]
    attentions = [n for n in graph.node if n.op_type in ("Attention", "MultiHeadAttention")]
    if len(gathers) != 1 or not attentions:
        return "no single first-token read (Gather axis 1, index 0) after a fused attention"
    hidden, last = gathers[0].input[0], attentions[-1]
    layer_input, attention_out = last.input[0], last.output[0]
    # The tail: nodes between the last attention (and its residual input) and the hidden state the head reads.
    tail, stack = set(), [hidden]
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or id(node) in tail or name in (layer_input, attention_out) or name in constants:
            continue
        tail.add(id(node))
        stack += list(node.input)
    tail_nodes = [n for n in graph.node if id(n) in tail]
    for n in tail_nodes:
        if n.op_type not in PER_TOKEN_OPS:
            return f"the last layer's tail has a {n.op_type}, which mixes tokens"
        for name in n.input:
            inside = name in producer and id(producer[name]) in tail
            if name and not (inside or name in constants or name in (layer_input, attention_out)):
                return f"the last layer's tail reads {name}, from outside it"
        for out in n.output:
            if out != hidden and any(id(c) not in tail for c in consumers.get(out, [])):
                return f"{out} is read outside the last layer's tail"
    if not any(attention_out in n.input for n in tail_nodes) or not any(layer_input in n.input for n in tail_nodes):
        return "the last layer's tail does not start at its attention and residual"
    if any(c is not gathers[0] for c in consumers.get(hidden, [])):
        return "the last hidden state is read by more than the first-token read"
    starts, ends, axes = "first_token_starts", "first_token_ends", "first_token_axes"
    graph.initializer.extend([numpy_helper.from_array(np.array(v, dtype=np.int64), name)
                              for name, v in ((starts, [0]), (ends, [1]), (axes, [1]))])
    renamed = {}
    slices = []
    for name in (attention_out, layer_input):
        renamed[name] = f"{name}_first_token"
        slices.append(helper.make_node("Slice", [name, starts, ends, axes], [renamed[name]], name=f"FirstToken_{len(slices)}"))
    for n in tail_nodes:
        for k, name in enumerate(n.input):
            if name in renamed:
                n.input[k] = renamed[name]
    position = list(graph.node).index(last) + 1
    for s in reversed(slices):
        graph.node.insert(position, s)
    # Shapes recorded for the tail's tensors are [batch, sequence, hidden]: now [batch, 1, hidden]. Drop them.
    tail_outputs = {o for n in tail_nodes for o in n.output}
    kept = [v for v in graph.value_info if v.name not in tail_outputs]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return None
