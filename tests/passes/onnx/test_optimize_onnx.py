"""optimize_onnx on the tiny exported classifier: fusions by model type, graph optimization levels, fp16 for
GPU targets, what the target decided; then quantize on top of it; model family detection for quantize."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest

from passes.base import PassError, SimpleContext
from passes.onnx.optimize import OptimizeOnnx
from schemas import Target
from schemas.steps import OptimizeOnnxConfig
from tests.builders import make_artifact
from tests.builders import op_counts as ops
from tests.builders import run_onnx
from tests.passes.onnx.test_quantize import quantize


def optimize(artifact, make_ctx, step="opt", target=None, **config):
    ctx = make_ctx(step, **({"target": target} if target else {}))
    meta = OptimizeOnnx(OptimizeOnnxConfig(type="optimize_onnx", model=artifact.step, **config)).run({"model": artifact}, ctx)
    return ctx, meta


def test_cpu_target_fuses_bert_without_skip_layer_norm(onnx_artifact, make_ctx):
    ctx, meta = optimize(onnx_artifact, make_ctx, target=Target(isa="avx2"))
    counts = ops(ctx.out_dir)
    assert meta["model_type"] == "bert" and meta["fused"]["Attention"] == 2 and meta["fused"]["EmbedLayerNormalization"] == 1
    assert counts["Attention"] == 2 and "SkipLayerNormalization" not in counts
    assert meta["fused"]["FirstTokenTail"] == 1  # the classifier's last layer tail runs on token 0 only
    assert meta["nodes_after"] == sum(counts.values()) < meta["nodes_before"]
    assert meta["level"] == "basic" and meta["fp16"] is False
    assert meta["choices"] == {"model_type": "bert", "skip_layer_norm": False, "fp16": False, "level": "basic", "isa": "avx2",
                               "reason": "cpu target: SkipLayerNorm unfused (slower on x86 CPUs; building for avx2), float32"}
    assert meta["execution"]["provider"] == "CPUExecutionProvider"
    assert "2 Attention" in meta["summary"] and f"{meta['nodes_before']} -> {meta['nodes_after']} nodes" in meta["summary"]
    assert meta["max_abs_diff_vs_input"] <= 1e-4 and meta["labels"] == ["ham", "spam"]
    for name in ("tokenizer.json", "config.json", "inference.py"):
        assert (ctx.out_dir / name).is_file()
    assert not (ctx.out_dir / ".stages").exists()
    np.testing.assert_allclose(run_onnx(ctx.out_dir), run_onnx(onnx_artifact.path), atol=1e-4)


def test_arm64_cpu_target_keeps_onnxruntimes_skip_layer_norm_fusion(onnx_artifact, make_ctx):
    """Built for an arm64 CPU (named in the target: this machine may be x86), SkipLayerNorm is fused."""
    ctx, meta = optimize(onnx_artifact, make_ctx, step="arm", target=Target(isa="arm64"))
    assert meta["choices"]["isa"] == "arm64" and meta["choices"]["skip_layer_norm"] is True
    assert ops(ctx.out_dir)["SkipLayerNormalization"] == 4 and meta["fp16"] is False


def test_gpu_target_fuses_skip_layer_norm_and_converts_to_fp16(onnx_artifact, make_ctx):
    import onnx

    ctx, meta = optimize(onnx_artifact, make_ctx, step="gpu", target=Target(device="gpu", fallback="cpu"))
    assert meta["fp16"] is True and meta["choices"]["skip_layer_norm"] is True
    assert "float16 (GPU)" in meta["choices"]["reason"]
    assert ops(ctx.out_dir)["SkipLayerNormalization"] == 4  # 2 layers x 2
    proto = onnx.load(str(ctx.out_dir / "model.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer) >= 8
    # The fp16 model still runs here, on the CPU provider (the step's check ran it too).
    np.testing.assert_allclose(run_onnx(ctx.out_dir), run_onnx(onnx_artifact.path), atol=2e-2)
    # Explicit fields win over the target.
    _, meta = optimize(onnx_artifact, make_ctx, step="gpu32", target=Target(device="gpu", fallback="cpu"),
                       fp16=False, skip_layer_norm=False, fusion_options={"enable_bias_gelu": False})
    assert meta["fp16"] is False and "SkipLayerNormalization" not in meta["fused"] and "BiasGelu" not in meta["fused"]
    assert meta["choices"]["reason"] == "gpu target: as set in the step"


def test_graph_optimization_only_and_levels(onnx_artifact, make_ctx):
    _, basic = optimize(onnx_artifact, make_ctx, step="basic", model_type="none")
    _, extended = optimize(onnx_artifact, make_ctx, step="ext", model_type="none", level="extended")
    _, none = optimize(onnx_artifact, make_ctx, step="none", model_type="none", level="none")
    assert basic["fused"] == {} and basic["model_type"] is None
    assert none["nodes_after"] == none["nodes_before"]
    assert extended["nodes_after"] < basic["nodes_after"] < basic["nodes_before"]
    assert extended["max_abs_diff_vs_input"] <= 1e-4


def test_errors_name_the_field_and_the_fix(onnx_artifact, make_ctx):
    with pytest.raises(PassError, match="model_type 'bret' is not one the transformer optimizer knows.*did you mean 'bert'"):
        optimize(onnx_artifact, make_ctx, step="e1", model_type="bret")
    with pytest.raises(PassError, match="fusion_options: unknown fusion option 'enable_magic'; FusionOptions for bert has"):
        optimize(onnx_artifact, make_ctx, step="e2", fusion_options={"enable_magic": True})


def test_optimize_then_quantize(onnx_artifact, make_ctx):
    ctx, meta = optimize(onnx_artifact, make_ctx, step="o")
    fused = make_artifact("onnx_model", ctx.out_dir, meta, step="o")
    qctx, qmeta = quantize(fused, make_ctx, step="oq")
    assert any("already fused" in line for line in qctx.lines)
    counts = ops(qctx.out_dir)
    assert counts["QAttention"] == 2 and counts["MatMulInteger"] >= 6
    assert qmeta["choices"]["method"] == "dynamic_int8" and qmeta["family"] == "encoder"
    np.testing.assert_allclose(run_onnx(qctx.out_dir), run_onnx(onnx_artifact.path), atol=0.1)


@pytest.fixture(scope="module")
def tiny_lm_onnx(tiny_llama_dir, tmp_path_factory):
    """A causal-LM-shaped ONNX folder: the tiny Llama's config and tokenizer, a graph embedding -> lm_head."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path_factory.mktemp("tiny_lm_onnx")
    for f in tiny_llama_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    import json

    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.standard_normal((vocab, 32)).astype(np.float32), "embed")
    head = numpy_helper.from_array(rng.standard_normal((32, vocab)).astype(np.float32), "lm_head")
    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["h"], name="embed_tokens"),
             helper.make_node("MatMul", ["h", "lm_head"], ["logits"], name="lm_head_matmul")]
    graph = helper.make_graph(nodes, "lm", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", vocab])],
                              initializer=[emb, head])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))
    return folder


def test_model_family(onnx_artifact, tiny_lm_onnx, tmp_path):
    from passes.ort import files

    assert files.model_family(onnx_artifact.path, onnx_artifact.meta) == "encoder"
    assert files.model_family(tiny_lm_onnx) == "causal_lm"  # LlamaForCausalLM in config.json
    assert files.model_family(onnx_artifact.path, {"task": "causal-lm"}) == "causal_lm"
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_lm_onnx / "model.onnx", bare / "model.onnx")
    assert files.model_family(bare) == "encoder"  # no config, no KV-cache inputs
    (bare / "genai_config.json").write_text("{}")
    assert files.model_family(bare) == "causal_lm"


def test_quantize_without_method_picks_int4_for_a_causal_lm(tiny_lm_onnx, make_ctx):
    lm = make_artifact("onnx_model", tiny_lm_onnx, {"outputs": ["logits"]}, step="lm")
    for target in (Target(), Target(device="gpu", fallback="cpu")):
        ctx = make_ctx(f"lm_{target.device}")
        ctx = SimpleContext(step=ctx.step, out_dir=ctx.out_dir, target=target, quiet=True)
        from passes.onnx.quantize import Quantize
        from schemas.steps import QuantizeConfig

        meta = Quantize(QuantizeConfig(type="quantize", model="lm", block_size=16)).run({"model": lm}, ctx)
        assert meta["method"] == "int4" and meta["family"] == "causal_lm" and meta["quant_ops"]["MatMulNBits"] == 1
        assert meta["choices"]["reason"].startswith(f"a causal LM on a {target.device} target: weight-only int4")
        assert any(line.startswith("int4: a causal LM") for line in ctx.lines)
