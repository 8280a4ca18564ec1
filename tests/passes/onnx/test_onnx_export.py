"""export_onnx on tiny BERT models: the graph matches PyTorch, the check catches a wrong graph, the folder
is deployable (its inference.py runs with onnxruntime + tokenizers only)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from passes.base import PassError, SimpleContext
from passes.onnx.export import ExportOnnx
from passes.ort.checks import sample_sentences
from schemas.steps import ExportOnnxConfig
from tests.builders import make_artifact

TEXTS = ["win a free prize now txt claim", "see you at lunch tomorrow mum", "ok"]


def export(model_dir, out_dir, task="text-classification", labels=("ham", "spam"), **config):
    """Run export_onnx by hand on a model folder; returns the meta."""
    out_dir.mkdir(parents=True, exist_ok=True)
    art = make_artifact("hf_model", model_dir, {"task": task, "labels": list(labels) if labels else None}, step="base")
    cfg = ExportOnnxConfig(type="export_onnx", model="base", **config)
    return ExportOnnx(cfg).run({"model": art}, SimpleContext(step="onnx", out_dir=out_dir, quiet=True))


@pytest.fixture(scope="module")
def exported(tiny_bert_classifier_dir, tmp_path_factory):
    """The tiny classifier exported once for this module: (folder, meta)."""
    out = tmp_path_factory.mktemp("exported") / "onnx"
    return out, export(tiny_bert_classifier_dir, out)


def torch_logits(model_dir, texts, padding_side="right"):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side=padding_side)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(**tok(texts, padding=True, return_tensors="pt")).logits.numpy()


def test_export_matches_pytorch_with_dynamic_axes(exported, tiny_bert_classifier_dir):
    import onnx
    import onnxruntime as ort
    from transformers import AutoTokenizer

    folder, meta = exported
    assert meta["task"] == "text-classification"
    assert meta["labels"] == ["ham", "spam"]
    assert meta["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert meta["outputs"] == ["logits"] and meta["opset"] == 17 and meta["exporter"] == "torchscript"
    assert 0 <= meta["max_abs_diff"] <= 1e-4 and meta["size_mb"] > 0
    assert "max |ORT - PyTorch|" in meta["summary"]
    for name in ("model.onnx", "tokenizer.json", "config.json", "inference.py"):
        assert (folder / name).is_file(), name
    assert not (folder / ".export").exists() and not (folder / "model.onnx.data").exists()
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "ham", "1": "spam"}

    proto = onnx.load(str(folder / "model.onnx"))
    # Standard ONNX operators only (portable); fusion is quantize's business.
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    names = [n.name for n in proto.graph.node]
    assert all(names) and len(set(names)) == len(names)  # quantizers key nodes by name
    onnx.checker.check_model(proto, full_check=True)
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    # A padded batch of 3 (a shape the export never saw) gives PyTorch's logits.
    enc = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {k: enc[k].astype(np.int64) for k in meta["inputs"]})
    np.testing.assert_allclose(got, torch_logits(tiny_bert_classifier_dir, TEXTS), atol=1e-5)
    # Left padding gives PyTorch's logits too.
    enc = AutoTokenizer.from_pretrained(folder, padding_side="left")(TEXTS, padding=True, return_tensors="np")
    assert enc["attention_mask"][:, 0].min() == 0  # really left-padded
    (got,) = session.run(None, {k: enc[k].astype(np.int64) for k in meta["inputs"]})
    np.testing.assert_allclose(got, torch_logits(tiny_bert_classifier_dir, TEXTS, padding_side="left"), atol=1e-5)


def test_feature_extraction_exports_last_hidden_state(tiny_bert_dir, tmp_path):
    """An encoder at opset 21 (above the TorchScript exporter's 20: the dynamo exporter takes it)."""
    meta = export(tiny_bert_dir, tmp_path / "enc", task="feature-extraction", labels=None, opset=21, check_samples=2)
    assert meta["outputs"] == ["last_hidden_state"] and meta["labels"] is None
    assert meta["opset"] == 21 and meta["exporter"] == "dynamo" and meta["max_abs_diff"] <= 1e-4
    import onnx

    proto = onnx.load(str(tmp_path / "enc" / "model.onnx"))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {21}
    dims = [d.dim_param for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert dims[:2] == ["batch", "sequence"]
    # The deployable script prints an embedding for an encoder.
    run = subprocess.run([sys.executable, str(tmp_path / "enc" / "inference.py"), "--json", "hello there"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    vector = json.loads(run.stdout)["embedding"]
    assert len(vector) == 32 and abs(np.linalg.norm(vector) - 1) < 1e-3


def _shift_classifier_bias(path, delta=0.25):
    """Add `delta` to the classifier bias of the ONNX model at `path` (in place)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    for init in proto.graph.initializer:
        if init.name.endswith("classifier.bias"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + delta, init.name))
            break
    else:
        raise AssertionError("no classifier bias in the graph")
    onnx.save(proto, str(path))


def test_check_fails_when_onnx_differs_from_pytorch(tiny_bert_classifier_dir, tmp_path, monkeypatch):
    """A graph whose classifier bias is off by 0.25 must fail the comparison with the numbers in the message."""
    import passes.onnx.export as mod

    real_export = mod._export

    def corrupted(*args, **kwargs):
        path = real_export(*args, **kwargs)
        _shift_classifier_bias(path)
        return path

    monkeypatch.setattr(mod, "_export", corrupted)
    with pytest.raises(PassError, match=r"differs from PyTorch's by 0\.25.*atol=0\.0001"):
        export(tiny_bert_classifier_dir, tmp_path / "bad", check_samples=2)


def test_tight_atol_fails(tiny_bert_classifier_dir, tmp_path, monkeypatch):
    """The threshold is the config's: a diff of 1e-7 passes atol 1e-6 and fails atol 1e-9."""
    import passes.onnx.export as mod

    monkeypatch.setattr(mod, "_compare", lambda *a, **k: (1e-7, "input of shape 1x5"))
    assert export(tiny_bert_classifier_dir, tmp_path / "ok", atol=1e-6, check_samples=1)["max_abs_diff"] == 1e-7
    with pytest.raises(PassError, match=r"1e-07 \(on input of shape 1x5\), more than atol=1e-09"):
        export(tiny_bert_classifier_dir, tmp_path / "tight", atol=1e-9, check_samples=1)


@pytest.mark.parametrize("task, fields, message", [
    ("causal-lm", {"exporter": "torch"}, "is a causal LM: export it with `exporter: genai`"),
    ("text-classification", {"exporter": "genai"}, "`exporter: genai` and `adapters` are for causal LMs"),
    ("token-classification", {}, "not 'token-classification'"),
])
def test_unsupported_tasks_are_refused(tmp_path, task, fields, message):
    with pytest.raises(PassError, match=message):
        export(tmp_path, tmp_path / "out", task=task, **fields)


def test_sample_sentences_have_different_lengths():
    samples = sample_sentences(6, max_words=40)
    assert len(samples) == 6 and len({len(s.split()) for s in samples}) == 6
    assert all(3 <= len(s.split()) <= 40 for s in samples)


def test_inference_script_classifies_without_torch(exported, tiny_bert_classifier_dir):
    folder, _ = exported
    script = folder / "inference.py"
    run = subprocess.run([sys.executable, "-X", "importtime", str(script), "--json", *TEXTS],
                         capture_output=True, text=True, timeout=120, cwd=folder.parent)
    assert run.returncode == 0, run.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported and "tokenizers" in imported
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "transformers"))
    assert not heavy, heavy

    rows = [json.loads(line) for line in run.stdout.splitlines()]
    logits = torch_logits(tiny_bert_classifier_dir, TEXTS)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert [r["text"] for r in rows] == TEXTS
    assert [r["label"] for r in rows] == [["ham", "spam"][i] for i in logits.argmax(-1)]
    np.testing.assert_allclose([r["score"] for r in rows], probs.max(-1), atol=1e-5)

    plain = subprocess.run([sys.executable, str(script), "--threads", "1", TEXTS[0]], capture_output=True, text=True, timeout=120)
    label, score, text = plain.stdout.strip().split("\t")
    assert label == rows[0]["label"] and abs(float(score) - rows[0]["score"]) < 1e-4 and text == TEXTS[0]


def test_inference_script_batches_by_length_without_padding_waste(exported):
    """inference.py groups sentences of similar length and pads each model call only to its longest member."""
    import importlib.util

    folder, _ = exported
    spec = importlib.util.spec_from_file_location("deployed_inference", folder / "inference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    texts = ["ok", "a much longer message about the prize draw you won this week", "see you", "hi there friend"]
    config, tok_config = script._read_json("config.json"), script._read_json("tokenizer_config.json")
    tokenizer = script.load_tokenizer(config, tok_config)
    session = script.make_session(1)
    lengths = [len(tokenizer.encode(t).ids) for t in texts]
    batches = script.length_sorted_batches(tokenizer, texts, 2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)  # shortest first: neighbours in length share a call
    for batch in batches:
        feed = script.encode(tokenizer, session, [texts[i] for i in batch])
        assert feed["input_ids"].shape == (len(batch), max(lengths[i] for i in batch))  # padded to its longest only
    single = script.encode(tokenizer, session, [texts[0]])
    assert single["attention_mask"].all()  # one sentence per call: no padding at all


def test_new_head_is_reported_and_reproducible(tiny_bert_dir, tmp_path):
    """An encoder exported as a classifier gets a new (seeded) head: the log says so, and two runs agree."""
    ctx = SimpleContext(step="onnx", out_dir=tmp_path / "a", quiet=True)
    ctx.out_dir.mkdir()
    art = make_artifact("hf_model", tiny_bert_dir, {"task": "text-classification", "labels": None}, step="base")
    meta = ExportOnnx(ExportOnnxConfig(type="export_onnx", model="base", check_samples=1)).run({"model": art}, ctx)
    assert any("newly initialized" in line and "classifier" in line for line in ctx.lines)
    assert meta["labels"] == ["LABEL_0", "LABEL_1"]
    export(tiny_bert_dir, tmp_path / "b", labels=None, check_samples=1)
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
