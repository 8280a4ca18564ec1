"""`prune_to_first_token`: a classifier's last layer tail on token 0 only, with the same logits; refused where
another token's output is still needed."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from passes.ort import fusion


@pytest.fixture(scope="module")
def fused(tiny_onnx_classifier):
    config = SimpleNamespace(**json.loads((tiny_onnx_classifier.path / "config.json").read_text()))
    return lambda: fusion.fuse(tiny_onnx_classifier.path / "model.onnx", "bert", config,
                               fusion.fusion_options("bert", skip_layer_norm=False))


def _logits(model: onnx.ModelProto, rows: int = 3, length: int = 7) -> np.ndarray:
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 90, (rows, length))
    mask = np.ones_like(ids)
    mask[1, 4:] = 0  # a padded row: its padding must not leak into token 0
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})[0]


def test_the_tail_runs_on_the_first_token_with_the_same_logits(fused):
    full = fused().model
    pruned = fused().model
    assert fusion.prune_to_first_token(pruned) is None
    slices = [n for n in pruned.graph.node if n.op_type == "Slice"]
    assert [n.name for n in slices] == ["FirstToken_0", "FirstToken_1"]
    last = [n for n in pruned.graph.node if n.op_type == "Attention"][-1]
    assert {s.input[0] for s in slices} == {last.output[0], last.input[0]}  # the attention output and its residual
    np.testing.assert_allclose(_logits(pruned), _logits(full), atol=1e-5)


def test_a_graph_that_needs_every_token_is_left_alone(fused):
    model = fused().model
    model.graph.output.append(onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, None))
    before = model.SerializeToString()
    assert "besides logits" in fusion.prune_to_first_token(model)
    assert model.SerializeToString() == before

    model = fused().model  # a head that averages the tokens instead of reading token 0
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and n.attribute and n.attribute[0].i == 1)
    mean = onnx.helper.make_node("ReduceMean", [gather.input[0]], [gather.output[0]], axes=[1], keepdims=0)
    index = list(model.graph.node).index(gather)
    model.graph.node.remove(gather)
    model.graph.node.insert(index, mean)
    assert "no single first-token read" in fusion.prune_to_first_token(model)
