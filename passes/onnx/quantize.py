"""`quantize`: an ONNX model to int8 (dynamic or static QDQ), int4 weight-only, or fp16.

Without a `method` the step's target decides (`passes.onnx.quant_plan.plan_quantization`): the model's family (encoder or
causal LM, from the ONNX folder: `passes.ort.files.model_family`) and the target's device pick dynamic int8,
int4, fp16 or static QDQ (for NPUs: every quantizable op, uint16 activations for QNN); the choice is
logged and returned as `choices`.

Every method uses onnxruntime's own tools: `quantize_dynamic`, `quantize_static` with a
`CalibrationDataReader` over the calibration split (passes/onnx/calibration.py), `MatMulNBitsQuantizer`,
and `onnxruntime.transformers.float16.convert_float_to_float16` (the converter onnxconverter-common
ships, without that extra package). The output folder has the layout `export_onnx` writes: the
tokenizer, config.json and inference.py are copied from the input. Afterwards the pass runs the new
model next to the input on sample sentences: it must load and run, and the summary says how far the
outputs moved and whether the predicted labels stayed the same.

Choices, measured on MiniLM-L6 (batch 1, sequence 64, CPU time of one thread, PyTorch fp32 = 1x):
dynamic int8 with QInt8 per-channel weights 4.0x. At 2 threads the many small unfused attention ops
cost more: there dynamic int8 first fuses the graph with onnxruntime's transformer optimizer
(passes/ort/fusion.py, SkipLayerNorm left unfused) so attention becomes QAttention, ~1.2x faster than
the unfused int8 graph. `quant_pre_process` gained nothing measurable (its symbolic shape inference
fails on these graphs, and onnxruntime folds the same constants at load time), so it is not run. Static QDQ with uint8 activations 3.5x on
MatMul/Gemm/Gather (3.1x when every op type is quantized; int8 activations 0.9x). int4 1.8x with
`accuracy_level` 4 (1.45x without). fp16 1.5x (a GPU format; the CPU casts around many ops).
"""

from __future__ import annotations

import contextlib
import difflib
import io
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from schemas.steps import QuantizeConfig

from passes.onnx.quant_plan import plan_quantization
from passes.ort import files
from passes.ort.checks import compare_outputs
from passes.ort import isa
from passes.ort.fusion import fuse_encoder
from passes.base import Artifact, MemoryUse, Pass, PassError, StepContext
from passes.hf.folders import read_config
from passes.registry import register_pass

#: onnxruntime's fused transformer operators (an optimized graph): their weights are only int8-quantized
#: by dynamic_int8 (QAttention, QEmbedLayerNormalization).
FUSED_OP_TYPES = frozenset({"Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization"})
#: How far a fused graph's outputs may move from the unfused graph's before the fusion is refused.
FUSION_ATOL = 1e-4
#: Initializer element types that count as quantized (or, for fp16, converted) weights.
_LOW_PRECISION = {"INT8", "UINT8", "INT4", "UINT4", "FLOAT16"}


@register_pass
class Quantize(Pass[QuantizeConfig]):
    """Quantize an `onnx_model` with onnxruntime; the output is an `onnx_model` with the same layout.

    meta: task, labels, inputs, outputs, opset (from the input), method, size_mb, size_ratio (output /
    input model bytes), quant_ops (quantized op types and their counts), weights_quantized (weight
    tensors now in low precision), nodes_excluded, fused (the fused operator counts when dynamic_int8
    fused the graph first, else None), max_abs_diff_vs_input and same_label_vs_input (on sample sentences).
    """

    config_class = QuantizeConfig
    version = 2  # 2: dynamic_int8's fused classifier runs its last layer's tail on the first token only
    packages = ("onnxruntime", "onnx", "transformers", "tokenizers", "datasets", "numpy", "torch")  # torch: HQQ
    #: Measured (benchmarks/jobs_sweep.py, MiniLM's 91 MB export, 1 thread): peaks of 1001 MB (dynamic_int8), 963
    #: (static_int8, with 128 calibration rows), 740 (fp16), 738 (int4): onnx and onnxruntime (about 400 MB),
    #: the model loaded, its quantized copy and the output check.
    memory = MemoryUse(factor=6.5, base_mb=400)

    def run(self, inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        cfg = self.config
        source: Artifact = inputs["model"]
        src_model = files.model_file(source, "quantize takes an export_onnx step")
        family = files.model_family(source.path, source.meta)
        plan = plan_quantization(cfg, ctx.target, causal_lm=family == "causal_lm")
        method = plan.method
        # The CPU built for decides the SkipLayerNorm fusion (passes/ort/isa.py). Integer ops run on the CPU
        # provider on any target; without a cpu target the CPU is unknown: unfused, as for x86.
        built_for = isa.resolve(ctx.target.isa) if ctx.target.device == "cpu" else None
        skip_layer_norm = built_for is not None and isa.fuse_skip_layer_norm(built_for)
        ctx.log(f"{method}{f' ({plan.activation_type} activations, {plan.profile} op set)' if plan.profile else ''}: "
                f"{plan.reason}")
        dst_model = ctx.out_dir / files.MODEL_FILE
        excluded = _nodes_to_exclude(src_model, cfg.exclude_nodes, cfg.exclude_op_types)
        fused_ops = files.op_counts(src_model).keys() & FUSED_OP_TYPES
        if fused_ops and method in ("static_int8", "int4"):
            ctx.log(f"{method} leaves the weights inside {', '.join(sorted(fused_ops))} in float: "
                    "quantize the unfused export for a smaller, faster model")

        scratch = ctx.out_dir / ".fused"
        fused = None
        try:
            graph = src_model
            # With `op_types` set the user picks the ops: fuse only when they name the fused ones.
            if method == "dynamic_int8" and fused_ops:
                ctx.log(f"the input is already fused ({', '.join(sorted(fused_ops))}): quantizing it as it is")
            elif method == "dynamic_int8" and cfg.fuse and (cfg.op_types is None or FUSED_OP_TYPES & set(cfg.op_types)):
                graph, fused = _fuse_for_int8(source, scratch, cfg.exclude_nodes, skip_layer_norm, ctx)
                excluded = _nodes_to_exclude(graph, cfg.exclude_nodes, cfg.exclude_op_types)
            if excluded:
                ctx.log(f"leaving {len(excluded)} node(s) unquantized")
            external = files.has_external_data(graph.parent)
            with files.quiet_quantizer():
                if method == "dynamic_int8":
                    _dynamic_int8(cfg, graph, dst_model, excluded, external)
                elif method == "static_int8":
                    from passes.onnx.calibration import static_int8

                    static_int8(cfg, plan, graph, dst_model, excluded, external, inputs["data"], ctx)
                elif method == "int4":
                    _int4(cfg, graph, dst_model, excluded, ctx)
                else:
                    _fp16(cfg, graph, dst_model, excluded, external)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        files.copy_companions(source.path, ctx.out_dir)

        size_in, size_out = files.model_size_bytes(source.path), files.model_size_bytes(ctx.out_dir)
        counts = files.op_counts(dst_model)
        quant_ops = {op: counts[op] for op in files.QUANT_OP_TYPES if counts[op]}
        weights = _low_precision_weights(dst_model) - _low_precision_weights(src_model)
        if weights <= 0 and not quant_ops:
            raise PassError(
                f"{method} changed nothing in the model: no weight was quantized; check `op_types` "
                f"(the graph has {', '.join(sorted(files.op_counts(src_model)))}) and the exclusions"
            )
        check = compare_outputs(source.path, src_model, dst_model, source.meta.get("outputs"))
        ratio = size_out / size_in if size_in else 1.0
        ops_text = ", ".join(f"{n} {op}" for op, n in quant_ops.items()) or f"{weights} fp16 weights"
        agree = f", same label on {check['same_label']} samples" if check["same_label"] else ""
        return {
            "task": source.meta.get("task"),
            "labels": source.meta.get("labels"),
            "inputs": source.meta.get("inputs"),
            "outputs": source.meta.get("outputs"),
            "opset": source.meta.get("opset"),
            "method": method,
            "family": family,
            "choices": {**plan.as_dict(), "isa": built_for, "skip_layer_norm": skip_layer_norm if fused else None},
            "execution": check["execution"],
            "size_mb": files.mb(size_out),
            "size_ratio": round(ratio, 4),
            "quant_ops": quant_ops,
            "weights_quantized": weights,
            "nodes_excluded": len(excluded),
            "fused": fused,
            "max_abs_diff_vs_input": check["max_abs_diff"],
            "same_label_vs_input": check["same_label"],
            "summary": f"{method}{' (attention fused)' if fused else ''}: {files.mb(size_out):.1f} MB ({ratio:.0%} of the input); {ops_text}; "
            f"max |diff| vs input {check['max_abs_diff']:.3g}{agree}",
            "metrics": {"size_mb": files.mb(size_out), "size_ratio": round(ratio, 4), "max_abs_diff_vs_input": check["max_abs_diff"]},
        }


def _fuse_for_int8(source: Artifact, scratch: Path, exclude_nodes: list[str], skip_layer_norm: bool, ctx: StepContext
                   ) -> tuple[Path, dict[str, int] | None]:
    """The graph to quantize: the input fused with onnxruntime's transformer optimizer when that is safe.

    Fused attention quantizes into QAttention: on MiniLM (batch 1, sequence 64, 2 threads) the fused
    int8 graph ran ~1.2x faster than the unfused one (~4.2x against ~3.5x PyTorch fp32). The fusion is
    dropped when it replaces a node named in `exclude_nodes` or moves the outputs by more than 1e-4.
    """
    src = source.path / files.MODEL_FILE
    config = read_config(source.path)
    if not config:
        ctx.log("no config.json next to the model: quantizing the unfused graph")
        return src, None
    stats = fuse_encoder(src, scratch, SimpleNamespace(**config), ctx.log, skip_layer_norm=skip_layer_norm)
    if not stats:
        return src, None
    fused = scratch / files.MODEL_FILE
    if exclude_nodes:
        import onnx

        names = {n.name for n in onnx.load(str(fused), load_external_data=False).graph.node}
        replaced = [n for n in exclude_nodes if n not in names]
        if replaced:
            ctx.log(f"the fusion replaces {', '.join(replaced[:3])} (in exclude_nodes): quantizing the unfused graph")
            return src, None
    try:
        check = compare_outputs(source.path, src, fused, source.meta.get("outputs"), "the fused graph")
    except PassError as exc:  # the fusion is an optimization: when its graph is broken, quantize the input
        ctx.log(f"{exc}: quantizing the unfused graph")
        return src, None
    if not check["max_abs_diff"] <= FUSION_ATOL:
        ctx.log(f"the fused graph's outputs differ from the input's by {check['max_abs_diff']:.3g}: "
                "quantizing the unfused graph")
        return src, None
    ctx.log("fused " + ", ".join(f"{n} {op}" for op, n in stats.items()) + " before quantizing")
    return fused, stats


def _nodes_to_exclude(model_path: Path, names: list[str], op_types: list[str]) -> list[str]:
    """The named nodes plus every node of the excluded op types; unknown names are an error."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    all_names = [n.name for n in graph.node]
    known = set(all_names)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, all_names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise PassError(f"exclude_nodes: the graph has no node named {name!r}{hint}")
    chosen = list(dict.fromkeys(names))
    chosen += [n.name for n in graph.node if n.op_type in set(op_types) and n.name and n.name not in chosen]
    return chosen


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "qint8" else QuantType.QUInt8


def _dynamic_int8(cfg: QuantizeConfig, src: Path, dst: Path, excluded: list[str], external: bool) -> None:
    """int8 weights, activations quantized at run time (MatMulInteger + DynamicQuantizeLinear)."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(
        src, dst, op_types_to_quantize=cfg.op_types, per_channel=cfg.per_channel, weight_type=_quant_type(cfg.weight_type),
        nodes_to_exclude=excluded, use_external_data_format=external,
        # Fused contrib ops (Attention, ...) from an optimized graph have no ONNX shape inference: say float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _int4(cfg: QuantizeConfig, src: Path, dst: Path, excluded: list[str], ctx: StepContext) -> None:
    """Weight-only 4-bit blocks (MatMulNBits) with round-to-nearest or HQQ, int8 compute on the CPU."""
    import onnx
    from onnx import helper

    nbits = files.import_nbits_quantizer()
    op_types = tuple(cfg.op_types) if cfg.op_types else None
    if cfg.algorithm == "hqq":
        if cfg.symmetric:
            ctx.log("hqq quantizes with zero points (asymmetric): `symmetric` does not apply to it")
        algo = nbits.HQQWeightOnlyQuantConfig(block_size=cfg.block_size, bits=4, op_types_to_quantize=op_types)
    else:
        if op_types and set(op_types) - {"MatMul"}:
            ctx.log("rtn quantizes MatMul weights only; use `algorithm: hqq` for other op types")
        algo = nbits.RTNWeightOnlyQuantConfig(op_types_to_quantize=op_types)
    quantizer = nbits.MatMulNBitsQuantizer(
        onnx.load(str(src)), bits=4, block_size=cfg.block_size, is_symmetric=cfg.symmetric,
        accuracy_level=cfg.accuracy_level, nodes_to_exclude=excluded, op_types_to_quantize=op_types, algo_config=algo,
    )
    try:
        # The RTN code prints its own progress bar on stdout (the runner owns the console): drop it.
        with contextlib.redirect_stdout(io.StringIO()):
            quantizer.process()
    except Exception as exc:  # neural-compressor's RTN raises bare errors on shapes it does not handle
        raise PassError(
            f"int4 ({cfg.algorithm}, block {cfg.block_size}) failed: {type(exc).__name__}: {exc}; "
            "try `algorithm: hqq` or a smaller `block_size`"
        ) from exc
    model = quantizer.model.model
    for node in model.graph.node:  # the HQQ quantizer does not write accuracy_level itself
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(helper.make_attribute("accuracy_level", cfg.accuracy_level))
    files.save_model(model, dst.parent)


def _fp16(cfg: QuantizeConfig, src: Path, dst: Path, excluded: list[str], external: bool) -> None:
    """float16 weights and activations; the graph's inputs and outputs keep their types."""
    import onnx

    proto = onnx.load(str(src))
    blocked = set(cfg.exclude_op_types)
    if cfg.op_types:  # "only these": every other op type of the graph stays in float32
        blocked |= {n.op_type for n in proto.graph.node} - set(cfg.op_types)
    files.save_model(files.to_fp16(proto, sorted(blocked), excluded, external), dst.parent)


def _low_precision_weights(model_path: Path) -> int:
    """How many weight tensors (2-D or more: not scales or zero points) hold int8/uint8/int4/uint4/float16 data."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return sum(len(t.dims) >= 2 and onnx.TensorProto.DataType.Name(t.data_type) in _LOW_PRECISION for t in graph.initializer)
