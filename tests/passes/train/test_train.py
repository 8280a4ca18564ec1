"""Tests of the training passes: lora (classification, causal LM), finetune (partial freezing), merge_adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from passes.train.layers import find_blocks, freeze_all_but_last
from passes.hf.chat import check_chat_template
from passes.train.data import IGNORE_INDEX, prepare_data
from passes.base import PassError, SimpleContext
from passes.train.steps import Finetune, Lora, MergeAdapter, Qlora
from schemas.steps import FinetuneConfig, LoraConfig, MergeAdapterConfig, QloraConfig
from tests.builders import make_artifact

LABELS = ["ham", "spam"]
#: Quick settings for tiny models: a high learning rate learns the spam/ham words in a few steps.
FAST = dict(learning_rate=3e-2, batch_size=16, logging_steps=1)


@pytest.fixture(autouse=True)
def one_thread(request):
    """Run the tiny models on one thread: they gain nothing from more, and on a busy machine (measured:
    other processes on both cores) OpenMP threads waiting for each other made them ~13x slower.
    The slow test on the real model keeps every thread."""
    import torch

    if request.node.get_closest_marker("slow"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class RecordingContext(SimpleContext):
    """A SimpleContext that keeps its progress handles, to check what the pass reported."""

    bars: list = []

    def progress(self, total, description, unit=None):
        bar = super().progress(total, description)
        self.bars.append(bar)
        return bar


@pytest.fixture
def ctx_for(tmp_path):
    def factory(step):
        out = tmp_path / "out" / step
        out.mkdir(parents=True)
        ctx = RecordingContext(step=step, out_dir=out, workflow_dir=tmp_path, quiet=True)
        ctx.bars = []
        return ctx

    return factory


def encoder(folder, task="feature-extraction", labels=None, step="base"):
    return make_artifact("hf_model", folder, {"task": task, "labels": labels, "model_type": "bert",
                                              "architecture": "BertModel"}, step)


def lora(ctx, base, data, **fields):
    cfg = LoraConfig(type="lora", model=base.step, data=data.step, **{**FAST, **fields})
    return Lora(cfg).run({"model": base, "data": data}, ctx)


def merge(ctx, adapter_ctx, meta, base):
    adapter = make_artifact("adapter", adapter_ctx.out_dir, meta, "tune")
    return MergeAdapter(MergeAdapterConfig(type="merge_adapter", adapter="tune", model=base.step)).run(
        {"adapter": adapter, "model": base}, ctx)


# --- LoRA, classification ---------------------------------------------------------------------------------


def test_lora_classification_learns_and_saves_an_adapter(ctx_for, tiny_bert_dir, tiny_dataset):
    ctx = ctx_for("tune")
    meta = lora(ctx, encoder(tiny_bert_dir), tiny_dataset, epochs=6)
    out = ctx.out_dir
    assert meta["task"] == "text-classification" and meta["labels"] == LABELS
    assert any("text-classification" in line for line in ctx.lines)  # the inferred task is logged
    # the loss goes down and the tiny model beats chance on the validation split
    losses = [h["loss"] for h in json.loads((out / "training_log.json").read_text()) if "loss" in h]
    assert len(losses) >= 4 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert meta["eval_metrics"]["accuracy"] >= 0.9
    # the result is the best evaluation by metric_for_best_model (loss by default)
    history = json.loads((out / "training_log.json").read_text())
    assert meta["eval_metrics"]["loss"] == round(min(h["eval_loss"] for h in history if "eval_loss" in h), 6)
    assert set(meta["eval_metrics"]) == {"accuracy", "f1", "loss"}
    # the folder: adapter, tokenizer, log, plot, nothing else (no checkpoints)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "training_log.json", "loss.png"} <= names
    assert not any(p.is_dir() for p in out.iterdir()), names
    assert not any(str(tiny_bert_dir) in p.read_text(errors="ignore") for p in out.iterdir())  # no cache paths
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "classifier" in config["modules_to_save"]
    assert config["base_model_name_or_path"] == "BertModel"  # not the cache path
    from safetensors import safe_open

    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any("classifier" in k for k in keys) and any("lora_A" in k for k in keys)
    # progress: one bar over every optimizer step, advanced to the end with the loss
    (bar,) = ctx.bars
    assert bar.total == meta["train_metrics"]["steps"] == bar.completed and "loss" in bar.fields


def test_lora_without_validation_falls_back_to_no_evaluation(ctx_for, tiny_bert_dir, tmp_path):
    data = _classification_dataset(tmp_path, splits=("train",))
    ctx = ctx_for("tune")
    meta = lora(ctx, encoder(tiny_bert_dir), data, max_steps=2)
    assert meta["eval_metrics"] == {} and any("no validation split" in line for line in ctx.lines)
    with pytest.raises(PassError, match="early_stopping_patience needs a validation split"):
        lora(ctx_for("tune2"), encoder(tiny_bert_dir), data, max_steps=2, early_stopping_patience=1)


def test_early_stopping_reloads_the_best_and_leaves_no_checkpoints(ctx_for, tiny_bert_dir, tiny_dataset):
    ctx = ctx_for("tune")
    meta = lora(ctx, encoder(tiny_bert_dir), tiny_dataset, epochs=3, eval_strategy="steps", eval_steps=2,
                early_stopping_patience=1, metric_for_best_model="accuracy")
    assert "accuracy" in meta["eval_metrics"]
    assert not any(p.is_dir() for p in ctx.out_dir.iterdir())


def test_length_buckets_cover_every_example_and_pad_less():
    import random

    from passes.train.data import length_bucket_sampler

    rng = random.Random(0)
    lengths = [rng.randint(3, 120) for _ in range(203)]
    sampler = length_bucket_sampler(lengths, 16, seed=1, bucket_batches=4)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(203)) and first != second  # reshuffled per epoch

    def padded(order):
        return sum(max(lengths[i] for i in order[s:s + 16]) * len(order[s:s + 16]) for s in range(0, len(order), 16))

    shuffled = list(range(203))
    rng.shuffle(shuffled)
    assert padded(first) < 0.8 * padded(shuffled)


# --- merge ------------------------------------------------------------------------------------------------


def test_merge_gives_the_adapter_models_logits(ctx_for, tiny_bert_dir, tiny_dataset):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = encoder(tiny_bert_dir)
    tune = ctx_for("tune")
    adapter_meta = lora(tune, base, tiny_dataset, max_steps=6, eval_strategy="no")
    ctx = ctx_for("merged")
    meta = merge(ctx, tune, adapter_meta, base)
    assert meta["task"] == "text-classification" and meta["labels"] == LABELS
    assert meta["architecture"] == "BertForSequenceClassification" and meta["merge_max_abs_diff"] < 1e-4
    config = json.loads((ctx.out_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam"} and config["label2id"] == {"ham": 0, "spam": 1}
    assert not (ctx.out_dir / "adapter_config.json").exists()

    # independently: the merged folder and base + adapter agree, and the adapter did change the model
    tok = AutoTokenizer.from_pretrained(ctx.out_dir)
    batch = tok(["win cash prize now", "see you at lunch tomorrow"], padding=True, return_tensors="pt")
    merged = AutoModelForSequenceClassification.from_pretrained(ctx.out_dir).eval()
    ref = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    adapted = PeftModel.from_pretrained(ref, tune.out_dir).eval()
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, adapted(**batch).logits, atol=1e-5)
        untrained = adapted.get_base_model()
        assert (merged.bert.encoder.layer[0].attention.self.query.weight
                != untrained.bert.encoder.layer[0].attention.self.query.base_layer.weight).any()


def test_merge_onto_another_base_is_refused(ctx_for, tiny_bert_dir, tiny_dataset, tiny_llama_dir):
    tune = ctx_for("tune")
    adapter_meta = lora(tune, encoder(tiny_bert_dir), tiny_dataset, max_steps=1, eval_strategy="no")
    other = make_artifact("hf_model", tiny_llama_dir, {"task": "causal-lm", "model_type": "llama"}, "llm")
    with pytest.raises(PassError, match="trained on a bert model"):
        merge(ctx_for("merged"), tune, adapter_meta, other)


# --- causal LM --------------------------------------------------------------------------------------------


@pytest.fixture
def instruction_data(tmp_path):
    from datasets import Dataset, DatasetDict

    pairs = [(f"classify: {'win cash now' if i % 2 else 'see you at home'} {i}", "spam" if i % 2 else "ham")
             for i in range(48)]
    part = lambda rows: Dataset.from_dict({"prompt": [p for p, _ in rows], "response": [r for _, r in rows]})
    DatasetDict(train=part(pairs[:40]), validation=part(pairs[40:])).save_to_disk(str(tmp_path / "instr" / "data"))
    splits = {"train": {"rows": 40, "labels": {}}, "validation": {"rows": 8, "labels": {}}}
    return make_artifact("dataset", tmp_path / "instr", {"labels": None, "format": "instruction", "splits": splits}, "instr")


def _first_and_last_epoch_loss(out_dir: Path) -> tuple[float, float]:
    """Mean training loss over the first and over the last epoch. Each epoch sees every row once, so the two
    means are over the same data; one step's loss is over one batch, and batches of different lengths differ
    by more than a short run learns (a CI run saw 5.12 at step 1 and 5.52 at step 10). Over eight seeds the
    epoch means fell by 0.09-0.42."""
    import math

    by_epoch: dict[int, list[float]] = {}
    for h in json.loads((out_dir / "training_log.json").read_text()):
        if "loss" in h:
            by_epoch.setdefault(math.ceil(h["epoch"] - 1e-9), []).append(h["loss"])
    assert len(by_epoch) >= 2, by_epoch
    means = [sum(v) / len(v) for _, v in sorted(by_epoch.items())]
    return means[0], means[-1]


def llama(folder):
    return make_artifact("hf_model", folder, {"task": "causal-lm", "labels": None, "model_type": "llama",
                                              "architecture": "LlamaForCausalLM"}, "llm")


def _prepare(instruction_data, tok, max_length, **kw):
    from passes.hf.loading import load_dataset_dict

    ctx = SimpleContext("s", Path("."))
    train, validation, report = prepare_data(load_dataset_dict(instruction_data), tok, "causal-lm", max_length, ctx, **kw)
    return train, validation, report, ctx


def test_instruction_labels_mask_the_prompt(tiny_llama_dir, instruction_data):
    from passes.hf.loading import load_dataset_dict, load_tokenizer

    tok = load_tokenizer(tiny_llama_dir, causal=True)
    train, validation, report, _ = _prepare(instruction_data, tok, 64)
    rows = load_dataset_dict(instruction_data)["train"]
    for row, example in zip(rows, train):
        prompt = tok(row["prompt"])["input_ids"]
        response = tok(row["response"], add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
        assert example["input_ids"] == prompt + response
        assert example["labels"] == [IGNORE_INDEX] * len(prompt) + response
    assert report["train"] == {"examples": 40, "prompt_truncated": 0, "response_truncated": 0,
                               "longest_tokens": max(len(e["input_ids"]) for e in train)}
    assert validation is not None and len(validation) == 8
    # train_on_prompt: the labels are the inputs
    everything, *_ = _prepare(instruction_data, tok, 64, train_on_prompt=True)
    assert all(e["labels"] == e["input_ids"] for e in everything)


def test_truncation_cuts_the_prompt_first_and_reports_it(tiny_llama_dir, instruction_data):
    from passes.hf.loading import load_tokenizer

    tok = load_tokenizer(tiny_llama_dir, causal=True)
    full, *_ = _prepare(instruction_data, tok, 64)
    limit = min(len(e["input_ids"]) for e in full)  # the shortest fit, the longer ones are cut
    assert any(len(e["input_ids"]) > limit for e in full)
    train, _, report, ctx = _prepare(instruction_data, tok, limit)
    assert report["train"]["prompt_truncated"] > 0 and report["train"]["response_truncated"] == 0
    assert any("lost the start of their prompt" in line for line in ctx.lines)
    for cut, whole in zip(train, full):
        assert len(cut["input_ids"]) <= limit
        response = [t for t in whole["labels"] if t != IGNORE_INDEX]
        assert cut["input_ids"][-len(response):] == response == [t for t in cut["labels"] if t != IGNORE_INDEX]
    with pytest.raises(PassError, match=r"every train example is longer than max_length=2 tokens \(the longest is \d+\)"):
        _prepare(instruction_data, tok, 2)


def test_chat_template_formats_pairs_and_the_response_ends_the_turn(tiny_llama_dir, instruction_data, tmp_path):
    from passes.hf.chat import prompt_text, split_pair
    from passes.hf.loading import load_tokenizer

    tok = load_tokenizer(tiny_llama_dir, causal=True)
    chat = {"chat_template": True, "system_prompt": "be brief"}
    with pytest.raises(PassError, match="has none: set `chat_template: false`"):
        check_chat_template(tok, chat, "the base 'llm'")
    tok.chat_template = ("{% for m in messages %}{{ m.role }} : {{ m.content }} [SEP] {% endfor %}"
                         "{% if add_generation_prompt %}assistant : {% endif %}")
    assert prompt_text(tok, "hello", chat) == "system : be brief [SEP] user : hello [SEP] assistant : "
    p, r = split_pair(tok, "hello", "ham", chat)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    assert p == ids("system : be brief [SEP] user : hello [SEP] assistant : ")
    assert r == ids("ham [SEP] ") and r.count(tok.sep_token_id) == 1 and r[-1] == tok.sep_token_id
    train, *_ = _prepare(instruction_data, tok, 64, chat=chat)
    first = train[0]
    assert [t for t in first["labels"] if t != IGNORE_INDEX] in (ids("ham [SEP] "), ids("spam [SEP] "))


def test_packing_keeps_every_example_and_its_labels(tiny_llama_dir, instruction_data):
    from passes.hf.loading import load_tokenizer

    tok = load_tokenizer(tiny_llama_dir, causal=True)
    plain, _, _, _ = _prepare(instruction_data, tok, 64)
    packed, _, report, ctx = _prepare(instruction_data, tok, 64, packing=True)
    assert len(packed) == report["train"]["packed_rows"] < len(plain)
    assert all(len(e["input_ids"]) <= 64 for e in packed)
    assert sum(len(e["input_ids"]) for e in packed) == sum(len(e["input_ids"]) for e in plain)
    learned = lambda ds: sorted(t for e in ds for t in e["labels"] if t != IGNORE_INDEX)
    assert learned(packed) == learned(plain)


def test_lora_causal_lm_trains_and_merges(ctx_for, tiny_llama_dir, instruction_data):
    tune = ctx_for("tune")
    meta = lora(tune, llama(tiny_llama_dir), instruction_data, epochs=3, batch_size=8)
    assert meta["task"] == "causal-lm" and meta["labels"] is None
    assert meta["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    first, last = _first_and_last_epoch_loss(tune.out_dir)
    assert last < first
    assert set(meta["eval_metrics"]) == {"loss"}
    assert json.loads((tune.out_dir / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert json.loads((tune.out_dir / "tokenizer_config.json").read_text())["padding_side"] == "left"  # kept
    ctx = ctx_for("merged")
    merged = merge(ctx, tune, meta, llama(tiny_llama_dir))
    assert merged["architecture"] == "LlamaForCausalLM" and merged["merge_max_abs_diff"] < 1e-4
    assert (ctx.out_dir / "model.safetensors").is_file()


def test_qlora_trains_on_a_4bit_base_and_merges_into_the_dequantized_base(ctx_for, tiny_llama64_dir, instruction_data):
    tiny_llama_dir = tiny_llama64_dir
    import torch
    from transformers import AutoModelForCausalLM

    tune = ctx_for("tune")
    # One step per epoch (8 rows, batch 8). At 2 epochs and FAST's 3e-2 the loss fell by only 0.03-0.36 over six
    # seeds, and rose once in a full CI run (4.92 -> 5.42); 4 epochs at 1e-2 fell by 0.63-0.73 on the same seeds.
    cfg = QloraConfig(type="qlora", model="llm", data="instr", epochs=4, **{**FAST, "batch_size": 8, "learning_rate": 1e-2})
    meta = Qlora(cfg).run({"model": llama(tiny_llama_dir), "data": instruction_data}, tune)
    assert meta["quantized_base"] == {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
    assert meta["memory"]["base_4bit_mb"] < meta["memory"]["base_fp32_mb"]
    assert meta["summary"].startswith("QLoRA nf4 r=8, causal-lm") and "in 4-bit vs" in meta["summary"]
    assert any("base in 4-bit nf4" in line for line in tune.lines)
    first, last = _first_and_last_epoch_loss(tune.out_dir)
    assert last < first

    ctx = ctx_for("merged")
    merged = merge(ctx, tune, meta, llama(tiny_llama_dir))
    assert merged["merged_into"] == "dequantized_4bit_base" and merged["merge_max_abs_diff"] < 1e-4
    assert any("merging into the de-quantized base (14 linear layers" in line for line in ctx.lines)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    out = AutoModelForCausalLM.from_pretrained(ctx.out_dir)
    # every linear weight moved: by the 4-bit round trip everywhere, plus the adapter's delta
    w0, w1 = base.model.layers[0].mlp.up_proj.weight, out.model.layers[0].mlp.up_proj.weight
    assert w1.dtype == torch.float32 and not torch.equal(w0, w1)


# --- finetune ---------------------------------------------------------------------------------------------


def test_finetune_last_layer_freezes_the_rest(ctx_for, tiny_bert_classifier_dir, tiny_dataset):
    import torch
    from transformers import AutoModelForSequenceClassification

    base = encoder(tiny_bert_classifier_dir, "text-classification", LABELS)
    ctx = ctx_for("ft")
    meta = Finetune(FinetuneConfig(type="finetune", model="base", data="data", train_layers=1, max_steps=4,
                                   **FAST)).run({"model": base, "data": tiny_dataset}, ctx)
    before = AutoModelForSequenceClassification.from_pretrained(tiny_bert_classifier_dir)
    after = AutoModelForSequenceClassification.from_pretrained(ctx.out_dir)
    expected = sum(p.numel() for m in (before.bert.encoder.layer[1], before.bert.pooler, before.classifier)
                   for p in m.parameters())
    assert meta["trainable_parameters"] == expected
    assert meta["task"] == "text-classification" and meta["labels"] == LABELS
    old, new = dict(before.named_parameters()), dict(after.named_parameters())
    changed = {n for n in old if not torch.equal(old[n], new[n])}
    assert changed and all(n.startswith(("bert.encoder.layer.1.", "bert.pooler.", "classifier.")) for n in changed)
    assert json.loads((ctx.out_dir / "config.json").read_text())["id2label"] == {"0": "ham", "1": "spam"}


def test_finetune_causal_lm_saves_a_plain_model(ctx_for, tiny_llama_dir, instruction_data):
    from transformers import AutoModelForCausalLM

    ctx = ctx_for("ft")
    meta = Finetune(FinetuneConfig(type="finetune", model="llm", data="instr", max_steps=3, **FAST)).run(
        {"model": llama(tiny_llama_dir), "data": instruction_data}, ctx)
    model = AutoModelForCausalLM.from_pretrained(ctx.out_dir)
    assert meta["task"] == "causal-lm" and meta["architecture"] == "LlamaForCausalLM"
    assert meta["trainable_parameters"] == meta["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert {"training_log.json", "loss.png", "tokenizer.json"} <= {p.name for p in ctx.out_dir.iterdir()}


def test_freezing_decoders_keeps_the_last_blocks_norm_and_untied_head(tiny_llama_dir):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    info = freeze_all_but_last(model, 1, lambda _: None)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.layers", "model.norm", "lm_head.weight"} and info["blocks"] == "model.layers[1:2]"
    assert all(p.requires_grad == n.startswith(("model.layers.1.", "model.norm", "lm_head"))
               for n, p in model.named_parameters())
    # GPT-2: transformer.h, final norm ln_f; its head is tied to the embeddings and stays frozen
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=3, n_head=2, vocab_size=50, n_positions=32))
    info = freeze_all_but_last(gpt2, 2, lambda _: None)
    assert info["tied_head_frozen"] and info["norms"] == ["ln_f"]
    assert {n for n, p in gpt2.named_parameters() if p.requires_grad} == {
        n for n, _ in gpt2.named_parameters() if n.startswith(("transformer.h.1.", "transformer.h.2.", "transformer.ln_f"))}


def test_unknown_layout_is_an_error():
    import torch

    with pytest.raises(PassError, match="cannot tell which are the transformer blocks"):
        find_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


# --- errors -----------------------------------------------------------------------------------------------


def _classification_dataset(tmp_path, splits=("train", "validation")):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    from tests.builders import tiny_corpus

    rows = tiny_corpus(40)
    feats = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
    ds = Dataset.from_dict({"text": [t for t, _ in rows], "label": [LABELS.index(l) for _, l in rows]}, features=feats)
    DatasetDict({s: ds for s in splits}).save_to_disk(str(tmp_path / "cls" / "data"))
    return make_artifact("dataset", tmp_path / "cls", {"labels": LABELS, "format": "classification",
                                                        "splits": {s: {"rows": 40} for s in splits}}, "cls")


def test_error_paths(ctx_for, tiny_bert_dir, tiny_llama_dir, tiny_dataset, instruction_data, tmp_path):
    bert, llm = encoder(tiny_bert_dir), llama(tiny_llama_dir)
    with pytest.raises(PassError, match="is a causal LM"):
        lora(ctx_for("a"), llm, tiny_dataset)
    with pytest.raises(PassError, match="needs labels"):
        lora(ctx_for("b"), bert, instruction_data, task="text-classification")
    with pytest.raises(PassError, match="feature-extraction model"):
        lora(ctx_for("c"), bert, instruction_data)
    with pytest.raises(PassError, match="fp16 needs a CUDA GPU; use bf16 or fp32"):
        lora(ctx_for("d"), bert, tiny_dataset, precision="fp16")
    with pytest.raises(PassError, match="needs classification"):
        lora(ctx_for("e"), llm, instruction_data, metric_for_best_model="accuracy")
    unlabeled = make_artifact("dataset", tiny_dataset.path, {**tiny_dataset.meta, "labels": None}, "data")
    with pytest.raises(PassError, match="needs labels"):
        lora(ctx_for("f"), bert, unlabeled)
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    with pytest.raises(PassError, match="cannot classify"):
        lora(ctx_for("g"), encoder(vit), tiny_dataset)
    with pytest.raises(PassError, match="target_modules"):
        lora(ctx_for("h"), bert, tiny_dataset, target_modules=["no_such_module"])


def test_bf16_trains_on_the_cpu(ctx_for, tiny_bert_dir, tiny_dataset):
    ctx = ctx_for("tune")
    meta = lora(ctx, encoder(tiny_bert_dir), tiny_dataset, precision="bf16", max_steps=2, eval_strategy="no")
    assert meta["train_metrics"]["steps"] == 2 and meta["train_metrics"]["loss"] > 0
