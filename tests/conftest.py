"""Shared fixtures: an isolated HOME and cache per test, tiny models and data built locally, offline."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from tests.builders import (build_byte_level_tokenizer, build_tiny_llama, build_wordpiece_tokenizer, export_classifier,
                            make_artifact, tiny_corpus)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def isolate(tmp_path_factory, monkeypatch):
    """HOME and the cache live in a fresh folder per test (as DVC's `isolate`)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(home / ".cache" / "pipeline"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield home


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    """A small spam/ham CSV with columns `label`, `text`."""
    path = tmp_path / "tiny.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        for text, label in tiny_corpus():
            w.writerow([label, text])
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT encoder without a classification head (like MiniLM) and its tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    tok = build_wordpiece_tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """A tiny random Llama (hidden 32, 2 layers) with the tiny BERT tokenizer."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), tiny_bert_dir)


@pytest.fixture(scope="session")
def tiny_chat_llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (hidden 64) with a byte-level BPE tokenizer and a chat template (genai tests)."""
    tokenizer = build_byte_level_tokenizer(tmp_path_factory.mktemp("byte_level_tokenizer"))
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_chat_llama"), tokenizer, hidden=64)


@pytest.fixture(scope="session")
def tiny_llama64_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """The same with hidden size 64: bitsandbytes' 4-bit CPU kernels need rows of at least one 64-value block."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama64"), tiny_bert_dir, hidden=64)


@pytest.fixture(scope="session")
def tiny_bert_classifier_dir(tmp_path_factory) -> Path:
    """A tiny BertForSequenceClassification with label names spam/ham and its tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny_bert_cls")
    tok = build_wordpiece_tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
        num_labels=2, id2label={0: "ham", 1: "spam"}, label2id={"ham": 0, "spam": 1},
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_dataset(tmp_path):
    """A dataset artifact as `load_data` writes it: DatasetDict(train/validation/test), text + int label."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    rows = tiny_corpus(160)
    features = Features({"text": Value("string"), "label": ClassLabel(names=["ham", "spam"])})

    def part(chunk):
        return Dataset.from_dict(
            {"text": [t for t, _ in chunk], "label": [0 if l == "ham" else 1 for _, l in chunk]}, features=features
        )

    dd = DatasetDict(train=part(rows[:112]), validation=part(rows[112:128]), test=part(rows[128:]))
    folder = tmp_path / "dataset"
    dd.save_to_disk(str(folder / "data"))
    splits = {
        name: {"rows": len(ds), "labels": {"ham": ds["label"].count(0), "spam": ds["label"].count(1)}}
        for name, ds in dd.items()
    }
    return make_artifact("dataset", folder, {"labels": ["ham", "spam"], "format": "classification", "splits": splits}, "data")


@pytest.fixture
def make_ctx(tmp_path):
    """Build a `SimpleContext` for running a pass by hand: make_ctx("step") -> ctx with a fresh out_dir."""
    from passes.base import SimpleContext

    def factory(step: str = "step", **kwargs):
        out = tmp_path / "out" / step
        out.mkdir(parents=True, exist_ok=True)
        return SimpleContext(step=step, out_dir=out, workflow_dir=tmp_path, quiet=True, **kwargs)

    return factory


@pytest.fixture(scope="session")
def tiny_onnx_classifier(tiny_bert_classifier_dir, tmp_path_factory):
    """The tiny classifier exported once per session (an onnx_model artifact; read it, never write into it)."""
    return export_classifier(tiny_bert_classifier_dir, tmp_path_factory.mktemp("tiny_onnx") / "onnx")
