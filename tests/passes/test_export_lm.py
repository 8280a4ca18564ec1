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
