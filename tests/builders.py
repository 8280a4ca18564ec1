"""Builders for tests: tiny corpora, tokenizers and models made locally (offline), artifacts for folders
built in a test, and small checks on exported ONNX models. Fixtures that use them live in conftest.py."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from passes.base import SimpleContext  # light: passes.base imports no ML library

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


def build_wordpiece_tokenizer(folder: Path, lowercase: bool = True):
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


def make_artifact(kind: str, path: Path, meta: dict, step: str = "upstream"):
    """An `Artifact` for a folder built in a test (the runner computes real digests)."""
    from passes.base import Artifact

    return Artifact(kind=kind, path=Path(path), meta=meta, digest="0" * 64, step=step)



SAMPLE_TEXTS = ["win a free prize now txt claim", "see you at lunch tomorrow mum", "call now bonus cash offer urgent"]


def run_onnx(folder: Path, texts: list[str] = SAMPLE_TEXTS):
    """The `logits` of an exported classifier folder on the CPU provider (padded batch)."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()})[0]


def op_counts(folder: Path) -> Counter:
    """Operator type -> count in `folder/model.onnx`."""
    import onnx

    return Counter(n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node)


def export_classifier(hf_dir: Path, out: Path, check_samples: int = 2):
    """Export a tiny classifier folder with the `export_onnx` pass; the onnx_model artifact."""
    from passes.base import SimpleContext
    from passes.onnx.export import ExportOnnx
    from schemas.steps import ExportOnnxConfig

    out.mkdir(parents=True, exist_ok=True)
    src = make_artifact("hf_model", hf_dir, {"task": "text-classification", "labels": ["ham", "spam"]})
    cfg = ExportOnnxConfig(type="export_onnx", model="upstream", check_samples=check_samples)
    meta = ExportOnnx(cfg).run({"model": src}, SimpleContext(step="onnx", out_dir=out, quiet=True))
    return make_artifact("onnx_model", out, meta, step="onnx")


class RecordingContext(SimpleContext):
    """A SimpleContext that keeps its progress handles in `.bars`, to check what a pass reported."""

    def progress(self, total, description, unit=None):
        handle = super().progress(total, description, unit)
        self.__dict__.setdefault("bars", []).append(handle)
        return handle
