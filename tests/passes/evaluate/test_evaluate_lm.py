"""Tests of `evaluate` on causal LMs: perplexity, sample answers, decode speed and size, on tiny Llamas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from passes import PassError
from passes.evaluate.steps import Evaluate
from passes.train.steps import Finetune
from schemas.steps import EvaluateConfig, FinetuneConfig
from tests.builders import make_artifact

LM = {"task": "causal-lm", "labels": None, "model_type": "llama"}
LM_METRICS = ["perplexity", "generate", "tokens_per_second", "time_to_first_token", "size"]


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory):
    """Instruction pairs with a rule a model can learn: the answer repeats the prompt's last word."""
    from datasets import Dataset, DatasetDict

    words = ["cash", "home", "lunch", "prize", "call", "free", "meeting", "win"]
    pairs = [(f"repeat after me {words[i % 8]} {i}", words[i % 8]) for i in range(64)]
    part = lambda rows: Dataset.from_dict({"prompt": [p for p, _ in rows], "response": [r for _, r in rows]})
    folder = tmp_path_factory.mktemp("qa")
    DatasetDict(train=part(pairs[:48]), validation=part(pairs[48:56]), test=part(pairs[56:])).save_to_disk(str(folder / "data"))
    splits = {s: {"rows": n, "labels": {}} for s, n in (("train", 48), ("validation", 8), ("test", 8))}
    return make_artifact("dataset", folder, {"labels": None, "format": "instruction", "splits": splits,
                                             "chat": {"chat_template": False, "system_prompt": None}}, "qa")


@pytest.fixture(scope="module")
def tuned_dir(tiny_llama_dir, qa_data, tmp_path_factory):
    import torch

    from passes.base import SimpleContext

    out = tmp_path_factory.mktemp("tuned")
    cfg = FinetuneConfig(type="finetune", model="base", data="qa", epochs=4, learning_rate=2e-2, batch_size=8,
                         eval_strategy="no")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from more, and loses a lot on a busy machine
    try:
        Finetune(cfg).run({"model": make_artifact("hf_model", tiny_llama_dir, LM, "base"), "data": qa_data},
                          SimpleContext("tune", out, quiet=True))
    finally:
        torch.set_num_threads(before)
    return out


def evaluate(models, data, make_ctx, **kw):
    cfg = EvaluateConfig(**{"type": "evaluate", "models": [m.step for m in models], "data": data.step, "threads": 1,
                            "metrics": LM_METRICS, "max_new_tokens": 6, "generation_runs": 2, "generate_samples": 2, **kw})
    ctx = make_ctx("report")
    return Evaluate(cfg).run({"models": models, "data": data}, ctx), ctx


def test_tuning_lowers_perplexity_and_everything_is_reported(tiny_llama_dir, tuned_dir, qa_data, make_ctx):
    models = [make_artifact("hf_model", tiny_llama_dir, LM, "base"), make_artifact("hf_model", tuned_dir, LM, "tuned")]
    meta, ctx = evaluate(models, qa_data, make_ctx, goals={"tuned": {"perplexity_ratio": {"max": 0.5}, "tokens_per_second": {"min": 1e9}}})
    base, tuned = meta["metrics"]["base"], meta["metrics"]["tuned"]
    assert tuned["perplexity"] < base["perplexity"] / 2 and tuned["perplexity_ratio"] < 0.5
    assert [r["met"] for r in meta["goals"]] == [True, False] and meta["goals_missed"] == 1 and not meta["goals_fail"]
    assert "goals 1/2 met" in meta["summary"] and "## Goals" in (ctx.out_dir / "report.md").read_text()
    for m in (base, tuned):
        assert m["tokens_per_second"] > 0 and m["time_to_first_token_ms"] > 0 and m["new_tokens"] == 6
        assert m["size_mb"] > 0 and m["runtime"] == "PyTorch fp32" and m["samples"] == 8
    payload = json.loads((ctx.out_dir / "metrics.json").read_text())
    assert [s["prompt"] for s in payload["samples"]] == ["repeat after me cash 56", "repeat after me home 57"]
    assert all(set(s["answers"]) == {"base", "tuned"} for s in payload["samples"])
    assert len(payload["timing"]["schedule"]) == 2 and sorted(payload["timing"]["schedule"][0]) == ["base", "tuned"]
    report = (ctx.out_dir / "report.md").read_text()
    assert "## Sample answers" in report and "| tuned |" in report and "perplexity_vs_tokens_per_second.png" in report
    assert meta["summary"].startswith("base: ppl ")


def test_perplexity_is_the_response_tokens_loss(tiny_llama_dir, qa_data):
    """The runner's NLL over the response equals transformers' own loss with the prompt masked (-100)."""
    import torch
    from passes.hf.chat import split_pair
    from passes.evaluate.lm import load_lm

    runner = load_lm(make_artifact("hf_model", tiny_llama_dir, LM, "base"))
    p, r = split_pair(runner.tokenizer, "repeat after me cash 1", "cash", {"chat_template": False})
    ids = torch.tensor([p + r])
    labels = torch.tensor([[-100] * len(p) + r])
    with torch.no_grad():
        loss = runner.model(input_ids=ids, labels=labels).loss.item()
    assert math.isclose(runner.nll(p, r), loss * len(r), rel_tol=1e-5)


def test_optimum_export_scores_like_pytorch(tuned_dir, qa_data, make_ctx, tmp_path):
    from passes.base import SimpleContext
    from passes.onnx.export import ExportOnnx
    from schemas.steps import ExportOnnxConfig

    hf = make_artifact("hf_model", tuned_dir, LM, "tuned")
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    meta = ExportOnnx(ExportOnnxConfig(type="export_onnx", model="tuned", exporter="optimum")).run(
        {"model": hf}, SimpleContext("onnx", onnx_dir, quiet=True))
    onnx = make_artifact("onnx_model", onnx_dir, {**LM, **meta}, "onnx")
    result, ctx = evaluate([hf, onnx], qa_data, make_ctx)
    a, b = result["metrics"]["tuned"], result["metrics"]["onnx"]
    assert b["runtime"] == "onnxruntime (optimum)"
    assert math.isclose(a["perplexity"], b["perplexity"], rel_tol=1e-3)
    payload = json.loads((ctx.out_dir / "metrics.json").read_text())
    assert all(s["answers"]["tuned"] == s["answers"]["onnx"] for s in payload["samples"])  # greedy: same tokens


def test_lm_errors(tiny_llama_dir, tiny_dataset, qa_data, make_ctx, tiny_bert_classifier_dir):
    base = make_artifact("hf_model", tiny_llama_dir, LM, "base")
    with pytest.raises(PassError, match="perplexity and generation need instruction data"):
        evaluate([base], tiny_dataset, make_ctx)
    clf = make_artifact("hf_model", tiny_bert_classifier_dir, {"task": "text-classification"}, "clf")
    with pytest.raises(PassError, match="is a text-classification model; perplexity, generate and tokens/s measure causal LMs"):
        evaluate([clf], qa_data, make_ctx)
    with pytest.raises(ValueError, match="one evaluate step measures one kind of model"):
        EvaluateConfig(type="evaluate", models=["a"], data="d", metrics=["accuracy", "perplexity"])
