"""benchmarks/nbits_kernels.py times the formats it names: its graphs compute what their packed weights mean."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from benchmarks.nbits_kernels import FORMATS, nbits_graph


def unpack(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes -> the bits-wide codes they hold, low bits first (MatMulNBits' packing)."""
    if bits == 8:
        return values.astype(np.int64)
    return np.stack([values & 0x0F, values >> 4], axis=-1).reshape(*values.shape[:-1], -1).astype(np.int64)


def reference(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Each MatMulNBits node by hand: weights = (code - zero point) * block scale, then the matmul."""
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    outs = []
    for node in model.graph.node:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        k, n, bits, block = a["K"], a["N"], a["bits"], a["block_size"]
        blocks = -(-k // block)
        codes = unpack(init[node.input[1]], bits).reshape(n, blocks * block)
        if len(node.input) > 3:
            zero = unpack(init[node.input[3]].reshape(n, -1), bits)[:, :blocks]
        else:
            zero = np.full((n, blocks), 2 ** (bits - 1))
        scales = init[node.input[2]].reshape(n, blocks)
        weights = ((codes.reshape(n, blocks, block) - zero[..., None]) * scales[..., None]).reshape(n, -1)[:, :k]
        outs.append(feed[node.input[0]] @ weights.T.astype(np.float32))
    return outs


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_runs_the_weights_it_packs(name):
    import onnxruntime as ort

    bits, block, symmetric = FORMATS[name]
    shapes = [(96, 16), (64, 8), (96, 16)]  # 96 is not a multiple of 64 or 128: a padded last block
    data = nbits_graph(shapes, bits, block, symmetric)
    model = onnx.load_from_string(data)
    assert [n.op_type for n in model.graph.node] == ["MatMulNBits"] * 3
    attrs = {x.name: onnx.helper.get_attribute_value(x) for x in model.graph.node[0].attribute}
    assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (bits, block, 4)
    assert all(len(n.input) == (3 if symmetric else 4) for n in model.graph.node)
    rng = np.random.default_rng(0)
    feed = {"a64": rng.standard_normal((1, 64), dtype=np.float32), "a96": rng.standard_normal((1, 96), dtype=np.float32)}
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for got, want in zip(session.run(None, feed), reference(model, feed)):
        # accuracy level 4 quantizes the activations to int8 per block: within about 1% of the float result
        assert np.abs(got - want).max() <= 0.02 * np.abs(want).max() + 1e-3
