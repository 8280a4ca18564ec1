"""passes/_genai.py and _genai_run.py on a tiny random Llama built here: the genai builder, multi-LoRA, and the
folder run as `evaluate` runs it (perplexity, answers, decode speed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from passes.ort import genai_adapters as A
from passes.ort import genai_build as G
from passes.ort import genai_run as R
from passes.hf.chat import encode_prompt, split_pair
from passes.evaluate.lm import GenaiLM, TorchLM
from passes.base import PassError
from tests.builders import build_byte_level_tokenizer, make_artifact

#: Chat settings as a dataset's meta carries them (`_chat.chat_settings`).
CHAT = {"chat_template": True, "system_prompt": "you are fine"}
PAIRS = [("what is your name", "my name is cat"), ("how are you", "fine thanks"),
         ("where do you live", "in a big city"), ("is it sunny today", "the sky is blue")]
LM = {"task": "causal-lm", "labels": None, "model_type": "llama"}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A random 2-layer Llama with grouped KV heads (4 heads, 2 KV heads; conftest's have none) and weights
    large enough (init 0.1) for peaked logits, so perplexities differ; conftest's byte-level chat tokenizer."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(build_byte_level_tokenizer(tmp_path_factory.mktemp("tokenizer")))
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lora_adapters(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """Two different LoRA adapters (ranks 4 and 8, random non-zero lora_B); the second adapts fewer modules."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for seed, (name, rank, targets) in enumerate([("chat", 4, ["q_proj", "v_proj", "down_proj"]),
                                                  ("terse", 8, ["q_proj", "v_proj"])]):
        torch.manual_seed(seed + 1)
        base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
        model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                lora_dropout=0.0, task_type="CAUSAL_LM"))
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_B" in pname:
                    p.copy_(torch.randn_like(p) * 0.3)
        folder = tmp_path_factory.mktemp(f"adapter-{name}")
        model.save_pretrained(folder)
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def fp32_genai(tiny_llama, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("genai-fp32")
    facts = G.build_genai(tiny_llama, out, "fp32", "cpu", {}, 2, lambda line: None)
    return out, facts


@pytest.fixture(scope="module")
def torch_lm(tiny_llama) -> TorchLM:
    return TorchLM(make_artifact("hf_model", tiny_llama, LM, "llm"))


def _genai_lm(folder: Path) -> GenaiLM:
    return GenaiLM(make_artifact("onnx_model", folder, {**LM, "format": "genai"}, "genai"))


def _examples(tokenizer) -> list[tuple[list[int], list[int]]]:
    return [split_pair(tokenizer, p, r, CHAT) for p, r in PAIRS]


def _perplexity(runner: TorchLM | GenaiLM, examples: list[tuple[list[int], list[int]]]) -> float:
    """As `evaluate` reports it: exp(summed response NLL / response tokens)."""
    return math.exp(sum(runner.nll(p, r) for p, r in examples) / sum(len(r) for _, r in examples))


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(PassError, match="int4_block_size.*int4_is_symmetric"):
        G.check_options({"int4_blocksize": 32})
    with pytest.raises(PassError, match="set by the export itself"):
        G.check_options({"adapter_path": "x"})
    with pytest.raises(PassError, match="one of 16, 32"):
        G.check_options({"int4_block_size": 48})
    assert G.check_options({"int4_is_symmetric": False, "int4_nodes_to_exclude": ["/lm_head/MatMul", "/a/MatMul"],
                            "int4_op_types_to_quantize": ["MatMul", "Gather"]}) == [
        "int4_is_symmetric=false", "int4_nodes_to_exclude=/lm_head/MatMul,/a/MatMul",
        "int4_op_types_to_quantize=MatMul/Gather"]


def test_precision_the_provider_cannot_run_fails_before_building(tmp_path):
    for precision, provider, message in [("fp16", "cpu", "for cpu use fp32 or int4"), ("int8", "cpu", "no int8"),
                                         ("fp32", "dml", "for dml use fp16 or int4"), ("int3", "cpu", "unknown")]:
        with pytest.raises(PassError, match=message):
            G.build_genai(tmp_path, tmp_path / "out", precision, provider, {}, None, print)
    assert not (tmp_path / "out").exists()


def test_builder_failure_raises_with_its_last_lines(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NoSuchForCausalLM"], "model_type": "gpt2"}))
    with pytest.raises(PassError, match="(?s)builder failed.*not currently supported"):
        G.build_genai(tmp_path, tmp_path / "out", "fp32", "cpu", {}, None, lambda line: None)


def test_fp32_build_matches_pytorch(torch_lm, fp32_genai):
    import numpy as np
    import torch

    out, facts = fp32_genai
    config = json.loads((out / "genai_config.json").read_text())
    assert config["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 2
    assert facts["model_bytes"] > 0 and "model.onnx" in facts["files"] and facts["builder"].startswith("onnxruntime-genai")
    genai_lm = _genai_lm(out)
    examples = _examples(torch_lm.tokenizer)
    p, r = examples[0]
    with torch.no_grad():
        ref = torch_lm.model(torch.tensor([p + r])).logits[0, len(p) - 1:-1].numpy()
    np.testing.assert_allclose(R.response_logits(out, p, r), ref, atol=1e-4)
    assert _perplexity(genai_lm, examples) == pytest.approx(_perplexity(torch_lm, examples), rel=0.01)
    ids = encode_prompt(torch_lm.tokenizer, PAIRS[0][0], CHAT)
    assert genai_lm.answer(ids, 8) == torch_lm.answer(ids, 8)


@pytest.mark.slow
def test_pruned_lm_head_scores_token_by_token(tiny_llama, torch_lm, tmp_path):
    out = tmp_path / "pruned"
    G.build_genai(tiny_llama, out, "fp32", "cpu", {"prune_lm_head": True}, None, lambda line: None)
    examples = _examples(torch_lm.tokenizer)
    assert _perplexity(_genai_lm(out), examples) == pytest.approx(_perplexity(torch_lm, examples), rel=0.01)


def test_decode_speed_counts_exactly_the_new_tokens(torch_lm, fp32_genai):
    """`evaluate`'s timing (one warm-up, then 2 rounds of 2 prompts): each run decodes exactly 12 new tokens."""
    prompts = [encode_prompt(torch_lm.tokenizer, p, {"chat_template": True}) for p, _ in PAIRS[:2]]
    for runner in (_genai_lm(fp32_genai[0]), torch_lm):
        runner.timed(prompts[0], 12)
        result = R.speed_summary([runner.timed(ids, 12) for _ in range(2) for ids in prompts], 12)
        assert result["new_tokens"] == 12 and result["runs"] == 4
        assert result["tokens_per_second"] > 0 and result["time_to_first_token_ms"] > 0


def _peft_logits(base_dir: Path, adapter_dir: Path | None, ids: list[int]):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits[0, :-1].numpy()  # row i predicts ids[i + 1]


@pytest.mark.parametrize("precision", ["fp32", pytest.param("int4", marks=pytest.mark.slow)])
def test_adapters_switch_and_match_peft(tiny_llama, lora_adapters, tmp_path, precision):
    import numpy as np

    out = tmp_path / "multi"
    facts = A.export_adapters(tiny_llama, lora_adapters, out, precision=precision, execution_provider="cpu",
                              options={}, threads=2, log=lambda line: None)
    assert json.loads((out / "adapters.json").read_text()) == {"chat": "chat.onnx_adapter", "terse": "terse.onnx_adapter"}
    assert facts["adapters"]["chat"]["rank"] == 4 and facts["adapters"]["terse"]["rank"] == 8
    session = R.GenaiSession(out)
    ids = encode_prompt(session.tokenizer, "what is your name", {"chat_template": True})
    got = {name: R.response_logits(session, ids[:1], ids[1:], adapter=name) for name in (None, "chat", "terse")}
    ref = {name: _peft_logits(tiny_llama, lora_adapters.get(name), ids) for name in got}
    if precision == "fp32":
        atol = 1e-4
        for name in got:
            np.testing.assert_allclose(got[name], ref[name], atol=atol)
    else:  # the int4 base differs from PyTorch; the adapters must add what PEFT adds on top of it
        atol = 1e-2
        base_error = np.abs(got[None] - ref[None]).mean()
        for name in ("chat", "terse"):
            assert np.abs(got[name] - ref[name]).mean() < 1.5 * base_error
            delta, want = (got[name] - got[None]).ravel(), (ref[name] - ref[None]).ravel()
            assert np.corrcoef(delta, want)[0, 1] > 0.9
    assert np.abs(got["chat"] - got["terse"]).max() > 10 * atol
    assert np.abs(got["chat"] - got[None]).max() > 10 * atol
    answers = {name: R.greedy_answer(session, ids, 6, adapter=name) for name in ("chat", "terse")}
    assert all(isinstance(a, str) for a in answers.values())
    with pytest.raises(PassError, match="no adapter 'other'"):
        R.smoke_test(out, "hello", adapter="other")


def _quantized_nodes(folder: Path) -> dict[str, dict]:
    """{node name: its attributes + op_type + input count} of the MatMulNBits / GatherBlockQuantized nodes."""
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return {n.name: {**{a.name: a.i for a in n.attribute}, "op": n.op_type, "inputs": len([i for i in n.input if i])}
            for n in graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}


def test_avx2_int4_defaults_symmetric_int4_everywhere_and_track_pytorch(tiny_llama, torch_lm, tmp_path):
    out = tmp_path / "int4"
    facts = G.build_genai(tiny_llama, out, "int4", "cpu", {}, 2, lambda line: None, isa="avx2")
    assert facts["options"] == G.DEFAULT_INT4_OPTIONS["avx2"] and facts["int4_defaults_for_isa"] == "avx2"
    nodes = _quantized_nodes(out)
    matmuls = {k: v for k, v in nodes.items() if v["op"] == "MatMulNBits"}
    # every MatMul (lm_head too) 4-bit, block 32, int8 compute, symmetric (no zero-point input: A, B, scales)
    # qkv, o, gate + up as one (nbits.fuse_siblings), down; and lm_head
    assert "/lm_head/MatMul_Q4" in matmuls and len(matmuls) == 2 * 4 + 1
    assert facts["nbits_rewrites"] == {"default_zero_points_dropped": 0, "fused_siblings": 4}
    fused = {k: v for k, v in matmuls.items() if k.endswith("/FusedSiblings")}
    assert sorted(fused) == [f"/model/layers.{i}/mlp/gate_proj/MatMul_Q4/FusedSiblings" for i in range(2)]
    ffn = json.loads((tiny_llama / "config.json").read_text())["intermediate_size"]
    assert all(v["N"] == 2 * ffn for v in fused.values())
    assert all(v["bits"] == 4 and v["block_size"] == 32 and v["accuracy_level"] == 4 and v["inputs"] == 3
               for v in matmuls.values())
    (embedding,) = [v for v in nodes.values() if v["op"] == "GatherBlockQuantized"]  # int4 embedding
    assert embedding.get("bits", 4) == 4 and embedding["block_size"] == 32  # bits: the schema default is 4
    assert embedding["quantize_axis"] == 1 and embedding["gather_axis"] == 0
    # only what genai reads, plus the chat script the export adds (not built here)
    assert sorted(p.name for p in out.iterdir()) == sorted(G.RUNTIME_FILES)
    session = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    assert session["intra_op_num_threads"] == 2
    examples = _examples(torch_lm.tokenizer)
    assert _perplexity(_genai_lm(out), examples) == pytest.approx(_perplexity(torch_lm, examples), rel=0.15)


def test_vnni_int4_defaults_keep_int8_sensitive_nodes_and_int4_embedding(tiny_llama, tmp_path):
    out = tmp_path / "int4"
    facts = G.build_genai(tiny_llama, out, "int4", "cpu", {}, None, lambda line: None, isa="avx512_vnni")
    assert facts["options"] == G.DEFAULT_INT4_OPTIONS["avx512_vnni"] == G.DEFAULT_INT4_OPTIONS["arm64"]
    nodes = _quantized_nodes(out)
    bits = {k: v["bits"] for k, v in nodes.items() if v["op"] == "MatMulNBits"}
    assert bits["/lm_head/MatMul_Q8"] == 8 and bits["/model/layers.0/mlp/down_proj/MatMul_Q8"] == 8
    assert bits["/model/layers.0/mlp/gate_proj/MatMul_Q4/FusedSiblings"] == 4  # gate + up, asymmetric: fused too
    assert all(bits[f"/model/layers.{i}/attn/qkv_proj/MatMul_Q8"] == 8 for i in (0, 1))  # "qkv": every layer
    assert all(v["block_size"] == 64 and v["inputs"] == 4 for v in nodes.values())  # asymmetric: zero points
    # its own int4 table: this random model does not tie embedding and lm_head (test_genai_tied: a tied one)
    assert [v.get("bits", 4) for v in nodes.values() if v["op"] == "GatherBlockQuantized"] == [4]
    assert facts["tied_embedding"] is None
    with pytest.raises(PassError, match="not float MatMul nodes"):
        G.build_genai(tiny_llama, tmp_path / "bad", "int4", "cpu", {"int8_nodes": ["/nope/MatMul"]}, None,
                      lambda line: None)
    with pytest.raises(PassError, match="no int4 defaults for the instruction set 'z80'"):
        G.build_genai(tiny_llama, tmp_path / "bad", "int4", "cpu", {}, None, lambda line: None, isa="z80")
