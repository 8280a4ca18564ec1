"""Calibration data handed to Olive for a causal LM: one unpadded row per batch, each row the tokens the model
is trained and served on (chat template, system prompt), so that GPTQ's Hessian sums real positions only."""

from __future__ import annotations

import pytest

from passes.hf.chat import split_pair
from passes.hf.loading import load_tokenizer
from passes.olive.data import data_config
from tests.builders import make_artifact, tiny_corpus



def _pairs(tmp_path, chat: dict | None):
    from datasets import Dataset, DatasetDict

    rows = tiny_corpus(12)
    DatasetDict(train=Dataset.from_dict({"prompt": [t for t, _ in rows], "response": [l for _, l in rows]})
                ).save_to_disk(str(tmp_path / "instr" / "data"))
    meta = {"format": "instruction", "labels": None, **({"chat": chat} if chat else {})}
    return make_artifact("dataset", tmp_path / "instr", meta, "calib"), rows


@pytest.mark.parametrize("chat", [{"chat_template": True, "system_prompt": "Answer briefly."}, None],
                         ids=["chat-template", "plain"])
def test_causal_lm_calibration_rows_are_unpadded_and_tokenized_as_served(tiny_chat_llama_dir, tmp_path, chat):
    from olive.data.config import DataConfig

    data, rows = _pairs(tmp_path, chat)
    (tmp_path / "work").mkdir()
    config, n = data_config(data, "train", 8, tiny_chat_llama_dir, True, tmp_path / "work")
    assert n == 8
    tokenizer = load_tokenizer(tiny_chat_llama_dir, causal=True)
    batches = list(DataConfig(**config).to_data_container().create_dataloader())
    seen = [batch[0]["input_ids"][0].tolist() for batch in batches]
    assert len(seen) == 8
    assert all(bool(batch[0]["attention_mask"].all()) for batch in batches)  # no padding position
    assert len({len(ids) for ids in seen}) > 1  # each row its own length
    for ids, (prompt, response) in zip(seen, rows):
        if chat:  # the conversation as training and serving render it: system prompt, turns, template tokens
            head, answer = split_pair(tokenizer, prompt, response, chat)
            assert ids[: len(head)] == head
            assert tokenizer.decode(ids[len(head):], skip_special_tokens=True).strip() == response.strip()
        else:  # the text and EOS, with no space Olive's own special tokens would add
            assert tokenizer.decode(ids) == f"{prompt}\n{response}{tokenizer.eos_token}"
