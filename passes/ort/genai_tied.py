"""One 8-bit table for a tied embedding and lm_head in a genai int4 folder.

API (`genai_build.build_genai` calls it after building):

- `share_tied_embedding(genai_dir, log)` -> facts or None: when lm_head is an asymmetric 8-bit MatMulNBits
  (a calibrated GPTQ lm_head, or `int8_nodes`) and the embedding a 4-bit GatherBlockQuantized of the same
  matrix (the model ties them, as SmolLM2 does), the embedding becomes an 8-bit GatherBlockQuantized reading
  lm_head's own weights, scales and zero points: the embedding gets 8-bit precision and its 4-bit copy
  (16-18 MB for SmolLM2) leaves the folder.
- `save_in_place(model, genai_dir)`: write an edited model.onnx + model.onnx.data over the folder's.

Why by hand: the 0.14.1 builder shares the table only for its own round-to-nearest presets (its
`shared_embeddings`, which refuses packed GPTQ weights and lm_heads quantized afterwards); the rewrite is
the graph the builder writes for those presets (a Reshape of lm_head's weights into a GatherBlockQuantized
with bits=8). Whether the two are one matrix is checked on the weights, not assumed from the config (a GPTQ
checkpoint unties them in its config).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Largest relative (Frobenius) difference between the dequantized 4-bit embedding and 8-bit lm_head for them
#: to count as one matrix: int4 rounding leaves ~0.1 on SmolLM2; two unrelated matrices differ by ~1.4.
TIED_TOLERANCE = 0.3
_PREFIX = "/model/embed_tokens/"


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dequantized_embedding(node: Any, arrays: Callable[[str], Any], block: int) -> Any:
    """The float table of a 4-bit GatherBlockQuantized (int4/uint4 data as onnx unpacks them)."""
    import numpy as np

    q = arrays(node.input[0]).astype(np.float32)
    rows, cols = q.shape
    scales = arrays(node.input[2]).reshape(rows, -1).astype(np.float32)
    if len(node.input) > 3 and node.input[3]:
        zero = arrays(node.input[3]).reshape(rows, -1).astype(np.float32)
    else:  # the op's defaults: 8 for uint4, 0 for int4
        zero = np.full_like(scales, 8.0 if arrays(node.input[0]).dtype == np.uint8 else 0.0)
    return ((q.reshape(rows, -1, block) - zero[..., None]) * scales[..., None]).reshape(rows, cols)


def share_tied_embedding(genai_dir: Path, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Make a tied 4-bit embedding read the 8-bit lm_head's tables (see the module doc); facts, or None."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(Path(genai_dir) / "model.onnx"))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    arrays = lambda name: numpy_helper.to_array(inits[name])
    gather = next((n for n in graph.node if n.op_type == "GatherBlockQuantized" and n.name.startswith(_PREFIX)), None)
    head = next((n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/")), None)
    if gather is None or head is None:
        return None
    h, g = _attrs(head), _attrs(gather)
    inputs = list(head.input) + [""] * 6
    asym_plain = bool(inputs[3]) and not any(inputs[4:])  # zero points, no g_idx or bias
    if h["bits"] != 8 or g.get("bits", 4) != 4 or not asym_plain or h["K"] % h["block_size"]:
        return None
    if not all(name in inits for name in (*head.input[1:4], gather.input[0], gather.input[2])):
        return None
    n, k, block = h["N"], h["K"], h["block_size"]
    blocks = k // block
    scales = arrays(head.input[2]).reshape(n, blocks).astype(np.float32)
    zero = arrays(head.input[3]).reshape(n, blocks).astype(np.float32)
    head_w = ((arrays(head.input[1]).reshape(n, blocks, block).astype(np.float32) - zero[..., None])
              * scales[..., None]).reshape(n, k)
    embedding = _dequantized_embedding(gather, arrays, g["block_size"])
    if embedding.shape != head_w.shape:
        return None
    rel = float(np.linalg.norm(embedding - head_w) / np.linalg.norm(head_w))
    if rel > TIED_TOLERANCE:
        log(f"embedding and lm_head differ (relative {rel:.2f}): not tied, the embedding keeps its own int4 table")
        return None
    old = [name for name in gather.input if name in inits]
    shapes = {"weight": [n, k], "scales": [n, blocks], "zero_points": [n, blocks]}
    reshapes, outputs = [], []
    for (part, shape), source in zip(shapes.items(), head.input[1:4]):
        const = f"{_PREFIX}shared/{part}_shape"
        graph.initializer.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), const))
        out = f"{_PREFIX}shared/Reshape_{part}/output_0"
        reshapes.append(helper.make_node("Reshape", [source, const], [out], name=f"{_PREFIX}shared/Reshape_{part}"))
        outputs.append(out)
    shared = helper.make_node("GatherBlockQuantized", [outputs[0], gather.input[1], *outputs[1:]], list(gather.output),
                              name=f"{_PREFIX}GatherBlockQuantized_Q8", domain="com.microsoft", bits=8,
                              block_size=block, gather_axis=0, quantize_axis=1)
    at = list(graph.node).index(gather)
    graph.node.remove(gather)
    for i, node in enumerate([*reshapes, shared]):
        graph.node.insert(at + i, node)
    still_used = {name for node in graph.node for name in node.input}
    freed = 0
    for name in old:
        if name not in still_used:
            freed += len(inits[name].raw_data) or 0
            graph.initializer.remove(inits[name])
    save_in_place(model, Path(genai_dir))
    log(f"embedding tied to the 8-bit lm_head (relative difference of the 4-bit copy {rel:.3f}; {freed / 1e6:.1f} MB freed)")
    return {"shared_with": head.name, "bits": 8, "block_size": block, "relative_difference_4bit": round(rel, 4),
            "freed_mb": round(freed / 1e6, 2)}


def save_in_place(model: Any, genai_dir: Path) -> None:
    """Write `model` as genai_dir/model.onnx with its weights in model.onnx.data, replacing both."""
    import onnx

    with tempfile.TemporaryDirectory(dir=genai_dir) as tmp:
        onnx.save_model(model, str(Path(tmp) / "model.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
        for item in Path(tmp).iterdir():
            os.replace(item, genai_dir / item.name)
