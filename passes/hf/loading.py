"""Loading Hugging Face models, tokenizers and dataset artifacts the same way in every pass.

Reusable by any pass that trains or evaluates a transformers model (training, merging, evaluation):

- `auto_class_for(task)`: the transformers Auto class that builds a model for a task.
- `load_tokenizer(folder, causal=False)`: the folder's tokenizer; for causal LMs with a pad token.
- `load_light_tokenizer(folder)`: the same ids through `tokenizers` alone (no transformers import), for checks.
- `load_model(folder, task, labels=None)`: a float32 model with the right head and label names.
- `load_dataset_dict(artifact)`: the `DatasetDict` of a `dataset` artifact, in memory.
- `label_maps(labels)`: `id2label`, `label2id` for a transformers config.
- `classification_metrics(y_true, y_pred, num_labels)`: accuracy and f1 with scikit-learn.
- `quiet_transformers()`: silence transformers' warnings (e.g. "newly initialized weights") for a block.
- `quiet_datasets()`: hide datasets' progress bars for a block.

Heavy libraries are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from passes.base import Artifact, PassError
from passes.hf.folders import refuse_packed_weights

#: The transformers Auto class that builds a model for each task name of the contract.
AUTO_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "token-classification": "AutoModelForTokenClassification",
    "feature-extraction": "AutoModel",
}


def auto_class_for(task: str) -> Any:
    """The transformers Auto class for `task` (`text-classification` -> AutoModelForSequenceClassification)."""
    import transformers

    try:
        return getattr(transformers, AUTO_CLASSES[task])
    except KeyError:
        raise PassError(f"no model class for task {task!r}; use one of {', '.join(AUTO_CLASSES)}") from None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Lower transformers' log level to errors for the block, then restore it.

    Loading an encoder into a classification class always warns that the head is newly initialized;
    the passes say so themselves in one readable line instead.
    """
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Hide datasets' per-`map` progress bars for the block (the step's own progress bar is enough)."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def load_tokenizer(folder: Path, causal: bool = False, **kwargs: Any) -> Any:
    """The tokenizer saved in a model folder (fast when available): how every pass loads one.

    For a causal LM without a pad token, the EOS token pads (batches need one; the padded positions are
    masked out of attention and loss, so which token it is does not matter). `kwargs` go to
    `AutoTokenizer.from_pretrained` (e.g. `gguf_file`). A folder without a usable tokenizer is a PassError
    naming it.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError) as exc:
        raise PassError(f"cannot load a tokenizer from {folder}: {exc}. The model folder needs its tokenizer files") from exc
    if causal and tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PassError(f"the tokenizer in {folder} has neither a pad nor an EOS token; add a pad token to it")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class LightTokenizer:
    """A folder's `tokenizer.json` through the `tokenizers` library alone, called like a transformers tokenizer
    for what the output checks need (`tok(text)["input_ids"]`, `tok(texts, pairs, return_tensors="np", ...)`).

    Why not `AutoTokenizer`: importing transformers (and torch with it) takes ~7 s here, more than many a
    quantize or optimize step spends on its work, and every step run in a worker process (`--jobs`,
    `isolation: process`) paid it again only to tokenize eight check sentences. transformers' fast
    tokenizers are this same `tokenizers.Tokenizer` (same vocabulary, normalizer and special-token
    template), so the ids agree (tests/passes/hf check it); padding uses the id transformers would.
    """

    def __init__(self, folder: Path):
        import json

        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        config_file = Path(folder) / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        limit = config.get("model_max_length")
        self.model_max_length = int(limit) if isinstance(limit, (int, float)) and limit < 1e9 else None
        pad = config.get("pad_token") or config.get("eos_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad_token_id = (self._tok.token_to_id(pad) if pad else None) or 0
        self.padding_side = config.get("padding_side", "right")

    def __call__(self, texts: Any, pairs: Any = None, truncation: bool = False, padding: Any = False,
                 return_tensors: str | None = None, max_length: int | None = None) -> dict[str, Any]:
        import numpy as np

        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        items = list(zip(batch, pairs)) if pairs is not None else batch
        limit = max_length or self.model_max_length
        # the library's own truncation keeps the special tokens, as transformers does
        if truncation and limit:
            self._tok.enable_truncation(limit)
        else:
            self._tok.no_truncation()
        if padding and return_tensors == "np":
            self._tok.enable_padding(direction=self.padding_side, pad_id=self.pad_token_id)
        else:
            self._tok.no_padding()
        rows = [{"input_ids": e.ids, "attention_mask": e.attention_mask, "token_type_ids": e.type_ids}
                for e in self._tok.encode_batch(items)]
        if return_tensors != "np":
            return rows[0] if single else {k: [r[k] for r in rows] for k in rows[0]}
        return {k: np.array([r[k] for r in rows], dtype=np.int64) for k in rows[0]}


def load_light_tokenizer(folder: Path) -> Any:
    """`LightTokenizer` when the folder has a tokenizer.json (every fast tokenizer saves one), else
    `load_tokenizer`'s transformers tokenizer."""
    if (Path(folder) / "tokenizer.json").is_file():
        try:
            return LightTokenizer(folder)
        except Exception:  # noqa: BLE001 - a tokenizer.json `tokenizers` cannot read: transformers may
            pass
    return load_tokenizer(folder)


def label_maps(labels: list[str]) -> tuple[dict[int, str], dict[str, int]]:
    """(`id2label`, `label2id`) for a transformers config, from label names in id order."""
    return {i: name for i, name in enumerate(labels)}, {name: i for i, name in enumerate(labels)}


def load_model(folder: Path, task: str, labels: list[str] | None = None, **kwargs: Any) -> tuple[Any, list[str]]:
    """A float32 model for `task` from a `save_pretrained` folder, and the weights it had to initialize.

    For `text-classification`, `labels` sets the head's size and label names; a folder that is an
    encoder without a head gets a new one (initialized from the current torch seed). A head of another
    size is replaced. Returns (model, names of newly initialized parameters).
    """
    refuse_packed_weights(folder, f"loading a {task} model")
    auto = auto_class_for(task)
    extra: dict[str, Any] = dict(kwargs)
    if task == "text-classification":
        if not labels:
            raise PassError("a text-classification model needs label names (the dataset's `labels`)")
        id2label, label2id = label_maps(labels)
        extra.update(num_labels=len(labels), id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True)
    with quiet_transformers():
        try:
            model, info = auto.from_pretrained(str(folder), dtype="float32", output_loading_info=True, **extra)
        except ValueError as exc:  # "Unrecognized configuration class ... for this kind of AutoModel"
            raise PassError(f"{folder} cannot be loaded as a {task} model: {exc}") from exc
    new = sorted(set(info.get("missing_keys", [])) | {k for k, *_ in info.get("mismatched_keys", [])})
    if task == "causal-lm" and getattr(model.config, "pad_token_id", None) is None:
        # Left unset, batched forward passes of some decoders (e.g. sequence scores) fail; the value is
        # only used for padding, which the attention mask hides.
        eos = getattr(model.config, "eos_token_id", None)
        model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    return model, new


def load_dataset_dict(artifact: Artifact) -> Any:
    """The `datasets.DatasetDict` of a `dataset` artifact, loaded into memory.

    In memory on purpose: `map` on a dataset loaded from disk writes cache files next to it, which
    would change a committed artifact in the cache.
    """
    from datasets import load_from_disk

    folder = Path(artifact.path) / "data"
    if not folder.is_dir():
        raise PassError(f"the dataset step {artifact.step!r} has no data/ folder at {folder}; re-run it")
    return load_from_disk(str(folder), keep_in_memory=True)


def classification_metrics(y_true: Any, y_pred: Any, num_labels: int) -> dict[str, float]:
    """Accuracy and f1 (binary f1 of label 1 for two labels, macro f1 otherwise), with scikit-learn."""
    from sklearn.metrics import accuracy_score, f1_score

    average = "binary" if num_labels == 2 else "macro"
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, average=average, zero_division=0)),
    }
