"""Tests of export_onnx for causal LMs: optimum's exporter and the onnxruntime-genai builder, on tiny Llamas."""

from __future__ import annotations

from pathlib import Path

import pytest

from passes.base import PassError, SimpleContext
from passes.onnx_export import ExportOnnx
from schemas.steps import ExportOnnxConfig
from schemas.workflow import Target
from tests.conftest import make_artifact


def llm(folder: Path):
    return make_artifact("hf_model", folder, {"task": "causal-lm", "labels": None, "model_type": "llama"}, "llm")


def export(model_dir, out_dir, target=None, inputs=None, **config):
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = ExportOnnxConfig(type="export_onnx", model="llm", **config)
    ctx = SimpleContext(step="onnx", out_dir=out_dir, quiet=True, target=target or Target())
    return ExportOnnx(cfg).run({"model": llm(model_dir), **(inputs or {})}, ctx), ctx


def test_optimum_export_matches_pytorch_and_runs_with_a_kv_cache(tiny_llama_dir, tmp_path):
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta, ctx = export(tiny_llama_dir, tmp_path / "out", exporter="optimum")
    assert meta["format"] == "optimum" and meta["max_abs_diff"] < 1e-4
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json"} <= names and ".export" not in names
    # greedy decoding with the KV cache gives PyTorch's tokens
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    enc = tok("win cash now", return_tensors="pt", return_token_type_ids=False)
    ort = ORTModelForCausalLM.from_pretrained(tmp_path / "out", use_cache=True)
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        assert ort.generate(**enc, **kw).tolist() == ref.generate(**enc, **kw).tolist()


@pytest.mark.parametrize("config, message", [
    ({"exporter": "optimum", "precision": "int4"}, "`precision` applies to `exporter: genai`"),
    ({"exporter": "torch", "adapters": ["a"]}, "`genai_options`, `builder_defaults` and `adapters` apply to `exporter: genai`"),
    ({"execution_provider": "tpu"}, "unknown execution_provider 'tpu'"),
    ({"adapters": ["a", "a"]}, "`adapters` names a step twice"),
])
def test_config_errors(config, message):
    with pytest.raises(ValueError, match=message):
        ExportOnnxConfig(type="export_onnx", model="llm", **config)


def test_genai_precision_and_provider_follow_the_target():
    from passes._export_lm import genai_choices

    lines = []
    cfg = ExportOnnxConfig(type="export_onnx", model="llm")
    assert genai_choices(cfg, Target(), lines.append) == ("int4", "cpu")
    assert genai_choices(cfg, Target(device="gpu", fallback="cpu"), lines.append) == ("fp16", "cuda")
    assert "chosen for the target device gpu" in lines[-1]
    pinned = ExportOnnxConfig(type="export_onnx", model="llm", precision="fp32", execution_provider="cpu")
    assert genai_choices(pinned, Target(device="gpu"), lines.append) == ("fp32", "cpu") and not pinned.uses_target
    assert cfg.uses_target and not ExportOnnxConfig(type="export_onnx", model="llm", exporter="optimum").uses_target


def test_int4_quantize_of_an_exported_llm(tiny_llama_dir, tmp_path):
    """quantize int4 on an LLM export: MatMulNBits with the accuracy level asked, companions kept, still decodes."""
    import onnx
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    from passes.quantize import Quantize
    from schemas.steps import QuantizeConfig

    meta, _ = export(tiny_llama_dir, tmp_path / "fp32", exporter="optimum")
    src = make_artifact("onnx_model", tmp_path / "fp32", meta, "onnx")
    out = tmp_path / "int4"
    out.mkdir()
    cfg = QuantizeConfig(type="quantize", model="onnx", method="int4", block_size=16, accuracy_level=2)
    qmeta = Quantize(cfg).run({"model": src}, SimpleContext(step="q", out_dir=out, quiet=True))
    nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) >= 14 and qmeta["size_mb"] < meta["size_mb"]
    assert all(next(a.i for a in n.attribute if a.name == "accuracy_level") == 2 for n in nodes)
    assert {"config.json", "tokenizer.json", "generation_config.json"} <= {p.name for p in out.iterdir()}
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok("win cash now", return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        got = ORTModelForCausalLM.from_pretrained(out, use_cache=True).generate(**enc, max_new_tokens=4, do_sample=False)
    assert got.shape[1] == enc["input_ids"].shape[1] + 4
