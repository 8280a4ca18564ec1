"""`LightTokenizer` (tokenizers alone) gives the ids, masks and type ids transformers' tokenizer gives."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from passes.hf.loading import LightTokenizer, load_light_tokenizer, load_tokenizer
from passes.ort.checks import sample_sentences


@pytest.mark.parametrize("folder", ["tiny_bert_dir", "tiny_chat_llama_dir"])
def test_same_ids_as_transformers(folder, request):
    path = request.getfixturevalue(folder)
    light, full = load_light_tokenizer(path), load_tokenizer(path, causal=True)
    assert isinstance(light, LightTokenizer)
    texts = sample_sentences(8) + [("first part", "second part")]
    for text in texts[:-1]:
        assert light(text)["input_ids"] == full(text)["input_ids"]
    firsts, pairs = [t for t in texts[:-1]], None
    for got, want in ((light(firsts, pairs, truncation=True, padding=True, return_tensors="np", max_length=16),
                       full(firsts, truncation=True, padding=True, return_tensors="np", max_length=16)),
                      (light(["first part"], ["second part"], truncation=True, padding=True, return_tensors="np"),
                       full(["first part"], ["second part"], truncation=True, padding=True, return_tensors="np"))):
        for name in ("input_ids", "attention_mask"):
            assert np.array_equal(got[name], want[name]), name
        if "token_type_ids" in want:
            assert np.array_equal(got["token_type_ids"], want["token_type_ids"])


def test_the_output_check_imports_no_transformers(tiny_bert_dir):
    """What makes a quantize step in a worker process start fast: its output check needs no transformers."""
    code = ("import sys; from passes.hf.loading import load_light_tokenizer; "
            f"load_light_tokenizer({str(tiny_bert_dir)!r})('hello there'); "
            "print('transformers' in sys.modules or 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_folder_without_tokenizer_json_falls_back_to_transformers(tiny_bert_dir, tmp_path):
    import shutil

    for item in tiny_bert_dir.iterdir():
        if item.name != "tokenizer.json" and item.is_file():
            shutil.copy2(item, tmp_path / item.name)
    if not (tmp_path / "vocab.txt").is_file():
        pytest.skip("the tiny tokenizer has no slow-tokenizer files")
    assert not isinstance(load_light_tokenizer(tmp_path), LightTokenizer)
