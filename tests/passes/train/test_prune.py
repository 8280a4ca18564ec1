"""The `prune` pass on the tiny BERT classifier: what is removed is what scored lowest (units made dead are cut
first), the saved folder reloads with the pruned shapes and computes what the pruned model did, the accuracy
guard fails the step, bad requests are refused; the pruned model exports and fuses with its own head count."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pydantic import ValidationError

from passes.base import PassError
from passes.ort.fusion import heads_and_hidden
from passes.train import prune as prune_module
from passes.train.prune import Prune, kept_count
from schemas.steps import PruneConfig
from tests.builders import export_classifier, make_artifact, op_counts, run_onnx

LABELS = ["ham", "spam"]


def config(**fields):
    return PruneConfig(type="prune", model="m", data="data", **fields)


def classifier(folder, step="m"):
    return make_artifact("hf_model", folder, {"task": "text-classification", "labels": LABELS}, step)


@pytest.fixture
def dead_units(tiny_bert_classifier_dir, tmp_path):
    """The tiny classifier (2 layers, 2 heads of 16, 64 neurons) with head 1 of layer 0 and neurons 5 and 40 of
    layer 1 made dead (their output weights zero): their importance is exactly 0, so pruning must cut them."""
    import torch
    from transformers import BertForSequenceClassification

    folder = tmp_path / "dead"
    shutil.copytree(tiny_bert_classifier_dir, folder)
    model = BertForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.output.dense.weight[:, 16:32] = 0
        model.bert.encoder.layer[1].output.dense.weight[:, [5, 40]] = 0
    model.save_pretrained(folder)
    return folder


def run(folder, dataset, make_ctx, step="pruned", **fields):
    ctx = make_ctx(step)
    fields.setdefault("max_accuracy_drop_pt", None)  # a random tiny model: its accuracy is chance either way
    meta = Prune(config(**fields)).run({"model": classifier(folder), "data": dataset}, ctx)
    return ctx, meta


def test_the_least_important_units_are_cut_and_the_folder_reloads_as_pruned(dead_units, tiny_dataset, make_ctx, one_thread):
    import torch
    from transformers import AutoModelForSequenceClassification

    ctx, meta = run(dead_units, tiny_dataset, make_ctx, heads=1, ffn=0.5)
    # Layer 0 keeps its live head 0; in layer 1 the dead neurons 5 and 40 are among the 32 cut.
    assert meta["heads_kept_per_layer"][0] == [0]
    saved = json.loads((ctx.out_dir / "config.json").read_text())
    assert saved["intermediate_size"] == 32
    assert {int(k): v for k, v in saved["pruned_heads"].items()} == {0: [1], 1: [1 - meta["heads_kept_per_layer"][1][0]]}
    model = AutoModelForSequenceClassification.from_pretrained(ctx.out_dir)
    layer = model.bert.encoder.layer[1]
    assert tuple(layer.attention.self.query.weight.shape) == (16, 32)
    assert tuple(layer.intermediate.dense.weight.shape) == (32, 32) and tuple(layer.output.dense.weight.shape) == (32, 32)
    original = AutoModelForSequenceClassification.from_pretrained(dead_units).bert.encoder.layer[1]
    kept = [j for j in range(64) if j not in (5, 40)]
    found = {j for j in kept for i in range(32) if torch.equal(layer.intermediate.dense.weight[i], original.intermediate.dense.weight[j])}
    assert len(found) == 32 and not found & {5, 40}
    assert meta["heads_kept"] == 1 and meta["ffn_kept"] == 32 and meta["num_parameters"] < meta["num_parameters_before"]
    # Per token: 4 x 32 x 16 (one head's QKV + output) + 2 x 32 x 32 (the ffn), against 4 x 32 x 32 + 2 x 32 x 64.
    assert meta["layer_work_share"] == pytest.approx((4 * 32 * 16 + 2 * 32 * 32) / (4 * 32 * 32 + 2 * 32 * 64), abs=1e-4)
    assert meta["reload_max_abs_diff"] <= 1e-5 and meta["val_accuracy_before"] is not None
    assert "kept 1/2 heads, 32/64 feed-forward neurons in each of 2 layers" in meta["summary"]
    assert meta["metrics"]["val_accuracy_after"] == meta["val_accuracy_after"]


def test_scores_are_taylor_importance_per_example(dead_units, tiny_dataset, one_thread, make_ctx):
    """The scores match |sum activation x gradient| computed one example at a time, and a dead unit scores 0."""
    import torch
    from transformers import AutoTokenizer

    from passes.hf.loading import load_dataset_dict, load_model
    from passes.train.data import collator_for, prepare_data

    tokenizer = AutoTokenizer.from_pretrained(dead_units)
    train, _, _ = prepare_data(load_dataset_dict(tiny_dataset), tokenizer, "text-classification", 32, make_ctx("s"))
    rows = train.select(range(12))
    model, _ = load_model(dead_units, "text-classification", LABELS)
    model.eval()
    layers = prune_module.encoder_layers(model, "m")
    collate = collator_for("text-classification", tokenizer)
    heads, neurons = prune_module.importance(model, layers, rows, collate, 5, make_ctx("s2"))
    assert heads[0, 1] == 0 and neurons[1, 5] == 0 and neurons[1, 40] == 0
    # Plain numbers: scores that carried the autograd graph would keep every batch's graph alive (a leak of GBs).
    assert not heads.requires_grad and not neurons.requires_grad and heads.grad_fn is None
    assert (heads[:, 0] > 0).all() and (neurons[0] > 0).sum() > 32
    one_by_one, _ = prune_module.importance(model, layers, rows, collate, 1, make_ctx("s3"))
    torch.testing.assert_close(heads, one_by_one, rtol=1e-4, atol=1e-9)


def test_fractions_and_counts():
    assert kept_count(None, 12, "heads") == 12 and kept_count(0.5, 12, "heads") == 6 and kept_count(0.25, 1536, "ffn") == 384
    assert kept_count(0.01, 12, "heads") == 1 and kept_count(6, 12, "heads") == 6
    with pytest.raises(PassError, match="the model has 12 per layer"):
        kept_count(13, 12, "heads")


def test_the_accuracy_guard_fails_the_step_and_names_the_way_out(tiny_bert_classifier_dir, tiny_dataset, make_ctx, monkeypatch, one_thread):
    measured = iter([0.9, 0.8])
    monkeypatch.setattr(prune_module, "accuracy", lambda *a, **k: next(measured))
    ctx = make_ctx("guarded")
    with pytest.raises(PassError, match=r"cost 10.00 points of validation accuracy \(0.9000 -> 0.8000\).*finetune"):
        Prune(config(ffn=0.5, max_accuracy_drop_pt=5)).run(
            {"model": classifier(tiny_bert_classifier_dir), "data": tiny_dataset}, ctx)
    assert not (ctx.out_dir / "config.json").exists()  # nothing saved


@pytest.mark.parametrize("fields, message", [
    ({"heads": 3}, "the model has 2 per layer"),
    ({"heads": 2, "ffn": 64}, "nothing would be pruned"),
])
def test_requests_the_model_cannot_take_are_refused(tiny_bert_classifier_dir, tiny_dataset, make_ctx, fields, message):
    with pytest.raises(PassError, match=message):
        run(tiny_bert_classifier_dir, tiny_dataset, make_ctx, **fields)


def test_models_prune_cannot_work_on_are_refused(tiny_llama_dir, tiny_bert_classifier_dir, tiny_dataset, make_ctx, tmp_path):
    lm = make_artifact("hf_model", tiny_llama_dir, {"task": "causal-lm", "labels": None}, "lm")
    with pytest.raises(PassError, match="works on text-classification models"):
        Prune(config(ffn=0.5)).run({"model": lm, "data": tiny_dataset}, make_ctx("a"))
    unlabelled = make_artifact("dataset", tiny_dataset.path, {**tiny_dataset.meta, "format": "instruction", "labels": None}, "d")
    with pytest.raises(PassError, match="scores on labelled data"):
        Prune(config(ffn=0.5)).run({"model": classifier(tiny_bert_classifier_dir), "data": unlabelled}, make_ctx("b"))
    _, meta = run(tiny_bert_classifier_dir, tiny_dataset, make_ctx, step="once", heads=1)
    with pytest.raises(PassError, match="already pruned"):
        run(make_ctx("once").out_dir, tiny_dataset, make_ctx, step="twice", ffn=0.5)


@pytest.mark.parametrize("fields, message", [
    ({}, "nothing to prune"),
    ({"heads": 1.0}, "neither a count"),
    ({"ffn": 0}, "at least one"),
    ({"heads": True}, "not a boolean"),
])
def test_the_config_says_what_is_wrong(fields, message):
    with pytest.raises(ValidationError, match=message):
        config(**fields)


def test_a_pruned_model_exports_and_fuses_with_its_own_heads(dead_units, tiny_dataset, make_ctx, tmp_path, one_thread):
    """The fusion takes the kept heads from config.pruned_heads (not the config's original count): the fused
    Attention runs one head of 16 and the int8 model's logits follow the pruned PyTorch model's."""
    import onnx
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from passes.onnx.quantize import Quantize
    from schemas.steps import QuantizeConfig

    ctx, _ = run(dead_units, tiny_dataset, make_ctx, heads=1, ffn=0.5)
    saved = json.loads((ctx.out_dir / "config.json").read_text())
    assert heads_and_hidden(type("C", (), saved)) == (1, 16)
    onnx_art = export_classifier(ctx.out_dir, tmp_path / "onnx")
    qctx = make_ctx("int8")
    meta = Quantize(QuantizeConfig(type="quantize", model="onnx", method="dynamic_int8")).run({"model": onnx_art}, qctx)
    assert meta["fused"]["Attention"] == 2 and op_counts(qctx.out_dir)["QAttention"] == 2
    graph = onnx.load(str(qctx.out_dir / "model.onnx")).graph
    assert {a.i for n in graph.node if n.op_type == "QAttention" for a in n.attribute if a.name == "num_heads"} == {1}
    texts = ["win a free prize now txt claim", "see you at lunch tomorrow mum"]
    with torch.no_grad():
        enc = AutoTokenizer.from_pretrained(ctx.out_dir)(texts, padding=True, return_tensors="pt")
        want = AutoModelForSequenceClassification.from_pretrained(ctx.out_dir)(**enc).logits.numpy()
    got = run_onnx(qctx.out_dir, texts)
    assert np.abs(got - want).max() < 0.1 * max(1.0, float(np.abs(want).max()))


def test_uneven_pruned_heads_leave_the_optimizer_to_read_each_layer():
    cfg = type("C", (), {"num_attention_heads": 12, "hidden_size": 384, "num_hidden_layers": 2,
                         "pruned_heads": {"0": [1, 2], "1": [3]}})
    assert heads_and_hidden(cfg) == (0, 0)
    assert heads_and_hidden(type("D", (), {"num_attention_heads": 12, "hidden_size": 384})) == (12, 384)
