""""Did you mean ...?" hints for names people mistype: step names, step types, fields, flags' values."""

from __future__ import annotations

import difflib
from typing import Iterable

#: Names people carry over from other tools (Hugging Face, PEFT), mapped to ours.
ALIASES = {
    "lr": "learning_rate", "num_epochs": "epochs", "num_train_epochs": "epochs", "lora_r": "r", "rank": "r",
    "lora_alpha": "alpha", "lora_dropout": "dropout", "per_device_train_batch_size": "batch_size",
    "model_name_or_path": "path", "data_files": "path", "file": "path", "scheduler": "lr_scheduler",
    "warmup": "warmup_ratio", "fp16": "precision", "bf16": "precision", "provider": "providers",
}


def did_you_mean(word: str, choices: Iterable[object]) -> str | None:
    """`"did you mean 'epochs'?"` for the choice closest to `word` (a known alias first), or None.

    `choices` may be any iterable of names (a dict gives its keys). None when nothing is close enough
    (difflib's ratio under 0.6), so callers can fall back to listing the choices.
    """
    names = [str(c) for c in choices]
    if ALIASES.get(word) in names:
        return f"did you mean {ALIASES[word]!r}?"
    match = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}?" if match else None
