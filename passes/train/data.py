"""Data for the training passes: which task the data trains, tokenization, collation and batching.

- `resolve_task`: the task from the step, the base model and the dataset (with clear errors).
- `prepare_data`: tokenized train/validation splits (instruction data: loss on the response only; chat
  data: on the assistant turns).
- `collator_for`: dynamic padding per batch.
- `length_bucket_sampler`: shuffled batches of similar-length examples (less padding, same examples).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from passes.hf.folders import infer_task, read_config
from passes.hf.chat import fit, split_conversation, split_pair
from passes.hf.loading import quiet_datasets
from passes.base import Artifact, PassError, StepContext

#: The validation split's name in a dataset artifact.
VALIDATION = "validation"
#: Label id that the loss ignores (transformers' convention): prompt tokens and padding.
IGNORE_INDEX = -100


def resolve_task(requested: str | None, base: Artifact, data: Artifact, ctx: StepContext) -> str:
    """The task to train for: the step's `task`, else the base model's, with an encoder + labels -> classifier.

    Raises PassError when the data cannot train that task (no labels for classification, labels for a
    causal LM, instruction data for an encoder).
    """
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
        if fmt not in ("instruction", "chat"):
            raise PassError(
                f"causal-lm training needs instruction or chat data (`prompt`/`response` columns, or conversations), "
                f"but {data.step!r} is {fmt!r} data: set `prompt` and `response` (or `template`) in its load_data step, "
                "or load chat data (`format: messages | sharegpt | alpaca`)"
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


def prepare_data(dd: Any, tokenizer: Any, task: str, max_length: int, ctx: StepContext,
                 chat: dict[str, Any] | None = None, train_on_prompt: bool = False,
                 packing: bool = False, train_on: str = "all_assistant") -> tuple[Any, Any, dict[str, Any]]:
    """Tokenized (train, validation or None) datasets for `task`, and what truncation did.

    Examples are not padded here: the collator pads each batch to its longest example, which on short
    texts (SMS averages ~25 tokens) is several times less work than padding to `max_length`. The
    validation split is sorted by length (evaluation order does not change metrics) for the same reason.

    Instruction data (causal LMs) is formatted by `passes.hf.chat.split_pair` (the dataset's chat settings),
    cut by `passes.hf.chat.fit` (the prompt gives way before the response; every cut is counted and logged),
    labelled -100 on the prompt unless `train_on_prompt`, and, with `packing`, the train split's
    examples are packed into rows of up to `max_length` tokens.

    Chat data (a `messages` column) is rendered by `passes.hf.chat.split_conversation`; `train_on` picks the
    learned tokens (every assistant turn, the last one, or all), and the last assistant turn plays the
    response's part in `fit` (what comes before it gives way first).
    """
    if "train" not in dd:
        raise PassError(f"the dataset has no train split (it has: {', '.join(dd)})")
    with quiet_datasets():
        if task == "text-classification":
            train, validation = _prepare_classification(dd, tokenizer, max_length)
            return train, validation, {}
        learn = "all" if train_on_prompt else train_on
        return _prepare_instructions(dd, tokenizer, max_length, ctx, chat or {}, learn, packing)


def _by_length(ds: Any) -> Any:
    lengths = [len(ids) for ids in ds["input_ids"]]
    return ds.select(sorted(range(len(lengths)), key=lengths.__getitem__))


def _check_columns(ds: Any, split: str, needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise PassError(f"the {split} split lacks the column(s) {', '.join(missing)} (it has {', '.join(ds.column_names)})")


def _prepare_classification(dd: Any, tokenizer: Any, max_length: int) -> tuple[Any, Any]:
    out = []
    for split in ("train", VALIDATION):
        if split not in dd:
            out.append(None)
            continue
        ds = dd[split]
        _check_columns(ds, split, ("text", "label"))
        tokenized = ds.map(lambda batch: _encode_classification(batch, tokenizer, max_length), batched=True,
                           remove_columns=ds.column_names, keep_in_memory=True, desc=None)
        if len(tokenized) == 0:
            raise PassError(f"the {split} split has no usable examples (check the data)")
        out.append(_by_length(tokenized) if split == VALIDATION else tokenized)
    return out[0], out[1]


def labelled_example(tokenizer: Any, row: dict[str, Any], chat: dict[str, Any],
                     learn: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """One example as (head, answer) lists of (token id, label): the answer is the response of a pair or
    the last assistant turn of a conversation; labels are IGNORE_INDEX where nothing is learned."""
    if "messages" in row:
        segments = split_conversation(tokenizer, row["messages"], chat)
        last = len(segments) - 1
        learned = lambda i, assistant: learn == "all" or (assistant and (learn == "all_assistant" or i == last))
        head = [(t, t if learned(i, a) else IGNORE_INDEX) for i, (ids, a) in enumerate(segments[:-1]) for t in ids]
        return head, [(t, t) for t in segments[-1][0]]
    p, r = split_pair(tokenizer, row["prompt"], row["response"], chat)
    return [(t, t if learn == "all" else IGNORE_INDEX) for t in p], [(t, t) for t in r]


def _prepare_instructions(dd: Any, tokenizer: Any, max_length: int, ctx: StepContext, chat: dict[str, Any],
                          learn: str, packing: bool) -> tuple[Any, Any, dict[str, Any]]:
    from datasets import Dataset

    out, report = [], {}
    for split in ("train", VALIDATION):
        if split not in dd:
            out.append(None)
            continue
        ds = dd[split]
        if "messages" not in ds.column_names:
            _check_columns(ds, split, ("prompt", "response"))
        rows = {"input_ids": [], "attention_mask": [], "labels": []}
        cut = {"prompt": 0, "response": 0}
        longest = 0
        for row in ds:
            p, r = labelled_example(tokenizer, row, chat, learn)
            longest = max(longest, len(p) + len(r))
            p, r, what = fit(p, r, max_length)
            if what:
                cut[what] += 1
            rows["input_ids"].append([t for t, _ in p + r])
            rows["attention_mask"].append([1] * (len(p) + len(r)))
            rows["labels"].append([label for _, label in p + r])
        n = len(rows["input_ids"])
        if n == 0:
            raise PassError(f"the {split} split has no examples")
        if cut["prompt"] + cut["response"] == n:
            raise PassError(
                f"every {split} example is longer than max_length={max_length} tokens (the longest is {longest}): "
                "raise `max_length`, or drop long rows with `max_chars` in load_data"
            )
        if cut["prompt"] or cut["response"]:
            ctx.log(f"{split}: {cut['prompt'] + cut['response']} of {n} examples longer than max_length={max_length}: "
                    f"{cut['prompt']} lost the start of their prompt, {cut['response']} the end of their response")
        report[split] = {"examples": n, "prompt_truncated": cut["prompt"], "response_truncated": cut["response"],
                         "longest_tokens": longest}
        tokenized = Dataset.from_dict(rows)
        if split == "train" and packing:
            tokenized = _pack(rows, max_length)
            ctx.log(f"packing: {n} train examples in {len(tokenized)} rows of up to {max_length} tokens")
            report[split]["packed_rows"] = len(tokenized)
        out.append(_by_length(tokenized) if split == VALIDATION else tokenized)
    return out[0], out[1], report


def _pack(rows: dict[str, list], max_length: int) -> Any:
    """Whole examples packed, first fit in order of length, into rows of at most `max_length` tokens.

    No example is split across rows. Packed examples attend to each other within a row (the
    standard trade-off of packing without per-example masks); each keeps its own labels, so the loss
    stays on the response tokens.
    """
    from datasets import Dataset

    order = sorted(range(len(rows["input_ids"])), key=lambda i: -len(rows["input_ids"][i]))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        size = len(rows["input_ids"][i])
        slot = next((b for b, free in enumerate(room) if free >= size), None)
        if slot is None:
            bins.append([i])
            room.append(max_length - size)
        else:
            bins[slot].append(i)
            room[slot] -= size
    join = lambda col, b: [t for i in b for t in rows[col][i]]
    return Dataset.from_dict({col: [join(col, b) for b in bins] for col in ("input_ids", "attention_mask", "labels")})


def _encode_classification(batch: dict[str, list], tokenizer: Any, max_length: int) -> dict[str, list]:
    """Tokenize text (and text_pair) with truncation; keep the integer labels."""
    pair = batch.get("text_pair")
    enc = tokenizer(batch["text"], pair, truncation=True, max_length=max_length)
    enc["labels"] = batch["label"]
    return dict(enc)


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

        def set_epoch(self, epoch: int) -> None:
            """The Trainer names each epoch (accelerate passes it on): a run resumed in epoch 3 draws epoch 3's order."""
            self.epoch = epoch

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
