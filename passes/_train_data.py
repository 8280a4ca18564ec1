"""Data for the training passes: which task the data trains, tokenization, collation and batching.

- `resolve_task`: the task from the step, the base model and the dataset (with clear errors).
- `prepare_data`: tokenized train/validation splits (instruction data: loss on the response only).
- `collator_for`: dynamic padding per batch.
- `length_bucket_sampler`: shuffled batches of similar-length examples (less padding, same examples).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._hf_utils import quiet_datasets
from .base import Artifact, PassError, StepContext

#: The validation split's name in a dataset artifact.
VALIDATION = "validation"
#: Label id that the loss ignores (transformers' convention): prompt tokens and padding.
IGNORE_INDEX = -100


def resolve_task(requested: str | None, base: Artifact, data: Artifact, ctx: StepContext) -> str:
    """The task to train for: the step's `task`, else the base model's, with an encoder + labels -> classifier.

    Raises PassError when the data cannot train that task (no labels for classification, labels for a
    causal LM, instruction data for an encoder).
    """
    from ._hf import infer_task, read_config

    base_task = base.meta.get("task") or infer_task(read_config(Path(base.path)))
    fmt, labels = data.meta.get("format"), data.meta.get("labels")
    task = requested
    if task is None:
        if base_task == "feature-extraction" and fmt == "classification":
            task = "text-classification"
            ctx.log(f"task: text-classification (the base {base.step!r} is an encoder without a head and "
                    f"{data.step!r} has labels: a new classification head is trained)")
        elif base_task == "causal-lm" and fmt == "classification":
            raise PassError(
                f"the dataset {data.step!r} has labels (classification) but the base {base.step!r} is a causal LM: "
                "load instruction data (`prompt`/`response` in load_data) to tune it as a causal LM, or set "
                "`task: text-classification` to train a classification head on the decoder"
            )
        elif base_task in ("text-classification", "causal-lm"):
            task = base_task
            ctx.log(f"task: {task} (from the base model {base.step!r})")
        else:
            raise PassError(
                f"the base {base.step!r} is a {base_task} model, which this step cannot train for "
                f"{fmt or 'this'} data: use a classification dataset with an encoder, or a causal LM with "
                "instruction data, or set `task`"
            )
    if task == "text-classification":
        if fmt != "classification" or not labels:
            raise PassError(
                f"text-classification needs labels, but the dataset {data.step!r} has none (format {fmt!r}): "
                "set `label` in its load_data step"
            )
    elif task == "causal-lm":
        if fmt != "instruction":
            raise PassError(
                f"causal-lm training needs instruction data (`prompt`/`response` columns), but {data.step!r} is "
                f"{fmt!r} data: set `prompt` and `response` (or `template`) in its load_data step"
            )
        if base_task != "causal-lm":
            raise PassError(f"the base {base.step!r} is a {base_task} model, not a causal LM: pick a decoder for causal-lm")
    return task


def check_classifiable(folder: Path, step: str) -> None:
    """Raise PassError when transformers has no sequence-classification class for the folder's model type."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as names

    model_type = AutoConfig.from_pretrained(str(folder)).model_type
    if model_type not in names:
        raise PassError(
            f"the base {step!r} ({model_type}) has no sequence-classification head in transformers, so it cannot "
            "classify: pick an encoder such as BERT or RoBERTa"
        )


# --- data --------------------------------------------------------------------------------------------


def prepare_data(dd: Any, tokenizer: Any, task: str, max_length: int, ctx: StepContext) -> tuple[Any, Any]:
    """Tokenized (train, validation or None) datasets for `task`; validation sorted by length.

    Examples are not padded here: the collator pads each batch to its longest example, which on short
    texts (SMS averages ~25 tokens) is several times less work than padding to `max_length`. The
    validation split is sorted by length (evaluation order does not change metrics) for the same reason.
    """
    if "train" not in dd:
        raise PassError(f"the dataset has no train split (it has: {', '.join(dd)})")
    with quiet_datasets():
        return _prepare(dd, tokenizer, task, max_length, ctx)


def _prepare(dd: Any, tokenizer: Any, task: str, max_length: int, ctx: StepContext) -> tuple[Any, Any]:
    encode = _encode_classification if task == "text-classification" else _encode_instruction
    out = []
    for split in ("train", VALIDATION):
        if split not in dd:
            out.append(None)
            continue
        ds = dd[split]
        needed = ("text", "label") if task == "text-classification" else ("prompt", "response")
        missing = [c for c in needed if c not in ds.column_names]
        if missing:
            raise PassError(f"the {split} split lacks the column(s) {', '.join(missing)} (it has {', '.join(ds.column_names)})")
        tokenized = ds.map(
            lambda batch: encode(batch, tokenizer, max_length), batched=True,
            remove_columns=ds.column_names, keep_in_memory=True, desc=None,
        )
        if task == "causal-lm":
            before = len(tokenized)
            tokenized = tokenized.filter(lambda ex: any(t != IGNORE_INDEX for t in ex["labels"]), keep_in_memory=True)
            if len(tokenized) < before:
                ctx.log(f"{split}: dropped {before - len(tokenized)} examples whose prompt fills max_length={max_length}")
        if len(tokenized) == 0:
            raise PassError(f"the {split} split has no usable examples (raise max_length or check the data)")
        if split == VALIDATION:
            lengths = [len(ids) for ids in tokenized["input_ids"]]
            tokenized = tokenized.select(sorted(range(len(lengths)), key=lengths.__getitem__))
        out.append(tokenized)
    return out[0], out[1]


def _encode_classification(batch: dict[str, list], tokenizer: Any, max_length: int) -> dict[str, list]:
    """Tokenize text (and text_pair) with truncation; keep the integer labels."""
    pair = batch.get("text_pair")
    enc = tokenizer(batch["text"], pair, truncation=True, max_length=max_length)
    enc["labels"] = batch["label"]
    return dict(enc)


def _encode_instruction(batch: dict[str, list], tokenizer: Any, max_length: int) -> dict[str, list]:
    """prompt + response (+ EOS) as one sequence; labels are -100 on the prompt so only the response is learned.

    The two parts are tokenized separately so the prompt/response boundary is exact (tokenizing the
    joined string can merge tokens across it); the prompt keeps the tokenizer's special tokens (BOS).
    """
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    prompts = tokenizer(batch["prompt"], add_special_tokens=True)["input_ids"]
    responses = tokenizer(batch["response"], add_special_tokens=False)["input_ids"]
    ids_out, labels_out = [], []
    for p, r in zip(prompts, responses):
        tail = r + ([eos] if eos is not None else [])
        ids_out.append((p + tail)[:max_length])
        labels_out.append(([IGNORE_INDEX] * len(p) + tail)[:max_length])
    return {"input_ids": ids_out, "attention_mask": [[1] * len(i) for i in ids_out], "labels": labels_out}


def collator_for(task: str, tokenizer: Any) -> Any:
    """Dynamic padding per batch: plain for classification, labels padded with -100 for causal LMs."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    if task == "text-classification":
        return DataCollatorWithPadding(tokenizer)
    # Seq2Seq's collator pads `labels` with -100; for a decoder-only model that is exactly what is needed.
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)


# --- batching ----------------------------------------------------------------------------------------


#: Length bucketing for the train order: batches are cut from chunks of this many batches sorted by
#: length, then shuffled. On SMS spam (lengths 5..128 tokens) it pads ~1.6x fewer tokens than random
#: batches, for the same examples per epoch; 0 turns it off (plain random batches).
BUCKET_BATCHES = 8


def length_bucket_sampler(lengths: list[int], batch_size: int, seed: int, bucket_batches: int = BUCKET_BATCHES) -> Any:
    """A sampler yielding shuffled batches of similar-length examples, reshuffled every epoch.

    transformers' `group_by_length` sorts whole mega-batches of 50 batches and keeps them in
    descending order, so on a small dataset an epoch runs from the longest to the shortest texts
    (on SMS spam: all-spam batches first, all-ham last). Here the batch order is shuffled. Only the
    last batch may be short, so the DataLoader's batches are exactly these.
    """
    import torch

    class LengthBucketSampler(torch.utils.data.Sampler):
        """See `length_bucket_sampler`."""

        def __init__(self) -> None:
            self.epoch = 0

        def __len__(self) -> int:
            return len(lengths)

        def __iter__(self) -> Any:
            g = torch.Generator().manual_seed(seed + self.epoch)
            self.epoch += 1
            perm = torch.randperm(len(lengths), generator=g).tolist()
            chunk = batch_size * max(bucket_batches, 1)
            batches = []
            for start in range(0, len(perm), chunk):
                ids = sorted(perm[start:start + chunk], key=lengths.__getitem__, reverse=True)
                batches += [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
            tail = [batches.pop()] if len(batches[-1]) < batch_size else []
            for b in torch.randperm(len(batches), generator=g).tolist() + ([len(batches)] if tail else []):
                yield from (batches + tail)[b]

    return LengthBucketSampler()
