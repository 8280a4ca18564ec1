"""quantize on a tiny exported classifier: every method gives a model that runs, with the op types the
method stands for; exclusions are honoured; calibration reads the dataset split and reports progress."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from passes.base import PassError, SimpleContext
from passes.onnx.export import ExportOnnx
from passes.onnx.quantize import Quantize
from schemas.steps import ExportOnnxConfig, QuantizeConfig
from tests.builders import RecordingContext, SAMPLE_TEXTS, make_artifact, op_counts, run_onnx

TEXTS = SAMPLE_TEXTS


def quantize(artifact, make_ctx, data=None, step="q", **config):
    ctx = make_ctx(step)
    ctx = RecordingContext(step=ctx.step, out_dir=ctx.out_dir, quiet=True)
    inputs = {"model": artifact}
    if data is not None:
        inputs["data"], config["data"] = data, data.step
    meta = Quantize(QuantizeConfig(type="quantize", model=artifact.step, **config)).run(inputs, ctx)
    return ctx, meta


ops = op_counts


def test_dynamic_int8(onnx_artifact, make_ctx, caplog):
    ctx, meta = quantize(onnx_artifact, make_ctx)
    # onnxruntime's generic "consider pre-processing" advice is not passed on (the pass decides that).
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    out = ctx.out_dir
    counts = ops(out)
    # Fused first: 2 layers -> 2 QAttention, and per layer 3 MatMulInteger (attention output, 2 FFN).
    assert counts["QAttention"] == 2 and counts["QEmbedLayerNormalization"] == 1
    assert counts["MatMulInteger"] >= 6 and counts["DynamicQuantizeLinear"] > 0 and "SkipLayerNormalization" not in counts
    assert meta["quant_ops"]["MatMulInteger"] == counts["MatMulInteger"] and meta["quant_ops"]["QAttention"] == 2
    assert meta["fused"]["Attention"] == 2 and meta["fused"]["EmbedLayerNormalization"] == 1
    # The head reads token 0: the last layer's tail (output projection, feed-forward) runs on it alone.
    assert meta["fused"]["FirstTokenTail"] == 1 and counts["Slice"] == 2
    assert any("first token only" in line for line in ctx.lines)
    assert meta["method"] == "dynamic_int8" and meta["labels"] == ["ham", "spam"] and meta["task"] == "text-classification"
    assert meta["inputs"] == onnx_artifact.meta["inputs"] and meta["outputs"] == ["logits"]
    # The tiny model's graph outweighs its weights: the real MiniLM goes to 25% (slow test).
    assert 0 < meta["size_ratio"] < 0.85 and meta["weights_quantized"] > 0
    assert "dynamic_int8" in meta["summary"] and "MatMulInteger" in meta["summary"]
    for name in ("tokenizer.json", "config.json", "inference.py", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    import onnx

    weights = [t for t in onnx.load(str(out / "model.onnx")).graph.initializer if len(t.dims) == 2]
    assert any(t.data_type == onnx.TensorProto.INT8 for t in weights)  # qint8 by default
    fp32 = run_onnx(onnx_artifact.path)
    np.testing.assert_allclose(run_onnx(out), fp32, atol=0.1)
    # The copied inference.py runs the quantized model.
    run = subprocess.run([sys.executable, str(out / "inference.py"), "--json", TEXTS[0]], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["label"] in ("ham", "spam")


def test_dynamic_int8_follows_the_cpu_it_is_built_for(onnx_artifact, make_ctx):
    """x86 (SkipLayerNorm slow there) gets Add + LayerNormalization; an arm64 build keeps the fused operator."""
    from schemas import Target

    metas = {}
    for name in ("avx512_vnni", "arm64"):
        ctx = make_ctx(name, target=Target(isa=name))
        ctx = RecordingContext(step=ctx.step, out_dir=ctx.out_dir, quiet=True, target=ctx.target)
        metas[name] = Quantize(QuantizeConfig(type="quantize", model=onnx_artifact.step)).run({"model": onnx_artifact}, ctx)
        assert metas[name]["choices"]["isa"] == name
        assert ("SkipLayerNormalization" in ops(ctx.out_dir)) is (name == "arm64")
    assert metas["arm64"]["choices"]["skip_layer_norm"] is True and metas["avx512_vnni"]["choices"]["skip_layer_norm"] is False


def test_dynamic_int8_unfused(onnx_artifact, make_ctx):
    import onnx

    ctx, meta = quantize(onnx_artifact, make_ctx, step="plain", fuse=False)
    counts = ops(ctx.out_dir)
    assert meta["fused"] is None and not counts["QAttention"]
    assert counts["MatMulInteger"] >= 12  # 2 layers x (q, k, v, attention output, 2 FFN)
    assert {n.domain for n in onnx.load(str(ctx.out_dir / "model.onnx")).graph.node} <= {"", "ai.onnx"}
    np.testing.assert_allclose(run_onnx(ctx.out_dir), run_onnx(onnx_artifact.path), atol=0.1)


def _shift_classifier_bias(path, delta):
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    (init,) = [i for i in proto.graph.initializer if i.name.endswith("classifier.bias")]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + delta, init.name))
    onnx.save(proto, str(path))


def test_a_fusion_that_moves_the_outputs_is_dropped(onnx_artifact, make_ctx, monkeypatch):
    import passes.onnx.quantize as mod

    real_fuse = mod.fuse_encoder

    def bad_fusion(src, dst_dir, config, log, skip_layer_norm=False):
        stats = real_fuse(src, dst_dir, config, log)
        _shift_classifier_bias(dst_dir / "model.onnx", 0.5)
        return stats

    monkeypatch.setattr(mod, "fuse_encoder", bad_fusion)
    ctx, meta = quantize(onnx_artifact, make_ctx, step="badfuse")
    assert meta["fused"] is None and not ops(ctx.out_dir)["QAttention"]
    assert any("differ from the input's by 0.5" in line for line in ctx.lines)
    assert not (ctx.out_dir / ".fused").exists()


def test_dynamic_int8_options_and_exclusions(onnx_artifact, make_ctx):
    import onnx

    graph = onnx.load(str(onnx_artifact.path / "model.onnx")).graph
    matmuls = [n.name for n in graph.node if n.op_type == "MatMul"]
    ctx, meta = quantize(onnx_artifact, make_ctx, step="excl", exclude_nodes=[matmuls[0]], exclude_op_types=["Gather"],
                         weight_type="quint8", per_channel=False)
    # The first MatMul is a query projection, which the fusion would replace: the graph stays unfused.
    assert meta["fused"] is None and any("the fusion replaces" in line for line in ctx.lines)
    out = onnx.load(str(ctx.out_dir / "model.onnx")).graph
    assert matmuls[0] in {n.name for n in out.node if n.op_type == "MatMul"}  # left in float
    assert meta["nodes_excluded"] == 1 + sum(n.op_type == "Gather" for n in graph.node)
    quantized = [t for t in out.initializer if t.name.endswith("_quantized")]
    assert quantized and all(t.data_type == onnx.TensorProto.UINT8 for t in quantized)
    assert not any("embeddings" in t.name for t in quantized)  # Gather (embeddings) excluded

    # op_types without a fused op: no fusion, only the embeddings' Gathers are quantized.
    ctx, meta = quantize(onnx_artifact, make_ctx, step="only", op_types=["Gather"])
    counts = ops(ctx.out_dir)
    assert meta["fused"] is None and counts["MatMulInteger"] == 0 and meta["weights_quantized"] == 3

    with pytest.raises(PassError, match="no node named 'nope'"):
        quantize(onnx_artifact, make_ctx, step="bad", exclude_nodes=["nope"])
    with pytest.raises(PassError, match="changed nothing"):
        quantize(onnx_artifact, make_ctx, step="none", op_types=["Conv"])


@pytest.mark.parametrize("calibration", ["minmax", "entropy", "percentile"])
def test_static_int8(onnx_artifact, make_ctx, tiny_dataset, calibration):
    before = sorted(p.relative_to(tiny_dataset.path) for p in tiny_dataset.path.rglob("*"))
    ctx, meta = quantize(onnx_artifact, make_ctx, data=tiny_dataset, step=f"s_{calibration}", method="static_int8",
                         calibration=calibration, calibration_samples=24, split="validation")
    counts = ops(ctx.out_dir)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] >= counts["QuantizeLinear"]
    assert meta["quant_ops"]["QuantizeLinear"] == counts["QuantizeLinear"]
    (bar,) = ctx.bars
    assert bar.total == 16 and bar.completed == 16  # the validation split has 16 rows
    assert run_onnx(ctx.out_dir).shape == (len(TEXTS), 2)
    # calibration reads its input and writes nothing into it (a cache entry; a new file there is damage)
    assert sorted(p.relative_to(tiny_dataset.path) for p in tiny_dataset.path.rglob("*")) == before


def test_static_int8_empty_split_is_an_error(onnx_artifact, make_ctx, tmp_path):
    from datasets import Dataset, DatasetDict

    empty = Dataset.from_dict({"text": [], "label": []})
    full = Dataset.from_dict({"text": ["hello there"], "label": [0]})
    DatasetDict(train=full, validation=empty).save_to_disk(str(tmp_path / "ds" / "data"))
    data = make_artifact("dataset", tmp_path / "ds", {"labels": ["ham", "spam"]}, step="data")
    with pytest.raises(PassError, match="'validation' split of 'data' is empty"):
        quantize(onnx_artifact, make_ctx, data=data, method="static_int8", split="validation")
    with pytest.raises(PassError, match="no 'test' split"):
        quantize(onnx_artifact, make_ctx, data=data, step="q2", method="static_int8", split="test")


@pytest.mark.parametrize("algorithm", ["rtn", "hqq"])
def test_int4(onnx_artifact, make_ctx, algorithm, capsys):
    ctx, meta = quantize(onnx_artifact, make_ctx, step=f"int4_{algorithm}", method="int4", algorithm=algorithm, block_size=16)
    assert "Progress:" not in capsys.readouterr().out  # the RTN code's own progress bar stays off the console
    counts = ops(ctx.out_dir)
    # 2 layers x (q, k, v, attention output, 2 FFN)
    assert counts["MatMulNBits"] == 12 and meta["quant_ops"]["MatMulNBits"] == counts["MatMulNBits"]
    import onnx

    nodes = [n for n in onnx.load(str(ctx.out_dir / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert all(a["accuracy_level"] == 4 and a["block_size"] == 16 and a["bits"] == 4 for a in attrs)
    fp32 = run_onnx(onnx_artifact.path)
    np.testing.assert_allclose(run_onnx(ctx.out_dir), fp32, atol=0.3)


def test_fp16(onnx_artifact, make_ctx):
    import onnx

    ctx, meta = quantize(onnx_artifact, make_ctx, method="fp16")
    proto = onnx.load(str(ctx.out_dir / "model.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    halves = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) >= 8 and meta["weights_quantized"] > 0
    assert 0.4 < meta["size_ratio"] < 0.85
    np.testing.assert_allclose(run_onnx(ctx.out_dir), run_onnx(onnx_artifact.path), atol=1e-2)
