"""A `load_data` dataset -> an Olive data config, for passes that calibrate or train (`data_config`).

The chosen split's first `samples` rows are written to a JSON-lines file in the pass's working folder,
and the data config reads it with Olive's built-in `HuggingfaceContainer` (`datasets.load_dataset("json",
data_files=...)`, which needs no network), so no user script and no hub dataset are involved:

- for a causal LM (GPTQ, AWQ, ...): `text_generation_huggingface_pre_process`, one sequence per row
  (`line-by-line`), cut at `max_seq_len` (the model's context, at most 512) and **not padded** (batches of
  one row). Olive's default pads every row to `max_seq_len`, and its GPTQ sums the Hessian over every
  position, padding included: rows of 30-60 tokens then calibrated on about 90% padding, and the lm_head's
  calibration logits (rows x 512 x vocabulary floats) ran 256 rows out of 24 GB. Chat rows, and instruction
  rows of data that asks for the chat template, are the template's rendering with the data's system prompt,
  as the model is trained and served (the text carries its own special tokens); other instruction rows
  become `prompt`, a newline, `response`.
- for an encoder (static quantization of a classifier): `huggingface_pre_process` on `text` (and
  `text_pair`) with the `label` column, truncated to the model's maximum length (at most 512) and padded
  to the longest row, so every calibration batch has the same inputs the exported model takes.

The tokenizer is the model folder's own (ONNX folders carry theirs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from passes.base import Artifact, PassError
from passes.hf.folders import read_config

#: The longest sequence a calibration row is cut to (calibration cost grows with it; 512 covers most texts).
MAX_CALIBRATION_LENGTH = 512
#: The data file's name in the working folder.
DATA_FILE = "olive_data.jsonl"


def write_rows(dataset: Artifact, split: str, samples: int, work: Path,
               tokenizer: Any = None) -> tuple[Path, int]:
    """Write the first `samples` rows of `split` as JSON lines under `work`; (file, rows written).

    Chat rows become their turns' text, instruction rows `prompt`, a newline, `response`; with a causal LM's
    `tokenizer`, each row is then the sequence the model is served (`_as_served`)."""
    from passes.hf.chat import chat_settings
    from passes.hf.loading import load_dataset_dict

    data = load_dataset_dict(dataset)
    if split not in data:
        raise PassError(f"the dataset {dataset.step!r} has no {split!r} split (it has {', '.join(data)}); "
                        "set `split` to one of those")
    part = data[split]
    rows = part.select(range(min(samples, len(part))))
    if len(rows) == 0:
        raise PassError(f"the {split!r} split of {dataset.step!r} is empty: Olive's pass needs data")
    instruction = dataset.meta.get("format") == "instruction"
    chat = chat_settings(dataset.meta)
    path = work / DATA_FILE
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            if "messages" in row:  # chat data: the turns' text, one after the other
                record = {"text": "\n".join(turn["content"] for turn in row["messages"])}
            elif instruction:
                record = {"text": f"{row['prompt']}\n{row['response']}"}
            else:
                record = {"text": row["text"], "label": int(row.get("label", 0) or 0)}
                if row.get("text_pair") is not None:
                    record["text_pair"] = row["text_pair"]
            if tokenizer is not None:  # a causal LM's sequence, its special tokens written out
                record = {"text": _as_served(tokenizer, row, record["text"], chat, instruction)}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path, len(rows)


def _as_served(tokenizer: Any, row: dict[str, Any], text: str, chat: dict[str, Any], instruction: bool) -> str:
    """A causal LM's calibration sequence with its special tokens: a chat row, or an instruction row of data that
    asks for the chat template, as the template renders the whole conversation (the data's system prompt
    included), which is how the model is trained and served; any other row as BOS (when the tokenizer adds
    one), the text, EOS. Text, not our token ids, since Olive's container tokenizes text (without adding
    special tokens here); a token may merge across the prompt/response boundary, as it would not in training."""
    from passes.hf.chat import with_system

    if getattr(tokenizer, "chat_template", None) and ("messages" in row or (instruction and chat["chat_template"])):
        turns = row["messages"] if "messages" in row else [
            {"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
        return tokenizer.apply_chat_template(with_system(turns, chat), tokenize=False)
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token if tokenizer.bos_token_id is not None and tokenizer.bos_token_id in ids else ""
    return f"{bos}{text}{tokenizer.eos_token or ''}"


def max_length(model_folder: Path) -> int:
    """The longest sequence the model takes (config / tokenizer), capped at MAX_CALIBRATION_LENGTH."""
    limits = [MAX_CALIBRATION_LENGTH]
    positions = read_config(model_folder).get("max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    tok_config = model_folder / "tokenizer_config.json"
    if tok_config.is_file():
        value = json.loads(tok_config.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(value, int) and 0 < value < 10**9:  # transformers writes 1e30 for "no limit"
            limits.append(value)
    return min(limits)


def data_config(dataset: Artifact, split: str, samples: int, model_folder: Path, causal_lm: bool,
                work: Path) -> tuple[dict[str, Any], int]:
    """An Olive DataConfig dict over the split's first rows, tokenized with the model folder's tokenizer; (config, rows)."""
    from passes.hf.loading import load_tokenizer

    # a causal LM's folder without a tokenizer fails here, naming it, rather than later inside Olive's container
    tokenizer = load_tokenizer(model_folder, causal=True) if causal_lm else None
    path, n = write_rows(dataset, split, samples, work, tokenizer)
    length = max_length(model_folder)
    if causal_lm:
        pre = {"type": "text_generation_huggingface_pre_process", "model_name": str(model_folder),
               "text_cols": ["text"], "strategy": "line-by-line", "max_seq_len": length, "max_samples": n,
               "pad_to_max_len": False, "add_special_tokens": False}
    else:
        with path.open(encoding="utf-8") as f:
            has_pair = "text_pair" in json.loads(f.readline())
        pre = {"type": "huggingface_pre_process", "model_name": str(model_folder),
               "input_cols": ["text", "text_pair"] if has_pair else ["text"], "label_col": "label",
               "max_samples": n, "max_length": length, "padding": True, "truncation": True}
    config = {
        "name": f"{dataset.step}_{split}",
        "type": "HuggingfaceContainer",
        "load_dataset_config": {"data_name": "json", "data_files": str(path), "split": "train"},
        "pre_process_data_config": pre,
        "dataloader_config": {"batch_size": 1},
    }
    return config, n
