"""`tune_session`: candidate session options timed side by side on real texts; the fastest is written beside the
model, and evaluate and the exported inference.py run the model with it."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from passes import PassError
from passes.evaluate import latency as _latency
from passes.evaluate import tune
from passes.evaluate.steps import Evaluate
from passes.evaluate.tune import TuneSession
from schemas import Target
from schemas.steps import EvaluateConfig, TuneSessionConfig
from tests.builders import make_artifact


def _tune(model, data, make_ctx, target=None, **kw):
    cfg = TuneSessionConfig(type="tune_session", model=model.step, data=data.step, repeats=6, blocks=2, warmup=1, **kw)
    ctx = make_ctx("tuned", **({"target": target} if target else {}))
    return ctx, TuneSession(cfg).run({"model": model, "data": data}, ctx)


def test_candidates_are_the_product_of_the_lists_with_onnxruntimes_defaults_first():
    cfg = TuneSessionConfig(type="tune_session", model="m", data="d", threads=[2, 1, 2], spinning=[False])
    assert cfg.threads == [1, 2]
    tried = tune.candidates(cfg, cores=4)
    assert tried[0] == {"intra_op_num_threads": 4, "graph_optimization_level": "all", "allow_spinning": True,
                        "execution_mode": "sequential"}  # the defaults, though the lists leave them out
    assert len(tried) == 1 + 2 * 2 and len({json.dumps(c, sort_keys=True) for c in tried}) == len(tried)
    assert tune.thread_choices(2) == [1, 2] and tune.thread_choices(6) == [1, 2, 4, 6] and tune.thread_choices(1) == [1]
    default_included = TuneSessionConfig(type="tune_session", model="m", data="d", threads=[4])
    assert len(tune.candidates(default_included, cores=4)) == 1 * 2 * 2  # not listed twice
    rows = [{"latency_p50_ms": 2.0, "throughput_sps": 500}, {"latency_p50_ms": 1.5, "throughput_sps": 400}]
    assert tune.pick(rows, "latency_p50") is rows[1] and tune.pick(rows, "throughput") is rows[0]


def test_the_fastest_settings_are_kept_beside_the_unchanged_model(tiny_onnx_classifier, tiny_dataset, make_ctx, monkeypatch):
    # A fake clock: the candidate with 1 thread and no spinning is the fastest, whatever the machine does.
    calls = []
    real_cycling = _latency.cycling

    def timed_cycling(runs):
        run = real_cycling(runs)
        name = len(calls)
        calls.append(name)
        return lambda: (ticks.append(1.0 if name == 3 else 2.0), run())[1]

    ticks: list[float] = []
    clock_value = [0.0]

    def clock():
        clock_value[0] += ticks.pop() if ticks else 0.0
        return clock_value[0]

    monkeypatch.setattr(_latency, "cycling", timed_cycling)
    monkeypatch.setattr(_latency, "clock", clock)
    ctx, meta = _tune(tiny_onnx_classifier, tiny_dataset, make_ctx, threads=[1, 2], graph_levels=["all"], spinning=[True, False],
                      target=Target(threads=2))
    labels = [row["label"] for row in meta["tuning"]]
    assert labels == ["2 threads, all, spin, sequential", "1 thread, all, spin, sequential",
                      "1 thread, all, no spin, sequential", "2 threads, all, no spin, sequential"]
    chosen = meta["tuning"][3]
    assert meta["session_options"] == {"intra_op_num_threads": 2, "graph_optimization_level": "all", "allow_spinning": False,
                                       "execution_mode": "sequential"} == {k: chosen[k] for k in meta["session_options"]}
    assert meta["gain"] > 1 and meta["isa"] and "of 4 settings" in meta["summary"]
    doc = json.loads((ctx.out_dir / "session_options.json").read_text())
    assert doc["allow_spinning"] is False and len(doc["candidates"]) == 4 and doc["isa"] == meta["isa"]
    src = tiny_onnx_classifier.path
    assert (ctx.out_dir / "model.onnx").read_bytes() == (src / "model.onnx").read_bytes()
    assert (ctx.out_dir / "tokenizer.json").is_file() and (ctx.out_dir / "inference.py").is_file()


def test_evaluate_and_inference_py_run_the_tuned_settings(tiny_onnx_classifier, tiny_dataset, make_ctx, tmp_path):
    folder = tmp_path / "tuned"
    shutil.copytree(tiny_onnx_classifier.path, folder)
    settings = {"intra_op_num_threads": 1, "graph_optimization_level": "extended", "allow_spinning": False,
                "execution_mode": "sequential"}
    (folder / "session_options.json").write_text(json.dumps({**settings, "candidates": []}))
    tuned = make_artifact("onnx_model", folder, tiny_onnx_classifier.meta, "tuned")
    cfg = EvaluateConfig(type="evaluate", models=["tuned"], data="data", metrics=["accuracy", "latency"], repeats=5, blocks=1,
                         warmup=1, threads=2)
    meta = Evaluate(cfg).run({"models": [tuned], "data": tiny_dataset}, make_ctx("report"))
    assert meta["metrics"]["tuned"]["session_options"] == settings

    spec = importlib.util.spec_from_file_location("tuned_inference", folder / "inference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    session = script.make_session(None)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == script.ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert script.make_session(3).get_session_options().intra_op_num_threads == 3  # --threads wins


def test_a_causal_lm_or_a_split_without_rows_is_refused(tiny_onnx_classifier, tiny_dataset, make_ctx, tmp_path):
    lm = make_artifact("onnx_model", tiny_onnx_classifier.path, {**tiny_onnx_classifier.meta, "family": "causal_lm",
                                                                 "task": "causal-lm"}, "lm")
    with pytest.raises(PassError, match="causal LM"):
        _tune(lm, tiny_dataset, make_ctx)
    (tmp_path / "no_model").mkdir()
    with pytest.raises(PassError, match="step 'hf' has no model.onnx in .*; tune_session takes an ONNX model step"):
        _tune(make_artifact("onnx_model", tmp_path / "no_model", {}, "hf"), tiny_dataset, make_ctx)
    with pytest.raises(PassError, match="split 'train'"):
        cfg = TuneSessionConfig(type="tune_session", model="m", data="d", split="train")
        empty = tmp_path / "empty"
        from datasets import Dataset, DatasetDict

        DatasetDict(test=Dataset.from_dict({"text": ["a"], "label": [0]})).save_to_disk(str(empty / "data"))
        TuneSession(cfg).run({"model": tiny_onnx_classifier, "data": make_artifact("dataset", empty, {}, "d")}, make_ctx("x"))
