"""ONNX model files shared by the ONNX passes: the artifact folder layout, sizes, op counts, saving.

An `onnx_model` artifact folder holds `model.onnx` (+ `model.onnx.data` when the model is larger than
protobuf's 2 GB limit), the tokenizer files, `config.json` and `inference.py`. Sessions on these files
are built in `passes.ort.sessions`. Heavy imports (onnx, onnxruntime) happen inside the functions.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from passes.base import PassError
from passes.hf.folders import read_config

MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
INFERENCE_SCRIPT = "inference.py"
#: Protobuf cannot serialize a message over 2 GB: larger models keep their weights in external data.
PROTOBUF_LIMIT = 2**31 - 1
#: Operator types that quantized graphs are made of (what `quantize` counts in its summary).
QUANT_OP_TYPES = (
    "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    "QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearConv", "QAttention", "QGemm",
    "QEmbedLayerNormalization", "MatMulNBits", "GatherBlockQuantized",
)


def to_fp16(proto: Any, op_block_list: list[str] | tuple[str, ...] = (), node_block_list: list[str] | None = None,
            external: bool = False) -> Any:
    """`proto` in float16 with onnxruntime's converter; inputs and outputs keep their types.

    The operators in onnxruntime's DEFAULT_OP_BLOCK_LIST (no float16 kernel, or float16 results that
    overflow) and `op_block_list` stay float32, with casts around them.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(op_block_list))
    return convert_float_to_float16(
        proto, keep_io_types=True, op_block_list=blocked, node_block_list=node_block_list or None,
        disable_shape_infer=external,  # onnx shape inference cannot take a model over 2 GB
    )


def model_files(folder: Path) -> list[Path]:
    """`model.onnx` and every external data file it references."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    path = folder / MODEL_FILE
    proto = onnx.load(str(path), load_external_data=False)
    files = {path}
    for tensor in _all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files.add(folder / ExternalDataInfo(tensor).location)
    return sorted(files)


def _graphs(graph: Any) -> Any:
    """`graph` and every subgraph under it (If / Loop / Scan bodies), depth first."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _all_tensors(proto: Any) -> list[Any]:
    """Every tensor of a model: initializers and tensor attributes, in subgraphs too."""
    import onnx

    found: list[Any] = []
    for graph in _graphs(proto.graph):
        found.extend(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    found.append(attr.t)
                found.extend(attr.tensors)
    return found


def model_size_bytes(folder: Path) -> int:
    """Bytes on disk of the model: `model.onnx` plus its external data."""
    return sum(p.stat().st_size for p in model_files(folder))


def has_external_data(folder: Path) -> bool:
    """True when `model.onnx` keeps (some of) its weights in other files."""
    return len(model_files(folder)) > 1


def save_model(proto: Any, folder: Path) -> Path:
    """Write `proto` (weights loaded) as `folder/model.onnx`, with one external data file only when over 2 GB."""
    import onnx

    path = folder / MODEL_FILE
    if proto.ByteSize() > PROTOBUF_LIMIT:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=EXTERNAL_DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    return path


def name_unnamed_nodes(proto: Any) -> int:
    """Give every nameless node of the main graph a unique name; returns how many were named.

    Tools key nodes by name: `nodes_to_exclude` needs names, and the int4 RTN quantizer's topological
    sort drops all but one of several nodes named "" (the transformer optimizer adds nameless Casts).
    """
    taken = {n.name for n in proto.graph.node if n.name}
    named = 0
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{i}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)
            named += 1
    return named


def op_counts(model_path: Path) -> Counter:
    """How many nodes of each op type the graph has (subgraphs included), read without the weights."""
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    return Counter(node.op_type for graph in _graphs(proto.graph) for node in graph.node)


def copy_companions(src: Path, dst: Path) -> list[str]:
    """Copy everything of an onnx_model folder except the model itself (tokenizer, config, inference.py)."""
    skip = {p.name for p in model_files(src)}
    copied = []
    for item in sorted(src.iterdir()):
        if item.name in skip or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)
        copied.append(item.name)
    return copied


def write_inference_script(dst: Path) -> Path:
    """Copy the standalone `inference.py` template (onnxruntime + tokenizers only) into `dst`."""
    from importlib.resources import files

    target = dst / INFERENCE_SCRIPT
    target.write_text(files("passes").joinpath("templates", INFERENCE_SCRIPT).read_text(encoding="utf-8"), encoding="utf-8")
    return target


def graph_inputs(model_path: Path) -> list[tuple[str, str]]:
    """(name, ONNX type string) of a model file's inputs, read without its weights."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return [
        (i.name, f"tensor({onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name})")
        for i in graph.input if i.name not in initializers
    ]


#: Root-logger notes of the static quantizer about a transformer graph that change nothing a user can act on:
#: LayerNorm parameters that are not per-channel, biases computed in the graph, the opset raised for 16-bit QDQ.
_QUANTIZER_NOTES = ("Axis ", "Expected bias", "Bias of Gemm node", "The original model opset version")


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of `prefixes` (`notes`: only from onnxruntime's quantizer)."""

    def __init__(self, prefixes: tuple[str, ...], notes: tuple[str, ...] = ()):
        super().__init__()
        self.prefixes, self.notes = prefixes, notes

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.prefixes):
            return False
        return not (message.startswith(self.notes) and "onnxruntime" in record.pathname)


@contextmanager
def quiet_quantizer() -> Iterator[None]:
    """Silence onnxruntime.quantization's per-node INFO lines and its generic pre-processing advice.

    The advice ("Please consider [to run] pre-processing before quantization") is logged on the root
    logger for every model; `quantize` measured it and decides itself (see passes/quantize.py).
    """
    names = ("onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    advice = _DropMessages(("Please consider",), _QUANTIZER_NOTES)
    root = logging.getLogger()
    root.addFilter(advice)
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeFilter(advice)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def import_nbits_quantizer() -> Any:
    """Import onnxruntime's `matmul_nbits_quantizer` without keeping its `logging.basicConfig(level=INFO)`.

    The module configures the root logger when imported, which would print every library's INFO lines
    for the rest of the run: the root logger's handlers and level are put back as they were.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return matmul_nbits_quantizer


def mb(n_bytes: int) -> float:
    """Bytes as megabytes (10^6), rounded for meta and summaries."""
    return round(n_bytes / 1e6, 2)


#: Input-name prefixes of a decoder graph's KV cache (optimum: past_key_values.N.key; genai: past_key_values.N.key too;
#: older exports: past.N).
CACHE_INPUT_PREFIXES = ("past_key_values", "past.", "past_key", "cache.")


def model_file(source: Any, takes: str) -> Path:
    """The `model.onnx` of an onnx_model artifact; a PassError naming the step and what the pass takes otherwise."""
    path = Path(source.path) / MODEL_FILE
    if not path.is_file():
        raise PassError(f"step {source.step!r} has no {MODEL_FILE} in {source.path}; {takes}")
    return path


def model_family(folder: Path, meta: dict | None = None) -> str:
    """`causal_lm` or `encoder`: what target-aware passes choose by, read from the ONNX model and its config.

    A causal LM is recognised by the step's task, a `genai_config.json`, a `...ForCausalLM`/`LMHeadModel`
    architecture in config.json, or KV-cache inputs in the graph; everything else is an encoder.
    """
    if (meta or {}).get("task") in ("causal-lm", "text-generation"):
        return "causal_lm"
    if (folder / "genai_config.json").is_file():
        return "causal_lm"
    if any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in read_config(folder).get("architectures") or []):
        return "causal_lm"
    model = folder / MODEL_FILE
    if model.is_file() and any(name.startswith(CACHE_INPUT_PREFIXES) for name, _ in graph_inputs(model)):
        return "causal_lm"
    return "encoder"
