"""tune_scales: Olive's packed checkpoints read in PyTorch exactly as Olive dequantizes them, scales trained by
distillation with the codes untouched, the same format written back, and the genai export running the new scales."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from passes.base import PassError, SimpleContext
from passes.hf.packed import load_packed_lm
from passes.train.scales import TuneScales
from schemas.steps import TuneScalesConfig
from tests.builders import make_artifact, tiny_corpus
from tests.passes.train.slow_steps import ctrl_c_during_step

pytestmark = pytest.mark.usefixtures("one_thread")


def _pack_with_olive(source: Path, out: Path, symmetric: bool, overrides: dict[str, int]) -> Path:
    """`source` quantized the way Olive's Rtn writes it (Olive's own quantizer and packing), lm_head included."""
    import torch
    from olive.common.quant.utils import WeightQuantizer, pack_to_uint8
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source)
    shutil.copytree(source, out)
    (out / "model.safetensors").unlink()
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            bits = overrides.get(name, 4)
            quantizer = WeightQuantizer(bits=bits, symmetric=symmetric, group_size=32)
            scales, zeros = quantizer.find_qparams(module.weight.data)
            tensors[f"{name}.qweight"] = pack_to_uint8(quantizer.quantize(module.weight.data, scales, zeros), bits)
            tensors[f"{name}.scales"] = scales.contiguous()
            if not symmetric:
                tensors[f"{name}.qzeros"] = pack_to_uint8(zeros, bits)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, value in model.state_dict().items():
        if name.rsplit(".", 1)[0] not in linears:
            tensors[name] = value.contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "olive", "bits": 4, "group_size": 32, "symmetric": symmetric, "lm_head": True,
        "overrides": {n: {"bits": b} for n, b in overrides.items()} or None, "embeds": False,
    }
    (out / "config.json").write_text(json.dumps(config))
    return out


def _data(tmp_path: Path):
    from datasets import Dataset, DatasetDict

    rows = tiny_corpus(48)
    part = lambda rs: Dataset.from_dict({"prompt": [t for t, _ in rs], "response": [l for _, l in rs]})
    DatasetDict(train=part(rows[:40]), validation=part(rows[40:])).save_to_disk(str(tmp_path / "instr" / "data"))
    return make_artifact("dataset", tmp_path / "instr", {"format": "instruction", "labels": None}, "instr")


def _lm(folder: Path, step: str):
    return make_artifact("hf_model", folder, {"task": "causal-lm", "labels": None, "model_type": "llama"}, step)


@pytest.mark.parametrize("symmetric, overrides", [(True, {}), (False, {"lm_head": 8, "model.layers.0.mlp.down_proj": 8})],
                         ids=["sym-int4", "asym-with-8bit"])
def test_packed_checkpoint_loads_as_olive_dequantizes_it(tiny_chat_llama_dir, tmp_path, symmetric, overrides):
    import torch
    from olive.common.quant.utils import WeightQuantizer
    from transformers import AutoModelForCausalLM

    packed = _pack_with_olive(tiny_chat_llama_dir, tmp_path / "packed", symmetric, overrides)
    model, layers = load_packed_lm(packed)
    assert len(layers) == 2 * 7 + 1 and {layers[n].bits for n in overrides} <= {8}
    # the same weights as Olive's quantizer gives back, and so the same function as those weights in a float model
    reference = AutoModelForCausalLM.from_pretrained(tiny_chat_llama_dir).eval()
    with torch.no_grad():
        for name, layer in layers.items():
            float_layer = reference.get_submodule(name)
            quantizer = WeightQuantizer(bits=overrides.get(name, 4), symmetric=symmetric, group_size=32)
            scales, zeros = quantizer.find_qparams(float_layer.weight)
            expected = quantizer.dequantize(quantizer.quantize(float_layer.weight, scales, zeros), scales, zeros)
            assert torch.allclose(layer.weight(), expected, atol=1e-7), name
            float_layer.weight.copy_(expected)
        ids = torch.randint(0, 200, (2, 10))
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5)


def test_tune_scales_distils_and_keeps_the_codes(tiny_chat_llama_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    packed = _pack_with_olive(tiny_chat_llama_dir, tmp_path / "packed", True, {})
    ctx = SimpleContext(step="tuned", out_dir=tmp_path / "tuned", workflow_dir=tmp_path, quiet=True)
    ctx.out_dir.mkdir()
    cfg = TuneScalesConfig(type="tune_scales", model="gptq", data="instr", teacher="merged", max_steps=12,
                           learning_rate=5e-2, batch_size=8, logging_steps=1)
    meta = TuneScales(cfg).run({"model": _lm(packed, "gptq"), "data": _data(tmp_path),
                                "teacher": _lm(tiny_chat_llama_dir, "merged")}, ctx)
    assert meta["loss"] == "kl" and meta["teacher"] == "merged" and meta["scales"]["layers"] == 15
    assert meta["kl_after"] < meta["kl_before"], meta
    assert meta["trained_norms"] == 2 * 2 + 1  # two per layer and the final one
    before, after = load_file(str(packed / "model.safetensors")), load_file(str(ctx.out_dir / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if k.endswith(".qweight"))  # the codes are GPTQ's
    assert all(before[k].dtype == after[k].dtype for k in before)
    assert sum(not torch.equal(before[k], after[k]) for k in before if k.endswith(".scales")) == 15
    assert not torch.equal(before["model.norm.weight"], after["model.norm.weight"])
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert (ctx.out_dir / "config.json").read_text() == (packed / "config.json").read_text()
    assert (ctx.out_dir / "training_log.json").is_file() and (ctx.out_dir / "loss.png").is_file()
    assert "validation KL to 'merged'" in meta["summary"]

    # what was written is what trained: reloading gives the scales the run ended with
    reloaded, layers = load_packed_lm(ctx.out_dir)
    assert torch.allclose(layers["lm_head"].scales(), after["lm_head.scales"])

    # and the genai export runs exactly those scales (symmetric: no zero points, the fast kernel)
    import onnx
    from onnx import numpy_helper

    from passes.ort import genai_build as G

    G.build_genai(ctx.out_dir, tmp_path / "int4", "int4", "cpu", {}, 2, lambda line: None, isa="avx2")
    graph = onnx.load(str(tmp_path / "int4" / "model.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and "lm_head" in n.name)
    exported = numpy_helper.to_array(inits[head.input[2]]).reshape(after["lm_head.scales"].shape)
    assert torch.allclose(torch.from_numpy(exported.astype("float32")), after["lm_head.scales"], rtol=1e-3)
    assert len([i for i in head.input if i]) == 3


def test_tune_scales_without_a_teacher_trains_on_the_responses(tiny_chat_llama_dir, tmp_path):
    packed = _pack_with_olive(tiny_chat_llama_dir, tmp_path / "packed", False, {"lm_head": 8})
    ctx = SimpleContext(step="tuned", out_dir=tmp_path / "tuned", workflow_dir=tmp_path, quiet=True)
    ctx.out_dir.mkdir()
    cfg = TuneScalesConfig(type="tune_scales", model="gptq", data="instr", max_steps=4, train_norms=False,
                           learning_rate=5e-2, batch_size=8, eval_strategy="no")
    meta = TuneScales(cfg).run({"model": _lm(packed, "gptq"), "data": _data(tmp_path)}, ctx)
    assert meta["loss"] == "cross_entropy" and meta["teacher"] is None and meta["trained_norms"] == 0
    assert meta["loss_before"] is not None and meta["loss_after"] is not None
    assert meta["scales"]["max_abs_scale_change"] > 0


def test_a_float_model_is_refused_with_what_to_give(tiny_chat_llama_dir, tmp_path):
    ctx = SimpleContext(step="tuned", out_dir=tmp_path / "tuned", workflow_dir=tmp_path, quiet=True)
    ctx.out_dir.mkdir()
    cfg = TuneScalesConfig(type="tune_scales", model="merged", data="instr", max_steps=1)
    with pytest.raises(PassError, match="not an Olive packed quantized checkpoint.*Gptq"):
        TuneScales(cfg).run({"model": _lm(tiny_chat_llama_dir, "merged"), "data": _data(tmp_path)}, ctx)


def test_ctrl_c_saves_a_checkpoint_and_the_next_run_resumes_to_the_same_scales(tiny_chat_llama_dir, tmp_path,
                                                                                 monkeypatch, python_sigint):
    """The distiller (student and its trainable scales; the teacher kept out) checkpoints and resumes like the
    other training steps: stopped in step 5, resumed from step 5's checkpoint, it ends where an uninterrupted run
    does, and its loss curve is the same."""
    import torch
    from safetensors.torch import load_file

    packed = _pack_with_olive(tiny_chat_llama_dir, tmp_path / "packed", True, {})
    inputs = {"model": _lm(packed, "gptq"), "data": _data(tmp_path), "teacher": _lm(tiny_chat_llama_dir, "merged")}
    cfg = TuneScalesConfig(type="tune_scales", model="gptq", data="instr", teacher="merged", max_steps=8,
                           save_steps=3, learning_rate=5e-2, batch_size=8, logging_steps=1, eval_strategy="no")

    def run(name: str, checkpoints: Path) -> SimpleContext:
        ctx = SimpleContext(name, tmp_path / name, checkpoint_dir=checkpoints, quiet=True)
        ctx.out_dir.mkdir(exist_ok=True)
        TuneScales(cfg).run(inputs, ctx)
        return ctx

    run("ref", tmp_path / "ref-checkpoints")
    with monkeypatch.context() as patch:
        ctrl_c_during_step(patch, 5)
        with pytest.raises(KeyboardInterrupt):
            run("stopped", tmp_path / "checkpoints")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-5"]
    saved = load_file(str(tmp_path / "checkpoints" / "checkpoint-5" / "model.safetensors"))
    assert saved and not any("teacher" in k for k in saved)  # the student alone: the teacher never trains
    ctx = run("resumed", tmp_path / "checkpoints")
    assert any(line.startswith("resuming from checkpoint at step 5 of 8") for line in ctx.lines), ctx.lines
    ref, resumed = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("ref", "resumed"))
    assert ref.keys() == resumed.keys()
    assert all(torch.allclose(ref[k], resumed[k], rtol=0, atol=1e-6) for k in ref)
    loss = lambda n: [(e["step"], e["loss"]) for e in json.loads((tmp_path / n / "training_log.json").read_text())
                      if "loss" in e]
    assert len(loss("resumed")) == 8 and loss("resumed") == loss("ref")
