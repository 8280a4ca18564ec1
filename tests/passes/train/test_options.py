"""Training options: Hugging Face / PEFT field names as aliases (one name per field), the LoRA options reaching
PEFT's LoraConfig and the optimizer options reaching TrainingArguments."""

from __future__ import annotations

import json

import pytest

from passes.base import SimpleContext
from passes.train.steps import Lora
from passes.train.trainer import DEFAULT_SAVE_STEPS, training_arguments
from pipelines.validate import load_workflow
from runner.keys import keyed_config
from schemas.errors import ConfigError
from schemas.steps import FinetuneConfig, LoraConfig
from tests.builders import make_artifact
from tests.helpers import write

OURS = "epochs: 2, batch_size: 4, lr_scheduler: cosine, alpha: 32, dropout: 0.1"
THEIRS = "num_train_epochs: 2, per_device_train_batch_size: 4, lr_scheduler_type: cosine, lora_alpha: 32, lora_dropout: 0.1"


def _workflow(tmp_path, tune: str):
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    (tmp_path / "m").mkdir(exist_ok=True)
    return write(tmp_path, f"""
        version: 1
        name: t
        steps:
          base: {{type: model, path: m}}
          qa: {{type: load_data, path: d.jsonl, prompt: prompt, response: response}}
          tune: {{type: lora, model: base, data: qa, {tune}}}
        """)


def test_hf_and_peft_names_are_aliases_with_the_same_cache_key(tmp_path):
    ours = load_workflow(_workflow(tmp_path, OURS)).workflow.steps["tune"]
    theirs = load_workflow(_workflow(tmp_path, THEIRS)).workflow.steps["tune"]
    assert (theirs.epochs, theirs.batch_size, theirs.lr_scheduler, theirs.alpha, theirs.dropout) == (2, 4, "cosine", 32, 0.1)
    assert keyed_config(theirs) == keyed_config(ours)  # a config keyed by our names: the same cache entry
    assert FinetuneConfig(type="finetune", model="b", data="d", num_train_epochs=5).epochs == 5


def test_an_alias_and_our_name_together_are_an_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_workflow(_workflow(tmp_path, "epochs: 2, num_train_epochs: 3, alpha: 8, lora_alpha: 8"))
    text = "\n".join(i.format() for i in info.value.issues)
    assert "steps.tune: `num_train_epochs` is the Hugging Face name of `epochs`: give one of them, not both" in text
    assert "wf.yaml:" in text and "hint: keep `epochs: 2` or `num_train_epochs: 3`" in text
    with pytest.raises(ConfigError, match="lora_alpha` is the Hugging Face name of `alpha`"):
        load_workflow(_workflow(tmp_path, "alpha: 8, lora_alpha: 8"))


def test_optimizer_and_checkpoint_settings_reach_training_arguments(tmp_path):
    cfg = LoraConfig(type="lora", model="b", data="d", max_grad_norm=0.5, optim="adamw_torch", gradient_checkpointing=True,
                     eval_strategy="no", save_total_limit=3)
    args = training_arguments(cfg, "causal-lm", False, tmp_path)
    assert (args.max_grad_norm, args.optim.value, args.gradient_checkpointing) == (0.5, "adamw_torch", True)
    assert (args.save_strategy.value, args.save_steps, args.save_total_limit, args.save_only_model) == \
        ("steps", DEFAULT_SAVE_STEPS, 3, False)
    evaluating = LoraConfig(type="lora", model="b", data="d", eval_strategy="steps", eval_steps=5, save_steps=10)
    args = training_arguments(evaluating, "causal-lm", True, tmp_path)
    assert (args.save_strategy.value, args.save_steps, args.load_best_model_at_end) == ("steps", 10, True)
    with pytest.raises(ValueError, match=r"`save_steps` \(7\) must be a multiple of `eval_steps` \(5\)"):
        LoraConfig(type="lora", model="b", data="d", eval_strategy="steps", eval_steps=5, save_steps=7)
    # checkpointing settings do not change what training produces: not in the cache key
    assert keyed_config(LoraConfig(type="lora", model="b", data="d", save_steps=5, save_total_limit=9)) == \
        keyed_config(LoraConfig(type="lora", model="b", data="d"))


def test_lora_options_reach_peft(tmp_path, tiny_chat_llama_dir):
    import torch
    from datasets import Dataset, DatasetDict

    pairs = [(f"say cash {i}", "cash") for i in range(8)]
    DatasetDict(train=Dataset.from_dict({"prompt": [p for p, _ in pairs], "response": [r for _, r in pairs]})).save_to_disk(
        str(tmp_path / "qa" / "data"))
    data = make_artifact("dataset", tmp_path / "qa", {"format": "instruction", "labels": None,
                                                      "chat": {"chat_template": True, "system_prompt": None}}, "qa")
    base = make_artifact("hf_model", tiny_chat_llama_dir, {"task": "causal-lm"}, "base")
    cfg = LoraConfig(type="lora", model="base", data="qa", max_steps=2, batch_size=4, eval_strategy="no",
                     use_dora=True, use_rslora=True, bias="lora_only", modules_to_save=["lm_head"],
                     gradient_checkpointing=True, optim="sgd", max_grad_norm=0.5)
    out = tmp_path / "tune"
    out.mkdir()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        meta = Lora(cfg).run({"model": base, "data": data}, SimpleContext("tune", out, quiet=True))
    finally:
        torch.set_num_threads(before)
    saved = json.loads((out / "adapter_config.json").read_text())
    assert (saved["use_dora"], saved["use_rslora"], saved["bias"]) == (True, True, "lora_only")
    assert saved["modules_to_save"] == ["lm_head"] and meta["modules_to_save"] == ["lm_head"]
    from safetensors.torch import load_file

    names = list(load_file(str(out / "adapter_model.safetensors")))
    assert any("lora_magnitude_vector" in n for n in names)  # DoRA's magnitudes
    assert any("lm_head" in n and "lora" not in n for n in names)  # the whole head, trained and saved
    assert meta["train_metrics"]["steps"] == 2

