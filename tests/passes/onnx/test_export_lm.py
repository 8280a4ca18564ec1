"""Tests of export_onnx for causal LMs: optimum's exporter and the onnxruntime-genai builder, on tiny Llamas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from passes.base import PassError, SimpleContext
from passes.onnx.export import ExportOnnx
from schemas.steps import ExportOnnxConfig
from schemas.workflow import Target
from tests.builders import make_artifact


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
    from passes.onnx.export_lm import genai_choices

    lines = []
    cfg = ExportOnnxConfig(type="export_onnx", model="llm")
    assert genai_choices(cfg, Target(), lines.append) == ("int4", "cpu")
    assert genai_choices(cfg, Target(device="gpu", fallback="cpu"), lines.append) == ("fp16", "cuda")
    assert "chosen for the target device gpu" in lines[-1]
    pinned = ExportOnnxConfig(type="export_onnx", model="llm", precision="fp32", execution_provider="cpu")
    assert genai_choices(pinned, Target(device="gpu"), lines.append) == ("fp32", "cpu") and not pinned.uses_target
    assert cfg.uses_target and not ExportOnnxConfig(type="export_onnx", model="llm", exporter="optimum").uses_target
    # the int4 cpu defaults differ per instruction set: keyed by it, unless the step picks its own int4 options
    assert cfg.uses_isa and not pinned.uses_isa
    assert not ExportOnnxConfig(type="export_onnx", model="llm", genai_options={"int4_block_size": 32}).uses_isa
    assert not ExportOnnxConfig(type="export_onnx", model="llm", builder_defaults=True).uses_isa


def test_genai_int4_export_records_the_isa_it_chose_for(tiny_chat_llama_dir, tmp_path):
    from passes.ort.genai_build import DEFAULT_INT4_OPTIONS

    meta, _ = export(tiny_chat_llama_dir, tmp_path / "vnni", target=Target(isa="avx512_vnni", threads=1))
    assert meta["choices"] == {"isa": "avx512_vnni", "int4_options": DEFAULT_INT4_OPTIONS["avx512_vnni"]}
    names = {p.name for p in (tmp_path / "vnni").iterdir()}
    assert "inference.py" in names and "special_tokens_map.json" not in names


def test_int4_quantize_of_an_exported_llm(tiny_llama_dir, tmp_path):
    """quantize int4 on an LLM export: MatMulNBits with the accuracy level asked, companions kept, still decodes."""
    import onnx
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    from passes.onnx.quantize import Quantize
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


# --- onnxruntime-genai -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def genai_fp32(tiny_chat_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("genai")
    meta, ctx = export(tiny_chat_llama_dir, out, precision="fp32", target=Target(threads=1))
    return out, meta, ctx


def test_genai_export_writes_a_deployable_folder(genai_fp32, tiny_chat_llama_dir):
    import onnxruntime_genai as og

    folder, meta, ctx = genai_fp32
    assert (meta["format"], meta["precision"], meta["execution_provider"]) == ("genai", "fp32", "cpu")
    assert {"genai_config.json", "model.onnx", "tokenizer.json", "inference.py"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 1
    assert meta["builder"]["builder"].startswith("onnxruntime-genai 0.14") and meta["size_mb"] > 0
    assert isinstance(meta["check_answer"], str)
    og.Model(str(folder))  # loads


def test_genai_folder_runs_with_the_threads_of_the_machine_at_hand(genai_fp32, tmp_path):
    """The folder's thread count is the build machine's: inference.py and evaluate (GenaiSession) lower it to the
    CPUs they may use (more threads than cores wait on each other); `--threads` / evaluate's `threads` choose;
    genai_config.json stays as it is."""
    from passes.ort.genai_run import GenaiSession
    from passes.ort.sessions import cpu_cores

    import importlib.util
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "moved"
    shutil.copytree(genai_fp32[0], folder)
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = 512  # built on a bigger machine
    (folder / "genai_config.json").write_text(json.dumps(config))
    spec = importlib.util.spec_from_file_location("deployed_chat", folder / "inference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.thread_count(None, 512, 2) == 2 and script.thread_count(None, 1, 2) == 1
    assert script.thread_count(3, 512, 2) == 3 and script.thread_count(None, None, 2) is None
    # onnxruntime starts its pool threads with the session: capped, the model adds a few threads, not 511
    threads = lambda: len(list(Path("/proc/self/task").iterdir()))
    before = threads()
    model = script.load_model(None)
    assert threads() - before < 32, threads() - before
    del model

    run = lambda *args: subprocess.run([sys.executable, str(folder / "inference.py"), "--max-new-tokens", "3", *args],
                                       capture_output=True, text=True, timeout=120)
    capped = run("say cash")
    assert capped.returncode == 0, capped.stderr
    assert f"asks for 512 threads and this machine has {script.available_cpus()} CPUs: using" in capped.stderr
    chosen = run("--threads", "1", "say cash")
    assert chosen.returncode == 0 and "asks for" not in chosen.stderr, chosen.stderr
    assert run("--threads", "0", "hi").returncode == 2
    assert GenaiSession(folder).threads == min(512, cpu_cores()) == script.available_cpus()
    assert GenaiSession(folder, threads=1).threads == 1
    assert json.loads((folder / "genai_config.json").read_text()) == config


def test_genai_errors_before_building(tiny_chat_llama_dir, tmp_path):
    with pytest.raises(PassError, match="does not make fp16 models for 'cpu'"):
        export(tiny_chat_llama_dir, tmp_path / "a", precision="fp16", execution_provider="cpu")
    with pytest.raises(PassError, match="unknown genai builder option 'int4_blocksize'"):
        export(tiny_chat_llama_dir, tmp_path / "b", genai_options={"int4_blocksize": 32})
    with pytest.raises(PassError, match="builder_defaults: true` runs the builder with its own settings"):
        export(tiny_chat_llama_dir, tmp_path / "c", builder_defaults=True, genai_options={"prune_lm_head": True})


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    from datasets import Dataset, DatasetDict

    pairs = [(f"say {w} please {i}", w) for i, w in enumerate(["cash", "home", "lunch", "prize"] * 10)]
    part = lambda rows: Dataset.from_dict({"prompt": [p for p, _ in rows], "response": [r for _, r in rows]})
    folder = tmp_path_factory.mktemp("qa")
    DatasetDict(train=part(pairs[:32]), test=part(pairs[32:])).save_to_disk(str(folder / "data"))
    return make_artifact("dataset", folder, {"labels": None, "format": "instruction",
                                             "chat": {"chat_template": False, "system_prompt": None}}, "qa")


def test_genai_model_is_evaluated_like_pytorch(genai_fp32, tiny_chat_llama_dir, qa, make_ctx):
    from passes.evaluate.steps import Evaluate
    from schemas.steps import EvaluateConfig

    folder, meta, _ = genai_fp32
    models = [llm(tiny_chat_llama_dir), make_artifact("onnx_model", folder, meta, "genai")]
    cfg = EvaluateConfig(type="evaluate", models=["llm", "genai"], data="qa", threads=1, max_new_tokens=5,
                         generation_runs=2, generate_samples=2,
                         metrics=["perplexity", "generate", "tokens_per_second", "time_to_first_token", "size"])
    result = Evaluate(cfg).run({"models": models, "data": qa}, make_ctx("report"))["metrics"]
    assert result["genai"]["runtime"] == "onnxruntime-genai (cpu, 1 thread)" and result["genai"]["threads"] == 1
    assert result["genai"]["perplexity"] == pytest.approx(result["llm"]["perplexity"], rel=1e-3)
    assert result["genai"]["tokens_per_second"] > 0 and result["genai"]["size_mb"] > 0


def _adapter(tiny_chat_llama_dir, qa, tmp_path, name, **fields):
    from passes.train.steps import Lora
    from schemas.steps import LoraConfig

    out = tmp_path / name
    out.mkdir()
    cfg = LoraConfig(type="lora", model="llm", data="qa", max_steps=3, batch_size=8, eval_strategy="no",
                     learning_rate=5e-2, **fields)
    meta = Lora(cfg).run({"model": llm(tiny_chat_llama_dir), "data": qa}, SimpleContext(name, out, quiet=True))
    return make_artifact("adapter", out, meta, name)


def test_multi_lora_export_switches_adapters_at_run_time(tiny_chat_llama_dir, qa, tmp_path):
    import subprocess
    import sys

    from passes.ort import genai_run as _genai_run

    a = _adapter(tiny_chat_llama_dir, qa, tmp_path, "tune_a", r=4, target_modules=["q_proj", "v_proj"])
    b = _adapter(tiny_chat_llama_dir, qa, tmp_path, "tune_b", r=8, seed=7)
    meta, _ = export(tiny_chat_llama_dir, tmp_path / "multi", precision="fp32", adapters=["tune_a", "tune_b"],
                     inputs={"adapters": [a, b]}, target=Target(threads=1))
    folder = tmp_path / "multi"
    assert meta["adapters"] == ["tune_a", "tune_b"]
    assert {"tune_a.onnx_adapter", "tune_b.onnx_adapter"} <= {p.name for p in folder.iterdir()}
    session = _genai_run.GenaiSession(folder)
    p, r = session.tokenizer("say cash please 1")["input_ids"], session.tokenizer("cash", add_special_tokens=False)["input_ids"]
    scores = {name: _genai_run.sequence_nll(session, p, r, adapter=name) for name in (None, "tune_a", "tune_b")}
    assert len({round(v, 4) for v in scores.values()}) == 3  # base, a and b all differ
    # the deployable script switches adapters with onnxruntime-genai alone
    run = lambda *args: subprocess.run([sys.executable, str(folder / "inference.py"), "--max-new-tokens", "4", *args],
                                       capture_output=True, text=True, timeout=120)
    ok = run("--adapter", "tune_b", "say home please")
    assert ok.returncode == 0, ok.stderr
    missing = run("--adapter", "nope", "hi")
    assert missing.returncode != 0 and "no adapter 'nope' here (adapters: tune_a, tune_b)" in missing.stderr
