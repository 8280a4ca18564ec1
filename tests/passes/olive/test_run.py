"""The `olive` pass on tiny models, offline: an ONNX pass, a calibrated ONNX pass, a PyTorch pass (GPTQ
calibrated on our dataset), ModelBuilder to a genai folder, and failures that are PassErrors with Olive's
message and leave nothing in the step's folder."""

from __future__ import annotations

import pytest

from passes.base import PassError
from tests.builders import make_artifact, op_counts, run_onnx

def _step(pass_name: str, config: dict | None = None, **fields):
    from schemas.steps.olive import OliveConfig

    return OliveConfig.model_validate({"type": "olive", "pass": pass_name, "model": "m", "config": config or {}, **fields})


def _unchecked_step(pass_name: str, config: dict):
    """A config that skipped validation (as a plugin or an old cache could hand over): the run-time checks."""
    from schemas.steps.olive import OliveConfig

    return OliveConfig.model_construct(type="olive", pass_name=pass_name, model="m", data=None, split="train",
                                       samples=128, config=config)


def _run(step, inputs, ctx):
    from passes.olive.run import Olive

    return Olive(step).run(inputs, ctx)


def _instruction_data(tmp_path, count: int):
    """A `calib` dataset artifact of `count` instruction pairs (a train split) for calibrating passes."""
    from datasets import Dataset, DatasetDict

    from tests.builders import tiny_corpus

    rows = tiny_corpus(count)
    DatasetDict(train=Dataset.from_dict({"prompt": [t for t, _ in rows], "response": [l for _, l in rows]})
                ).save_to_disk(str(tmp_path / "instr" / "data"))
    return make_artifact("dataset", tmp_path / "instr", {"format": "instruction", "labels": None}, "calib")


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_onnx_dynamic_quantization(tiny_onnx_classifier, make_ctx):
    ctx = make_ctx("dyn")
    meta = _run(_step("OnnxDynamicQuantization", {"per_channel": True}), {"model": tiny_onnx_classifier}, ctx)
    ops = op_counts(ctx.out_dir)
    assert ops["MatMulInteger"] > 0 and ops["DynamicQuantizeLinear"] > 0
    assert run_onnx(ctx.out_dir).shape == (3, 2)
    for name in ("tokenizer.json", "config.json", "inference.py"):
        assert (ctx.out_dir / name).is_file()
    assert meta["task"] == "text-classification" and meta["labels"] == ["ham", "spam"]
    assert meta["olive"]["pass"] == "OnnxDynamicQuantization" and meta["olive"]["version"] == "0.13.0"
    assert meta["olive"]["config"]["per_channel"] is True and "quant_preprocess" in meta["olive"]["config"]
    assert meta["quant_ops"]["MatMulInteger"] == ops["MatMulInteger"]
    assert "Olive OnnxDynamicQuantization -> onnx_model" in meta["summary"] and meta["metrics"]["size_mb"] > 0


@pytest.mark.parametrize("isa, per_channel", [("avx2", False), ("avx512_vnni", True)])
def test_config_by_isa_applies_the_target_instruction_sets_parameters(tiny_onnx_classifier, make_ctx, isa, per_channel):
    from schemas import Target

    ctx = make_ctx(f"dyn-{isa}", target=Target(device="cpu", isa=isa))
    step = _step("OnnxDynamicQuantization", {"per_channel": False}, config_by_isa={"avx512_vnni": {"per_channel": True}})
    meta = _run(step, {"model": tiny_onnx_classifier}, ctx)
    assert meta["olive"]["config"]["per_channel"] is per_channel  # what Olive ran with
    assert meta["choices"] == {"isa": isa, "config_by_isa": {"avx512_vnni": {"per_channel": True}}}
    assert any("config for avx512_vnni" in line for line in ctx.lines) is per_channel
    assert run_onnx(ctx.out_dir).shape == (3, 2)


def test_onnx_static_quantization_calibrated_on_our_dataset(tiny_onnx_classifier, tiny_dataset, make_ctx):
    ctx = make_ctx("static")
    step = _step("OnnxStaticQuantization", {"quant_format": "QDQ"}, data="data", split="validation", samples=8)
    meta = _run(step, {"model": tiny_onnx_classifier, "data": tiny_dataset}, ctx)
    ops = op_counts(ctx.out_dir)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert run_onnx(ctx.out_dir).shape == (3, 2)
    assert meta["olive"]["data"] == {"step": "data", "split": "validation", "rows": 8}
    assert "data_config" not in meta["olive"]["config"]  # its paths pointed into the deleted working folder


def test_gptq_on_a_causal_lm_gives_an_hf_folder(tiny_llama_dir, tiny_dataset, make_ctx):
    import torch
    from transformers import AutoModelForCausalLM

    from passes.olive.kinds import register_olive_quantizer

    ctx = make_ctx("gptq")
    source = make_artifact("hf_model", tiny_llama_dir, {"task": "causal-lm", "labels": None})
    step = _step("Gptq", {"bits": 4, "group_size": 16}, data="data", samples=16)
    meta = _run(step, {"model": source, "data": tiny_dataset}, ctx)
    assert meta["format"] == "hf" and meta["quantization"] == "olive" and meta["model_type"] == "llama"
    assert (ctx.out_dir / "tokenizer.json").is_file() and (ctx.out_dir / "config.json").is_file()
    progress = [line for line in ctx.lines if "olive: Processing layers" in line]  # GPTQ's tqdm, a line per tenth
    assert progress and progress[-1].endswith("/".join([progress[-1].split()[-1].split("/")[1]] * 2))
    register_olive_quantizer()  # Olive's packed layers: transformers needs Olive's quantizer to read them
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.no_grad():
        quantized = AutoModelForCausalLM.from_pretrained(ctx.out_dir)(ids).logits
        original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)(ids).logits
    assert quantized.shape == original.shape
    assert float((quantized - original).abs().max()) < 0.5 * float(original.abs().max())


def test_model_builder_gives_a_genai_folder(tiny_chat_llama_dir, make_ctx):
    ctx = make_ctx("genai")
    source = make_artifact("hf_model", tiny_chat_llama_dir, {"task": "causal-lm", "labels": None})
    meta = _run(_step("ModelBuilder", {"precision": "fp32"}), {"model": source}, ctx)
    assert (ctx.out_dir / "genai_config.json").is_file() and (ctx.out_dir / "model.onnx").is_file()
    assert meta["format"] == "genai" and meta["task"] == "causal-lm"
    import json

    session = json.loads((ctx.out_dir / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    assert session["intra_op_num_threads"] == meta["threads"] >= 1  # the target's threads, as export_onnx writes
    assert "onnxruntime_genai" in (ctx.out_dir / "inference.py").read_text()  # the chat loop, as export_onnx writes
    assert any("onnxruntime-genai loads the folder" in line for line in ctx.lines)  # the pass ran it
    import onnxruntime_genai as og

    og.Model(str(ctx.out_dir))


def test_a_pass_that_raises_is_a_pass_error_with_olives_message(tiny_onnx_classifier, make_ctx):
    ctx = make_ctx("bad")
    # ModelBuilder takes a PyTorch/HF model: given an ONNX classifier Olive raises while running.
    with pytest.raises(PassError, match=r"Olive's ModelBuilder failed: \w+"):
        _run(_step("ModelBuilder", {"precision": "int4"}), {"model": tiny_onnx_classifier}, ctx)
    assert _leftovers(ctx.out_dir) == []


def test_a_config_olive_rejects_is_a_pass_error(tiny_onnx_classifier, make_ctx):
    ctx = make_ctx("bad_value")
    with pytest.raises(PassError, match=r"Olive refused the config of OnnxDynamicQuantization: precision: Input should be 'int4'.*\(got 'int3'\)$"):
        _run(_unchecked_step("OnnxDynamicQuantization", {"precision": "int3"}), {"model": tiny_onnx_classifier}, ctx)
    # Olive itself only warns about an unknown key and runs the defaults: here it is an error
    with pytest.raises(PassError, match="no parameter 'per_chanel'.*did you mean 'per_channel'"):
        _run(_unchecked_step("OnnxDynamicQuantization", {"per_chanel": True}), {"model": tiny_onnx_classifier}, ctx)
    assert _leftovers(ctx.out_dir) == []


def test_a_pass_that_returns_no_model_fails(tiny_onnx_classifier, make_ctx, monkeypatch):
    from olive.passes.olive_pass import Pass as OlivePass

    ctx = make_ctx("empty")
    monkeypatch.setattr(OlivePass, "run", lambda self, model, path: None)
    with pytest.raises(PassError, match="returned no model"):
        _run(_step("OnnxDynamicQuantization"), {"model": tiny_onnx_classifier}, ctx)
    assert _leftovers(ctx.out_dir) == []


def test_unknown_pass_and_data_for_a_pass_without_data(tiny_onnx_classifier, tiny_dataset, make_ctx):
    ctx = make_ctx("unknown")
    with pytest.raises(PassError, match="no pass 'OnnxDynamicQuantisation'.*did you mean 'OnnxDynamicQuantization'"):
        _run(_unchecked_step("OnnxDynamicQuantisation", {}), {"model": tiny_onnx_classifier}, ctx)
    with pytest.raises(PassError, match="takes no data"):
        step = _unchecked_step("OnnxDynamicQuantization", {}).model_copy(update={"data": "data"})
        _run(step, {"model": tiny_onnx_classifier, "data": tiny_dataset}, ctx)


def test_gptq_on_instruction_data_then_model_builder_int4(tiny_chat_llama_dir, tmp_path, make_ctx):
    """The recipe's chain: Olive GPTQ calibrated on instruction rows, then ModelBuilder reads Olive's packed weights."""
    data = _instruction_data(tmp_path, 24)
    source = make_artifact("hf_model", tiny_chat_llama_dir, {"task": "causal-lm", "labels": None})
    gptq_ctx = make_ctx("gptq")
    gptq = _run(_step("Gptq", {"bits": 4, "group_size": 32}, data="calib", samples=8), {"model": source, "data": data},
                gptq_ctx)
    assert gptq["quantization"] == "olive" and gptq["olive"]["data"]["rows"] == 8
    int4_ctx = make_ctx("int4")
    meta = _run(_step("ModelBuilder", {"precision": "int4"}), {"model": make_artifact("hf_model", gptq_ctx.out_dir, gptq)},
                int4_ctx)
    assert meta["format"] == "genai" and meta["quant_ops"].get("MatMulNBits", 0) > 0


def test_native_steps_refuse_olive_packed_weights(tiny_llama_dir, tmp_path):
    """Olive's Rtn/Gptq write `quant_method: olive` folders transformers would fill with random weights."""
    import json
    import shutil

    from passes.hf.folders import refuse_packed_weights
    from passes.hf.loading import load_model

    packed = tmp_path / "packed"
    shutil.copytree(tiny_llama_dir, packed)
    config = json.loads((packed / "config.json").read_text())
    (packed / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "olive", "bits": 4}}))
    with pytest.raises(PassError, match="packed quantized weights.*export_onnx.*pass: ModelBuilder"):
        load_model(packed, "causal-lm")
    refuse_packed_weights(tiny_llama_dir, "anything")  # a plain folder passes


def test_mixed_precision_plan_reaches_gptq_and_our_genai_export_reads_the_packed_weights(tiny_chat_llama_dir, tmp_path,
                                                                                          make_ctx):
    """The recipe's chain: Olive's SelectiveMixedPrecision plan (an in-memory model attribute in Olive) is carried
    to Gptq by the artifact, and export_onnx writes Gptq's packed 4- and 8-bit layers as MatMulNBits."""
    import json

    from onnx import load

    from passes.base import SimpleContext
    from passes.olive.kinds import ATTRIBUTES_FILE
    from passes.onnx.export import ExportOnnx
    from schemas.steps import ExportOnnxConfig

    source = make_artifact("hf_model", tiny_chat_llama_dir, {"task": "causal-lm", "labels": None})
    mixed_ctx = make_ctx("mixed")
    mixed = _run(_step("SelectiveMixedPrecision", {"algorithm": "k_quant_mixed"}), {"model": source}, mixed_ctx)
    plan = json.loads((mixed_ctx.out_dir / ATTRIBUTES_FILE).read_text())["mixed_precision_info"]
    assert plan["overrides"]["lm_head"]["bits"] == 8 and mixed["olive_attributes"] == ["mixed_precision_info"]

    data = _instruction_data(tmp_path, 16)
    gptq_ctx = make_ctx("gptq")
    gptq = _run(_step("Gptq", {"bits": 4, "group_size": 32, "sym": False, "lm_head": True}, data="calib", samples=8),
                {"model": make_artifact("hf_model", mixed_ctx.out_dir, mixed, "mixed"), "data": data}, gptq_ctx)
    quant = json.loads((gptq_ctx.out_dir / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "olive" and set(plan["overrides"]) <= set(quant["overrides"])

    out = tmp_path / "int4"
    out.mkdir()
    ctx = SimpleContext(step="int4", out_dir=out, quiet=True)
    meta = ExportOnnx(ExportOnnxConfig(type="export_onnx", model="gptq", precision="int4")).run(
        {"model": make_artifact("hf_model", gptq_ctx.out_dir, {**gptq, "model_type": "llama"}, "gptq")}, ctx)
    assert meta["format"] == "genai" and meta["prequantized"]["quant_method"] == "olive"
    assert meta["prequantized"]["overrides"] == len(quant["overrides"])
    nodes = [n for n in load(str(out / "model.onnx"), load_external_data=False).graph.node if n.op_type == "MatMulNBits"]
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in nodes}
    assert set(bits.values()) == {4, 8} and bits["/lm_head/MatMulNBits"] == 8  # GPTQ's own bits, as packed
    assert not [n for n in load(str(out / "model.onnx"), load_external_data=False).graph.node if n.op_type == "MatMul"]
    with pytest.raises(PassError, match="set `precision: int4`"):
        ExportOnnx(ExportOnnxConfig(type="export_onnx", model="gptq", precision="fp32")).run(
            {"model": make_artifact("hf_model", gptq_ctx.out_dir, gptq, "gptq")}, ctx)


def test_symmetric_gptq_builds_through_our_export_with_the_zero_point_free_kernel(tiny_chat_llama_dir, tmp_path,
                                                                                  make_ctx):
    """Olive's Gptq with sym: true stores no zero points, on which the 0.14.1 builder's q/k/v packing fails; our
    export writes the default ones for the builder (nbits.stage_symmetric_checkpoint) and drops them after."""
    import onnx
    from safetensors import safe_open

    from passes.ort import genai_build as G
    from passes.ort.genai_run import smoke_test

    data = _instruction_data(tmp_path, 16)
    source = make_artifact("hf_model", tiny_chat_llama_dir, {"task": "causal-lm", "labels": None})
    ctx = make_ctx("gptq")
    _run(_step("Gptq", {"bits": 4, "group_size": 32, "sym": True}, data="calib", samples=8),
         {"model": source, "data": data}, ctx)
    lines: list[str] = []
    facts = G.build_genai(ctx.out_dir, tmp_path / "int4", "int4", "cpu", {}, 2, lines.append, isa="avx2")
    graph = onnx.load(str(tmp_path / "int4" / "model.onnx"), load_external_data=False).graph
    packed = [n for n in graph.node if n.op_type == "MatMulNBits" and not n.name.startswith("/lm_head/")]
    # GPTQ's layers: qkv, o, gate + up (fused), down per layer; none keeps a zero-point input
    assert len(packed) == 4 * 2 and all(len([i for i in n.input if i]) == 3 for n in packed)
    assert facts["nbits_rewrites"]["default_zero_points_dropped"] == 5 * 2
    assert any("default zero points written out" in line for line in lines)
    assert isinstance(smoke_test(tmp_path / "int4", "hello", max_new_tokens=4), str)
    with safe_open(str(ctx.out_dir / "model.safetensors"), "pt") as source_weights:  # the source is left as it was
        assert not any(name.endswith(".qzeros") for name in source_weights.keys())


def test_quarot_rotation_keeps_the_function_and_its_gptq_int4_builds(tiny_chat_llama_dir, tmp_path, make_ctx):
    """Olive's QuaRot as a step: the rotated folder computes the same logits (the norms' scales are folded into
    the next layers, which untie lm_head from the embedding), and GPTQ on it exports through ours to a folder genai
    generates from, symmetric int4 everywhere (the recipe's fast format)."""
    import json

    import onnx
    import torch
    from transformers import AutoModelForCausalLM

    from passes.ort import genai_build as G
    from passes.ort.genai_run import smoke_test

    source = make_artifact("hf_model", tiny_chat_llama_dir, {"task": "causal-lm", "labels": None})
    rot_ctx = make_ctx("rot")
    rotated = _run(_step("QuaRot"), {"model": source}, rot_ctx)
    assert json.loads((rot_ctx.out_dir / "config.json").read_text())["tie_word_embeddings"] is False
    ids = torch.randint(0, 200, (2, 12))
    original = AutoModelForCausalLM.from_pretrained(tiny_chat_llama_dir).eval()
    model = AutoModelForCausalLM.from_pretrained(rot_ctx.out_dir).eval()
    with torch.no_grad():
        before, after = original(ids).logits, model(ids).logits
    assert torch.allclose(before, after, atol=1e-4), (before - after).abs().max()
    assert all(torch.equal(layer.input_layernorm.weight, torch.ones_like(layer.input_layernorm.weight))
               for layer in model.model.layers)  # folded into q/k/v: what lets the rotation commute with the norm
    assert not torch.allclose(model.model.embed_tokens.weight, original.model.embed_tokens.weight)  # rotated

    gptq_ctx = make_ctx("gptq")
    _run(_step("Gptq", {"bits": 4, "group_size": 32, "sym": True, "lm_head": True}, data="calib", samples=8),
         {"model": make_artifact("hf_model", rot_ctx.out_dir, rotated, "rot"), "data": _instruction_data(tmp_path, 16)},
         gptq_ctx)
    facts = G.build_genai(gptq_ctx.out_dir, tmp_path / "int4", "int4", "cpu", {}, 2, lambda line: None, isa="avx2")
    nodes = [n for n in onnx.load(str(tmp_path / "int4" / "model.onnx"), load_external_data=False).graph.node
             if n.op_type == "MatMulNBits"]
    assert nodes and all(len([i for i in n.input if i]) == 3 for n in nodes)  # no zero points: the symmetric kernel
    assert facts["nbits_rewrites"]["default_zero_points_dropped"] == 5 * 2 + 1  # every layer's and lm_head's
    assert isinstance(smoke_test(tmp_path / "int4", "hello", max_new_tokens=4), str)
