"""Shared fixtures: an isolated HOME and cache per test, tiny models and data built locally, offline."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent

_SPAM = ["win", "free", "prize", "cash", "claim", "urgent", "offer", "txt", "reply", "now", "call", "bonus"]
_HAM = ["see", "you", "lunch", "tomorrow", "home", "later", "mum", "dinner", "ok", "love", "going", "work"]


def tiny_corpus(n: int = 120, seed: int = 0) -> list[tuple[str, str]]:
    """Deterministic (text, label) pairs a tiny model separates easily: spam words vs ham words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        words = _SPAM if label == "spam" else _HAM
        rows.append((" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) + f" {i}", label))
    return rows


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


def _build_tokenizer(folder: Path, lowercase: bool = True):
    """A WordPiece tokenizer trained on the tiny corpus, saved as a BERT fast tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials)
    tok.train_from_iterator([t for t, _ in tiny_corpus(400)] + [" ".join(_SPAM + _HAM)], trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=128)
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT encoder without a classification head (like MiniLM) and its tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    tok = _build_tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def build_tiny_llama(folder: Path, tokenizer_dir: Path, hidden: int = 32) -> Path:
    """A tiny random LlamaForCausalLM that uses the tiny BERT tokenizer as its vocabulary."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    # Left padding, as many chat models ship: training must still pad on the right.
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, padding_side="left")
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id,
        eos_token_id=tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id, pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
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


def build_byte_level_tokenizer(folder: Path):
    """A GPT-2 style byte-level BPE (what Llama-3, Qwen and SmolLM use), trained on the tiny corpus, with a
    chat template: a tokenizer onnxruntime-genai's own tokenizer reads too (it refuses BERT's WordPiece)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    words = " ".join(_SPAM + _HAM)
    tok.train_from_iterator([t for t, _ in tiny_corpus(400)] + [words, "say cash home lunch prize please"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=128)
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fast.save_pretrained(folder)
    return folder


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
    tok = _build_tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
        num_labels=2, id2label={0: "ham", 1: "spam"}, label2id={"ham": 0, "spam": 1},
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def make_artifact(kind: str, path: Path, meta: dict, step: str = "upstream"):
    """An `Artifact` for a folder built in a test (the runner computes real digests)."""
    from passes.base import Artifact

    return Artifact(kind=kind, path=Path(path), meta=meta, digest="0" * 64, step=step)


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
