"""passes/ort/nbits.py on MatMulNBits graphs written here: zero points equal to the op's default leave the graph
and the outputs stay identical; any other zero point stays."""

from __future__ import annotations

import numpy as np
import pytest

from passes.ort.nbits import drop_default_zero_points

N = 8


def _model(k: int, block: int, bits: int, zero: int, *, bias: bool = False):
    """x[1, k] @ W[k, N] as one MatMulNBits with every zero point `zero` (packed as onnxruntime reads them)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(k + bits + zero)
    blocks = -(-k // block)
    levels = 1 << bits
    q = rng.integers(0, levels, size=(N, blocks, block), dtype=np.uint8)
    if bits == 4:  # two values per byte, the first in the low nibble
        packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
        nibbles = np.full((N, blocks + blocks % 2), zero, dtype=np.uint8)
        if blocks % 2:
            nibbles[:, -1] = 0  # the padding nibble of an odd block count
        zeros = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8)
    else:
        packed, zeros = q, np.full((N, blocks), zero, dtype=np.uint8)
    inputs = ["x", "w", "scales", "zeros"] + (["", "bias"] if bias else [])
    inits = [numpy_helper.from_array(packed, "w"),
             numpy_helper.from_array(rng.uniform(0.01, 0.1, N * blocks).astype(np.float32), "scales"),
             numpy_helper.from_array(zeros.ravel(), "zeros")]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=N).astype(np.float32), "bias"))
    node = helper.make_node("MatMulNBits", inputs, ["y"], name="mm", domain="com.microsoft", K=k, N=N, bits=bits,
                            block_size=block)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


def _run(model, x):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


@pytest.mark.parametrize("k, block, bits, bias", [(64, 32, 4, False), (96, 32, 4, False), (64, 16, 8, False),
                                                  (64, 32, 4, True)])
def test_default_zero_points_leave_and_the_outputs_are_identical(k, block, bits, bias):
    model = _model(k, block, bits, 1 << (bits - 1), bias=bias)
    x = np.random.default_rng(0).normal(size=(1, k)).astype(np.float32)
    before = _run(model, x)
    facts = drop_default_zero_points(model)
    node = model.graph.node[0]
    assert facts["nodes"] == 1 and facts["freed_bytes"] > 0
    assert "zeros" not in {i.name for i in model.graph.initializer}
    assert (list(node.input) == ["x", "w", "scales", "", "", "bias"]) if bias else list(node.input) == ["x", "w", "scales"]
    np.testing.assert_array_equal(_run(model, x), before)


@pytest.mark.parametrize("bits, zero", [(4, 7), (4, 0), (8, 127)])
def test_other_zero_points_stay(bits, zero):
    model = _model(64, 32, bits, zero)
    assert drop_default_zero_points(model) == {"nodes": 0, "freed_bytes": 0}
    assert list(model.graph.node[0].input) == ["x", "w", "scales", "zeros"]


def _siblings(zero_points: bool, shared_scales: bool = False):
    """x -> gate, up (MatMulNBits, same K/bits/block) -> gate * up; x2 -> other (a different input)."""
    from onnx import TensorProto, helper

    gate, up, other = (_model(64, 32, 4, 8 if i else 7) for i in range(3))
    nodes, inits = [], []
    for tag, part, n in (("gate", gate, 8), ("up", up, 8), ("other", other, 8)):
        node = part.graph.node[0]
        node.name, node.output[0] = tag, tag
        renamed = {}
        for init in part.graph.initializer:
            renamed[init.name] = f"{tag}.{init.name}"
            init.name = renamed[init.name]
            inits.append(init)
        node.input[1:] = [renamed[i] for i in node.input[1:]]
        if not zero_points:
            del node.input[3:]
        if tag == "other":
            node.input[0] = "x2"
        nodes.append(node)
    if shared_scales:  # up reads gate's scales: a table two nodes read is left alone
        nodes[1].input[2] = nodes[0].input[2]
    nodes.append(helper.make_node("Mul", ["gate", "up"], ["y"]))
    graph = helper.make_graph(nodes, "siblings", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3, 64]) for n in ("x", "x2")],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3, N]) for n in ("y", "other")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


def _run_all(model, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("zero_points", [False, True])
def test_siblings_become_one_matmul_and_a_split_with_identical_outputs(zero_points):
    from passes.ort.nbits import fuse_siblings

    model = _siblings(zero_points)
    rng = np.random.default_rng(1)
    feeds = {n: rng.normal(size=(3, 64)).astype(np.float32) for n in ("x", "x2")}
    before = _run_all(model, feeds)
    assert fuse_siblings(model) == {"groups": 1, "nodes": 2}
    ops = [(n.op_type, n.name) for n in model.graph.node]
    assert [o for o, _ in ops].count("MatMulNBits") == 2 and ("Split", "gate/FusedSiblings/Split") in ops
    fused = next(n for n in model.graph.node if n.name == "gate/FusedSiblings")
    assert {a.name: a.i for a in fused.attribute}["N"] == 2 * N and len(fused.input) == (4 if zero_points else 3)
    assert not {i.name for i in model.graph.initializer} & {"gate.w", "up.w", "gate.scales", "up.scales"}
    for got, want in zip(_run_all(model, feeds), before):
        np.testing.assert_array_equal(got, want)


def test_siblings_sharing_a_table_with_another_node_stay_apart():
    from passes.ort.nbits import fuse_siblings

    model = _siblings(False, shared_scales=True)
    assert fuse_siblings(model) == {"groups": 0, "nodes": 0}


def test_a_symmetric_olive_checkpoint_is_staged_with_default_zero_points_and_others_are_not(tmp_path):
    import json

    import torch
    from safetensors.torch import load_file, save_file

    from passes.ort.nbits import stage_symmetric_checkpoint

    src = tmp_path / "gptq"
    src.mkdir()
    quant = {"quant_method": "olive", "bits": 4, "group_size": 32, "symmetric": True,
             "overrides": {"model.layers.0.self_attn.v_proj": {"bits": 8, "group_size": 64}}}
    (src / "config.json").write_text(json.dumps({"quantization_config": quant}))
    (src / "tokenizer.json").write_text("{}")
    save_file({"model.layers.0.self_attn.q_proj.qweight": torch.zeros(6, 96 // 2, dtype=torch.uint8),  # 3 groups
               "model.layers.0.self_attn.q_proj.scales": torch.ones(6, 3),
               "model.layers.0.self_attn.v_proj.qweight": torch.zeros(4, 128, dtype=torch.uint8),  # 8-bit, 2 of 64
               "model.layers.0.self_attn.v_proj.scales": torch.ones(4, 2),
               "model.norm.weight": torch.ones(8)}, str(src / "model.safetensors"))
    staged = stage_symmetric_checkpoint(src, tmp_path / "scratch")
    tensors = load_file(str(staged / "model.safetensors"))
    q_zeros, v_zeros = tensors["model.layers.0.self_attn.q_proj.qzeros"], tensors["model.layers.0.self_attn.v_proj.qzeros"]
    assert q_zeros.shape == (6, 2) and bool((q_zeros == 0x88).all())  # two per byte, the odd third padded
    assert v_zeros.shape == (4, 2) and bool((v_zeros == 0x80).all())
    assert (staged / "config.json").is_symlink() and (staged / "tokenizer.json").is_symlink()
    assert "model.layers.0.self_attn.q_proj.qzeros" not in load_file(str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"quantization_config": {**quant, "symmetric": False}}))
    assert stage_symmetric_checkpoint(src, tmp_path / "scratch2") is None
