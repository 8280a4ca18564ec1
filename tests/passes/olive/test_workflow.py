"""Olive steps inside a workflow, chained with native steps both ways: export_onnx -> Olive
OrtTransformersOptimization -> Olive OnnxStaticQuantization calibrated on our load_data split -> evaluate,
deployed as an output; a re-run runs nothing (the recipe spam-minilm-olive.yaml on tiny models)."""

from __future__ import annotations

import json

from tests.builders import op_counts
from tests.helpers import cli, write


def test_native_and_olive_steps_chain_cache_and_deploy(tmp_path, tiny_bert_classifier_dir, tiny_csv, capsys):
    wf = write(tmp_path, f"""
        version: 1
        name: olive-chain
        target: {{device: cpu, threads: 1}}
        steps:
          base: {{type: model, path: {tiny_bert_classifier_dir}, task: text-classification}}
          data: {{type: load_data, path: {tiny_csv}, text: text, label: label, splits: {{train: 0.6, validation: 0.2, test: 0.2}}}}
          onnx: {{type: export_onnx, model: base, check_samples: 1}}
          opt:
            type: olive
            pass: OrtTransformersOptimization
            model: onnx
            config: {{model_type: bert, num_heads: 2, hidden_size: 32}}
          int8:
            type: olive
            pass: OnnxStaticQuantization
            model: opt
            data: data
            split: validation
            samples: 16
            config: {{quant_format: QDQ, per_channel: false}}
          native_int8: {{type: quantize, model: opt}}
          report: {{type: evaluate, models: [onnx, int8, native_int8], data: data, metrics: [accuracy, latency, size], repeats: 5, blocks: 1, warmup: 1}}
        outputs: {{model: int8, report: report}}
    """)
    out, cache = tmp_path / "out", tmp_path / "c"
    assert cli("run", wf, "--cache-dir", cache, "--output", out, "--quiet") == 0
    doc = json.loads((out / "run.json").read_text())
    assert {s["status"] for s in doc["steps"].values()} == {"ran"}
    assert doc["steps"]["int8"]["kind"] == "onnx_model" and doc["steps"]["opt"]["kind"] == "onnx_model"
    assert op_counts(out / "model")["QuantizeLinear"] > 0
    assert (out / "model" / "inference.py").is_file() and (out / "model" / "tokenizer.json").is_file()
    m = doc["metrics"]["report"]
    assert set(m) == {"onnx", "int8", "native_int8"} and all(0 <= m[k]["accuracy"] <= 1 for k in m)
    capsys.readouterr()
    assert cli("run", wf, "--cache-dir", cache, "--output", out, "--quiet") == 0
    again = json.loads((out / "run.json").read_text())
    assert {s["status"] for s in again["steps"].values()} == {"cached"}
    assert cli("plan", wf, "--cache-dir", cache, "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["status"] == "cached" for r in rows)


def test_a_failing_olive_step_exits_1_and_caches_nothing(tmp_path, tiny_llama_dir, capsys):
    """Olive's Rtn refuses a group size that does not divide the layers (32 % 7): the run says so and exits 1."""
    from runner.cache import Cache

    wf = write(tmp_path, f"""
        version: 1
        name: olive-fails
        steps:
          base: {{type: model, path: {tiny_llama_dir}}}
          rtn: {{type: olive, pass: Rtn, model: base, config: {{bits: 4, group_size: 7}}}}
    """)
    cache = tmp_path / "c"
    assert cli("run", wf, "--cache-dir", cache, "--output", tmp_path / "out") == 1
    out = capsys.readouterr()
    assert "Olive's Rtn failed" in out.out + out.err and "Traceback" not in out.out + out.err
    assert {e.step for e in Cache(cache).entries()} == {"base"}  # the failure left nothing in the cache
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert doc["status"] == "failed" and doc["steps"]["rtn"]["status"] == "failed"
