"""Exact rewrites of MatMulNBits nodes (onnxruntime's block-quantized MatMul) after a model is built.

API (`genai_build.build_genai` calls it after building):

- `stage_symmetric_checkpoint(model_dir, scratch)` -> a folder or None: for an Olive checkpoint quantized
  symmetrically (`quant_method: olive`, `symmetric: true`; Olive's `Gptq`/`Rtn` with `sym: true`), which stores
  no zero points, a copy in `scratch` whose packed layers carry the default ones explicitly. The 0.14.1 genai
  builder fuses q/k/v into one MatMulNBits by concatenating their zero points and fails on a layer without
  them (`torch.cat` of None); with the defaults written it builds, and `drop_default_zero_points` takes them
  out of the graph again. None when the folder needs no staging.
- `drop_default_zero_points(model)` -> facts: removes the `zero_points` input of every MatMulNBits whose zero
  points all equal the op's default, 2^(bits-1) (8 for 4-bit, 128 for 8-bit). The weights then dequantize to
  exactly the same values, and onnxruntime runs its symmetric kernel, which skips the zero-point work: on AVX2
  without VNNI (MLAS's int8 path at accuracy level 4) symmetric int4 decoded 132 tokens/s where the same
  blocks with zero points ran 113 (SmolLM2-135M, `genai_build`'s table).

- `fuse_siblings(model)` -> facts: MatMulNBits nodes that read the same input with the same K, bits, block
  size and accuracy level (a Llama MLP's gate and up projections) become one MatMulNBits over the rows of both
  and a Split: the same numbers (each output row is computed from its own weights exactly as before), one
  kernel call instead of two. Decode on 2 threads is a chain of small calls, each paying for its dispatch;
  SmolLM2-135M int4 decoded 188 tokens/s fused against 180 unfused (interleaved, same process, Zen 3 AVX2).
  The genai builder fuses q/k/v this way itself but not gate/up; onnxruntime 1.32's MatMulNBitsMlpFusion
  does, for its WebGPU provider only.

Why by hand: a symmetric GPTQ checkpoint (Olive's `Gptq` with `sym: true`) still stores its zero points (all 8),
and the genai builder copies them into the graph as they are; no onnxruntime or Olive pass removes an input
that equals the op's default.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from passes.base import PassError

#: MatMulNBits' inputs: A, B, scales, zero_points, g_idx, bias (onnxruntime contrib op schema).
_ZERO_POINTS = 3


def _attr(node: Any, name: str, default: int) -> int:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _is_default(array: Any, bits: int, n: int, blocks: int) -> bool:
    """Whether packed uint8 zero points (`n` rows of `blocks`) all equal 2^(bits-1)."""
    import numpy as np

    if array.dtype != np.uint8 or bits not in (4, 8):
        return False  # float zero points (an onnxruntime variant) and 2/3-bit packings: not ours to judge
    if bits == 8:
        return array.size == n * blocks and bool((array == 0x80).all())
    rows = array.reshape(n, -1) if array.size % n == 0 else None
    if rows is None or rows.shape[1] != (blocks + 1) // 2:
        return False
    low, high = rows & 0x0F, rows >> 4  # two blocks per byte, the first in the low nibble
    if blocks % 2:  # an odd count: the last byte's high nibble is padding
        high = high[:, :-1]
    return bool((low == 8).all() and (high == 8).all())


def _tables(graph: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """(initializers by name, how many node inputs read each name) of `graph`."""
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    return {i.name: i for i in graph.initializer}, readers


def drop_default_zero_points(model: Any) -> dict[str, Any]:
    """Remove MatMulNBits zero points equal to the default (module doc); {"nodes": n, "freed_bytes": b}."""
    from onnx import numpy_helper

    graph = model.graph
    inits, readers = _tables(graph)
    dropped, freed = 0, 0
    for node in graph.node:
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft" or len(node.input) <= _ZERO_POINTS:
            continue
        name = node.input[_ZERO_POINTS]
        if not name or name not in inits:
            continue
        bits, n, k, block = (_attr(node, a, d) for a, d in (("bits", 4), ("N", 0), ("K", 0), ("block_size", 0)))
        if not n or not block or not _is_default(numpy_helper.to_array(inits[name]), bits, n, -(-k // block)):
            continue
        if len(node.input) == _ZERO_POINTS + 1:
            del node.input[_ZERO_POINTS]
        else:
            node.input[_ZERO_POINTS] = ""  # g_idx or bias follow: keep the position, as optional inputs do
        dropped += 1
        readers[name] -= 1
        if readers[name] == 0:
            freed += len(inits[name].raw_data)
            graph.initializer.remove(inits[name])
    return {"nodes": dropped, "freed_bytes": freed}


# --- the checkpoint side ------------------------------------------------------------------------------------


def stage_symmetric_checkpoint(model_dir: Path, scratch: Path) -> Path | None:
    """A copy of a symmetric Olive checkpoint with explicit default zero points (module doc), or None."""
    import torch
    from safetensors.torch import load_file, save_file

    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    quant = config.get("quantization_config") or {}
    if quant.get("quant_method") != "olive" or not quant.get("symmetric"):
        return None
    overrides = quant.get("overrides") or {}
    group = lambda module: int(overrides.get(module, {}).get("group_size", quant.get("group_size") or 0))
    shards = sorted(model_dir.glob("*.safetensors"))
    staged = Path(scratch) / "symmetric-checkpoint"
    staged.mkdir(parents=True)
    added: dict[str, str] = {}
    for shard in shards:
        tensors = load_file(str(shard))
        for name in [n for n in tensors if n.endswith(".qweight")]:
            module = name[: -len(".qweight")]
            if f"{module}.qzeros" in tensors or f"{module}.scales" not in tensors:
                continue
            qweight, scales = tensors[name], tensors[f"{module}.scales"]
            out, groups = scales.shape[0], scales.shape[-1]
            size = group(module)
            if not size or (qweight.shape[1] * 8) % (groups * size):
                raise PassError(f"{module}: packed shape {tuple(qweight.shape)} does not match {groups} groups of {size}")
            bits = qweight.shape[1] * 8 // (groups * size)
            if bits == 4:  # two zero points per byte, an odd count padded
                tensors[f"{module}.qzeros"] = torch.full((out, (groups + 1) // 2), 0x88, dtype=torch.uint8)
            elif bits == 8:
                tensors[f"{module}.qzeros"] = torch.full((out, groups), 0x80, dtype=torch.uint8)
            else:
                raise PassError(f"{module}: {bits}-bit layers have no default zero points here (4 and 8 do)")
            added[f"{module}.qzeros"] = shard.name
        if added:
            save_file(tensors, str(staged / shard.name), metadata={"format": "pt"})
        else:
            os.symlink(shard.resolve(), staged / shard.name)
    if not added:
        shutil.rmtree(staged)
        return None
    for item in model_dir.iterdir():
        if item.is_file() and item.suffix != ".safetensors" and item.name != "model.safetensors.index.json":
            os.symlink(item.resolve(), staged / item.name)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data.setdefault("weight_map", {}).update(added)
        (staged / index.name).write_text(json.dumps(data, indent=2))
    return staged


# --- sibling fusion ------------------------------------------------------------------------------------------

#: Attributes siblings must share to be one MatMulNBits.
_SHARED_ATTRS = ("K", "bits", "block_size", "accuracy_level")


def fuse_siblings(model: Any) -> dict[str, Any]:
    """Fuse MatMulNBits nodes reading the same input into one plus a Split (module doc); {"groups", "nodes"}."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits, readers = _tables(graph)
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for node in graph.node:
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft" or len(node.input) not in (3, 4):
            continue  # g_idx or bias: not fused (none of the builder's int4 layers has them)
        if not all(name in inits and readers[name] == 1 for name in node.input[1:]):
            continue  # weights another node reads too (a tied embedding) stay where they are
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if "N" not in attrs or any(k not in attrs for k in _SHARED_ATTRS[:3]):
            continue
        key = (node.input[0], len(node.input), *(attrs.get(k) for k in _SHARED_ATTRS))
        groups.setdefault(key, []).append((node, attrs))
    fused_groups = fused_nodes = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        nodes = [n for n, _ in members]
        first, attrs = members[0]
        name = f"{first.name}/FusedSiblings"
        parts = []
        for slot in range(1, len(first.input)):  # weights, scales, zero points: rows of every member in order
            tables = [numpy_helper.to_array(inits[n.input[slot]]) for n in nodes]
            table = numpy_helper.from_array(np.concatenate(tables, axis=0), f"{name}.input_{slot}")
            graph.initializer.append(table)
            parts.append(table.name)
        sizes = [a["N"] for _, a in members]
        split_name = f"{name}.split"
        graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), split_name))
        out = f"{name}/output_0"
        fused = helper.make_node("MatMulNBits", [first.input[0], *parts], [out], name=name, domain="com.microsoft",
                                 **{**attrs, "N": sum(sizes)})
        split = helper.make_node("Split", [out, split_name], [n.output[0] for n in nodes], name=f"{name}/Split", axis=-1)
        at = min(list(graph.node).index(n) for n in nodes)
        for node in nodes:
            graph.node.remove(node)
            for weight in node.input[1:]:
                graph.initializer.remove(inits[weight])
        graph.node.insert(at, fused)
        graph.node.insert(at + 1, split)
        fused_groups += 1
        fused_nodes += len(nodes)
    return {"groups": fused_groups, "nodes": fused_nodes}
