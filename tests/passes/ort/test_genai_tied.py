"""passes/ort/genai_tied.py on a two-node graph written here: a 4-bit GatherBlockQuantized embedding and an 8-bit
MatMulNBits lm_head, tied (one matrix) or not; run with onnxruntime before and after the rewrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from passes.ort.genai_tied import share_tied_embedding

VOCAB, HIDDEN, BLOCK = 64, 64, 32


def _graph(folder: Path, embedding: np.ndarray, head: np.ndarray) -> None:
    """model.onnx: ids -> 4-bit symmetric embedding (block 32); x -> 8-bit asymmetric lm_head (block 32)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from passes.ort.genai_tied import save_in_place

    blocks = HIDDEN // BLOCK
    e = embedding.reshape(VOCAB, blocks, BLOCK)
    e_scale = np.abs(e).max(axis=2) / 7
    e_q = np.clip(np.round(e / e_scale[..., None]), -8, 7).astype(np.int8).reshape(VOCAB, HIDDEN)
    h = head.reshape(VOCAB, blocks, BLOCK)
    lo, hi = h.min(axis=2), h.max(axis=2)
    h_scale = (hi - lo) / 255
    h_zero = np.round(-lo / h_scale).astype(np.uint8)
    h_q = np.clip(np.round(h / h_scale[..., None]) + h_zero[..., None], 0, 255).astype(np.uint8)
    inits = [helper.make_tensor("emb_q", TensorProto.INT4, [VOCAB, HIDDEN], e_q.ravel().tolist()),
             numpy_helper.from_array(e_scale.astype(np.float32), "emb_scales"),
             numpy_helper.from_array(h_q, "head_q"),
             numpy_helper.from_array(h_scale.astype(np.float32).ravel(), "head_scales"),
             numpy_helper.from_array(h_zero.ravel(), "head_zeros")]
    nodes = [helper.make_node("GatherBlockQuantized", ["emb_q", "ids", "emb_scales"], ["embedded"],
                              name="/model/embed_tokens/Gather_Q4", domain="com.microsoft", block_size=BLOCK,
                              gather_axis=0, quantize_axis=1),
             helper.make_node("MatMulNBits", ["x", "head_q", "head_scales", "head_zeros"], ["logits"],
                              name="/lm_head/MatMul_Q8", domain="com.microsoft", K=HIDDEN, N=VOCAB, bits=8,
                              block_size=BLOCK, accuracy_level=4)]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4]),
                                              helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, HIDDEN])],
                              [helper.make_tensor_value_info("embedded", TensorProto.FLOAT, [1, 4, HIDDEN]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, VOCAB])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    folder.mkdir()
    save_in_place(model, folder)


def _run(folder: Path, ids: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return tuple(session.run(["embedded", "logits"], {"ids": ids, "x": x}))


def test_a_tied_embedding_reads_the_8bit_head_and_an_untied_one_is_left(tmp_path):
    import onnx

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32)
    ids, x = np.array([[0, 5, 63, 5]], dtype=np.int64), rng.normal(size=(1, HIDDEN)).astype(np.float32)
    _graph(tmp_path / "tied", weights, weights)
    before_emb, before_logits = _run(tmp_path / "tied", ids, x)
    facts = share_tied_embedding(tmp_path / "tied", lambda line: None)
    assert facts is not None and facts["bits"] == 8 and facts["relative_difference_4bit"] < 0.2
    graph = onnx.load(str(tmp_path / "tied" / "model.onnx")).graph
    (gather,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    assert {a.name: a.i for a in gather.attribute}["bits"] == 8
    assert not {"emb_q", "emb_scales"} & {i.name for i in graph.initializer}  # the 4-bit copy is gone
    after_emb, after_logits = _run(tmp_path / "tied", ids, x)
    np.testing.assert_array_equal(after_logits, before_logits)  # lm_head untouched
    # the embedding is now lm_head's 8-bit rows: closer to the float matrix than the 4-bit copy was
    exact = weights[ids[0]][None]
    assert np.abs(after_emb - exact).max() < 0.25 * np.abs(before_emb - exact).max()
    assert np.abs(after_emb - exact).max() < 0.05

    _graph(tmp_path / "untied", rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32), weights)
    lines = []
    assert share_tied_embedding(tmp_path / "untied", lines.append) is None
    assert "not tied" in lines[0]
    assert [n.op_type for n in onnx.load(str(tmp_path / "untied" / "model.onnx")).graph.node] == \
        ["GatherBlockQuantized", "MatMulNBits"]
