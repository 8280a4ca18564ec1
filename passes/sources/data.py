"""The `load_data` source pass: a local file, folder or hub dataset -> a cleaned, split `dataset` artifact.

The recipe: load with `datasets`, map columns to the conventions (`text`/`text_pair`/`label` or
`prompt`/`response`; chat data to one `messages` column, see `data_chat`), clean (empty rows, over-long rows, exact duplicates), cap the size, split with
a seeded shuffle (stratified by label on request, or the source's own splits), balance the train
split, and save a `DatasetDict` in `data/`. Every random choice draws from `seed`, so the same config
and file give the same splits byte for byte (and so the same cache digest downstream).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from typing import Any

from schemas.paths import PathResolutionError, looks_like_hub_id
from schemas.steps import LoadDataConfig
from schemas.steps.data import CHAT_FORMATS

from passes.sources.data_files import (
    SPLITS,
    TEXT_COLUMNS,
    find_files,
    label_key,
    label_space,
    load_files,
    load_hub,
    map_columns,
)
from passes.sources.data_chat import conversation_chars, detect_format, dropped_text, to_conversations
from passes.base import MemoryUse, Pass, PassError, StepContext
from passes.registry import register_pass


@register_pass
class LoadData(Pass[LoadDataConfig]):
    """Load, map, clean, split and balance a dataset; write it with `save_to_disk` under `data/`."""

    config_class = LoadDataConfig
    version = 1
    packages = ("datasets", "pyarrow", "pandas", "numpy", "scikit-learn")
    #: Measured (benchmarks/jobs_sweep.py, the 0.5 MB SMS CSV): 289 MB peak, nearly all datasets, pyarrow and
    #: pandas; the factor (a table read, cleaned and split: a few copies) is not measured on a large file.
    memory = MemoryUse(factor=5.0, base_mb=300)

    def run(self, inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Do the whole recipe and return the dataset's meta (labels, format, splits, dropped, summary)."""
        import datasets
        import pandas as pd

        cfg = self.config
        fmt_name = "chat" if cfg.is_chat() else "instruction" if (cfg.prompt or cfg.template) else "classification"
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # the runner draws progress; datasets' bars would garble it
        chat_format, malformed = None, None
        try:
            frames, source_format = self._load(ctx)
            where = {s: cfg.path if len(frames) == 1 else f"{cfg.path} ({s})" for s in frames}
            if fmt_name == "chat":
                frames, chat_format, malformed = self._conversations(frames, where, ctx)
            else:
                frames = {s: self._check_labels(map_columns(df, cfg, where[s]), where[s]) for s, df in frames.items()}
            if cfg.splits != "existing" and len(frames) > 1:
                # Merge before cleaning, so a row in both train.csv and test.csv counts as a duplicate.
                ctx.log(f"the source has splits {', '.join(frames)}: merged and re-split by ratio "
                        "(`splits: existing` keeps them)")
                frames = {"all": pd.concat(list(frames.values()), ignore_index=True)}
            frames, dropped = self._clean(frames, ctx)
            names, frames = self._encode_labels(frames)
            frames, dropped["max_samples"] = self._cap(frames)
            frames = self._split(frames)
            balanced = self._balance(frames, names, ctx) if cfg.balance else None
            self._save(frames, names, ctx)
        finally:
            if bars:
                datasets.enable_progress_bars()

        splits = {split: _split_meta(df, names) for split, df in frames.items()}
        for split, info in splits.items():
            counts = f" ({_counts_text(info['labels'])})" if info["labels"] else ""
            ctx.log(f"{split}: {info['rows']} rows{counts}")
        parts = []
        for split, info in splits.items():
            # The train split's labels matter most (balance); the others keep the natural mix. A long
            # label list stays in the log lines above, out of the one-line summary.
            labels = info["labels"]
            detail = ""
            if split == "train" and labels:
                detail = f" ({_counts_text(labels)})" if len(labels) <= 6 else f" ({len(labels)} labels)"
            parts.append(f"{split} {info['rows']}{detail}")
        meta = {
            "labels": names,
            "format": fmt_name,
            "source_format": source_format,
            "splits": splits,
            "dropped": dropped,
            "summary": ", ".join(parts),
        }
        if balanced:
            meta["balance"] = balanced
        if fmt_name == "instruction":
            # How the pairs become token sequences, applied by every pass that tokenizes them (see passes/hf/chat.py).
            meta["chat"] = {"chat_template": cfg.chat_template, "system_prompt": cfg.system_prompt}
        if fmt_name == "chat":
            # Conversations always go through the model's own chat template.
            meta["chat"] = {"chat_template": True, "system_prompt": cfg.system_prompt}
            meta["chat_format"] = chat_format
            meta["malformed"] = dict(malformed.most_common())
        return meta

    def _conversations(self, frames: dict[str, Any], where: dict[str, str],
                       ctx: StepContext) -> tuple[dict[str, Any], str, Counter]:
        """Every split as a `messages` frame; (frames, the chat format, malformed conversations by reason)."""
        cfg = self.config
        first = next(iter(frames))
        fmt = cfg.format if cfg.format in CHAT_FORMATS else detect_format([str(c) for c in frames[first].columns], where[first])
        malformed: Counter = Counter()
        out = {}
        for split, df in frames.items():
            out[split], dropped = to_conversations(df, fmt, where[split])
            malformed += dropped
        kept = sum(len(df) for df in out.values())
        if not kept:
            raise PassError(f"no usable conversation in {cfg.path} ({fmt}): all were malformed ({dropped_text(malformed)}); "
                            "fix the data, or check `format`")
        ctx.log(f"chat data ({fmt}): {kept} conversations" + (f"; dropped {sum(malformed.values())} malformed: "
                                                                f"{dropped_text(malformed)}" if malformed else ""))
        return out, fmt, malformed

    # --- load --------------------------------------------------------------------------------------

    def _load(self, ctx: StepContext) -> tuple[dict[str, Any], str]:
        """{source split: pandas frame} and the format read."""
        cfg = self.config
        if looks_like_hub_id(cfg.path, ctx.workflow_dir):
            return load_hub(cfg.path, None), "hub"
        try:
            path = ctx.resolve_path(cfg.path)
        except PathResolutionError as exc:
            raise PassError(str(exc)) from exc
        if not path.exists():
            raise PassError(f"{cfg.path}: no such file or folder ({path})")
        # a chat format names the rows' shape; the file type (JSON, JSONL, Parquet) goes by the extension
        files, fmt = find_files(path, "auto" if cfg.format in CHAT_FORMATS else cfg.format)
        # datasets writes Arrow files while it loads; keep them out of out_dir and out of the user's
        # cache (the rows are loaded into memory, so the scratch folder can go at once).
        with tempfile.TemporaryDirectory(prefix="load_data-") as scratch:
            try:
                frames = load_files(files, fmt, scratch)
            except PassError as exc:
                # datasets words a file with a header and no rows as `Instruction "train" corresponds to no data!`
                if "corresponds to no data" not in str(exc):
                    raise
                raise PassError(f"no rows in {cfg.path}: it has no data rows (only a header?); "
                                "add rows, or point `path` at the right file") from exc
        ctx.log(f"read {sum(len(f) for f in frames.values())} rows from {path.name} ({fmt}"
                + (f"; splits {', '.join(frames)})" if len(frames) > 1 else ")"))
        return frames, fmt

    # --- clean ---------------------------------------------------------------------------------------

    def _check_labels(self, df: Any, where: str) -> Any:
        """Normalize the raw label cells (see `label_key`); a missing label is an error unless `drop_empty`."""
        if "label" not in df.columns:
            return df
        df = df.assign(label=[label_key(v) for v in df["label"]])
        no_label = df["label"].isna()
        if no_label.any() and not self.config.drop_empty:
            first = int(no_label.to_numpy().nonzero()[0][0])
            raise PassError(
                f"{int(no_label.sum())} row(s) of {where} have no label (the first is data row {first + 1}); "
                "fill them in, or set `drop_empty: true` to drop them"
            )
        return df

    def _clean(self, frames: dict[str, Any], ctx: StepContext) -> tuple[dict[str, Any], dict[str, int]]:
        """Drop empty, over-long and duplicate rows (per source split); count each rule's drops."""
        cfg = self.config
        dropped = {"drop_empty": 0, "max_chars": 0, "drop_duplicates": 0}
        out = {}
        for split, df in frames.items():
            if "messages" in df.columns:  # chat data: empty turns were dropped as malformed
                out[split], dropped = _clean_chat(df, cfg, dropped)
                continue
            text_cols = [c for c in TEXT_COLUMNS if c in df.columns]
            if cfg.drop_empty:
                empty = df[text_cols].apply(lambda col: col.str.strip() == "").any(axis=1)
                if "_template_empty" in df.columns:
                    empty |= df["_template_empty"]
                if "label" in df.columns:
                    empty |= df["label"].isna()
                dropped["drop_empty"] += int(empty.sum())
                df = df[~empty]
            if cfg.max_chars is not None:
                long = df[text_cols].apply(lambda col: col.str.len() > cfg.max_chars).any(axis=1)
                dropped["max_chars"] += int(long.sum())
                df = df[~long]
            df = df.drop(columns=["_template_empty"], errors="ignore")
            if cfg.drop_duplicates:
                dup = df.astype(str).duplicated()
                dropped["drop_duplicates"] += int(dup.sum())
                df = df[~dup]
            out[split] = df.reset_index(drop=True)
        total = sum(len(df) for df in out.values())
        if total == 0:
            raise PassError(
                f"no rows left after cleaning {cfg.path} (dropped: {_dropped_text(dropped)}); "
                "check the column mapping, or relax `drop_empty` / `max_chars`"
            )
        if any(dropped.values()):
            ctx.log(f"dropped {_dropped_text(dropped)}; {total} rows left")
        return out, dropped

    def _encode_labels(self, frames: dict[str, Any]) -> tuple[list[str] | None, dict[str, Any]]:
        """Label names (in id order) and frames whose `label` holds int ids; (None, frames) without labels."""
        if not any("label" in df.columns for df in frames.values()):
            return None, frames
        keys = [k for df in frames.values() for k in df["label"]]
        names, ids = label_space(keys, self.config.label_names)
        return names, {s: df.assign(label=[ids[k] for k in df["label"]]) for s, df in frames.items()}

    # --- split, cap, balance ----------------------------------------------------------------------------

    def _split(self, frames: dict[str, Any]) -> dict[str, Any]:
        """The final splits: by ratio with a seeded (optionally stratified) shuffle, or the source's own."""
        import numpy as np
        import pandas as pd

        cfg = self.config
        if cfg.splits == "existing":
            present = [s for s in SPLITS if s in frames]
            if "train" not in frames or len(present) < 2:
                raise PassError(
                    f"`splits: existing` needs a train split and a validation or test split, but {cfg.path} has "
                    f"{', '.join(frames) or 'none'}; name files by split (train.csv, validation.csv, test.csv) "
                    "or give split ratios"
                )
            return {s: frames[s] for s in present}

        (df,) = frames.values()  # several source splits were merged in `run`
        n = len(df)
        order = [s for s in SPLITS if s in cfg.splits]
        sizes = {s: int(round(n * cfg.splits[s])) for s in order if s != "train"}
        sizes["train"] = n - sum(sizes.values())
        for split in order:
            if sizes[split] < 1:
                raise PassError(
                    f"the {split} split would get 0 of {n} rows at ratio {cfg.splits[split]:g}; "
                    "raise its ratio, drop the split, or give more data"
                )
        if not cfg.stratify:
            perm = np.random.default_rng(cfg.seed).permutation(n)
            out, start = {}, 0
            for split in order:
                out[split] = df.iloc[perm[start:start + sizes[split]]].reset_index(drop=True)
                start += sizes[split]
            return out

        from sklearn.model_selection import train_test_split

        remaining = np.arange(n)
        y = df["label"].to_numpy()
        parts = {}
        for split in [s for s in order if s != "train"]:
            try:
                remaining, part = train_test_split(
                    remaining, test_size=sizes[split], stratify=y[remaining], random_state=cfg.seed
                )
            except ValueError as exc:
                counts = pd.Series(y).value_counts().sort_values()
                rare = ", ".join(f"{label} ({count})" for label, count in counts.head(3).items())
                raise PassError(
                    f"cannot stratify the {split} split ({exc}); rarest label ids: {rare}. Every label needs "
                    "rows in every split: turn `stratify` off, lower the number of splits, or add data"
                ) from exc
            parts[split] = part
        parts["train"] = remaining
        return {s: df.iloc[parts[s]].reset_index(drop=True) for s in order}

    def _cap(self, frames: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Keep at most `max_samples` rows in all, chosen by a seeded shuffle (each source split keeps its share)."""
        import numpy as np

        cfg = self.config
        total = sum(len(df) for df in frames.values())
        if cfg.max_samples is None or total <= cfg.max_samples:
            return frames, 0
        rng = np.random.default_rng(cfg.seed)
        out = {}
        for split, df in frames.items():
            keep = max(1, int(len(df) * cfg.max_samples / total))
            out[split] = df.iloc[np.sort(rng.permutation(len(df))[:keep])].reset_index(drop=True)
        return out, total - sum(len(df) for df in out.values())

    def _balance(self, frames: dict[str, Any], names: list[str] | None, ctx: StepContext) -> dict[str, Any]:
        """Give every label of the train split the same number of rows (seeded), by dropping or repeating."""
        import numpy as np

        cfg = self.config
        train = frames["train"]
        rng = np.random.default_rng(cfg.seed)
        groups = {label: np.flatnonzero(train["label"].to_numpy() == label) for label in sorted(set(train["label"]))}
        target = (min if cfg.balance == "undersample" else max)(len(g) for g in groups.values())
        chosen = []
        for label, idx in groups.items():
            if len(idx) > target:
                idx = np.sort(rng.choice(idx, target, replace=False))
            elif len(idx) < target:
                idx = np.concatenate([idx, rng.choice(idx, target - len(idx), replace=True)])
            chosen.append(idx)
        order = rng.permutation(np.concatenate(chosen))
        before = {names[k] if names else str(k): len(g) for k, g in groups.items()}
        frames["train"] = train.iloc[order].reset_index(drop=True)
        ctx.log(f"balanced train ({cfg.balance}): {_counts_text(before)} -> {target} per label")
        return {"method": cfg.balance, "rows_before": len(train), "rows_after": len(order), "labels_before": before}

    # --- save ----------------------------------------------------------------------------------------

    def _save(self, frames: dict[str, Any], names: list[str] | None, ctx: StepContext) -> None:
        """Write the splits as a DatasetDict under `data/` (string columns, `label` as a ClassLabel)."""
        from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

        present = next(iter(frames.values())).columns
        columns = [c for c in ("text", "text_pair", "prompt", "response", "label", "messages") if c in present]
        def feature(column: str) -> Any:
            if column == "label":
                return ClassLabel(names=names)
            if column == "messages":
                return [{"role": Value("string"), "content": Value("string")}]
            return Value("string")

        features = Features({c: feature(c) for c in columns})
        dd = DatasetDict({
            split: Dataset.from_dict({c: df[c].tolist() for c in columns}, features=features, split=split)
            for split, df in frames.items()
        })
        dd.save_to_disk(str(ctx.out_dir / "data"))


def _clean_chat(df: Any, cfg: Any, dropped: dict[str, int]) -> tuple[Any, dict[str, int]]:
    """`max_chars` (on a whole conversation) and `drop_duplicates` for chat data."""
    import json

    if cfg.max_chars is not None:
        long = df["messages"].map(conversation_chars) > cfg.max_chars
        dropped["max_chars"] += int(long.sum())
        df = df[~long]
    if cfg.drop_duplicates:
        dup = df["messages"].map(lambda m: json.dumps(m, sort_keys=True)).duplicated()
        dropped["drop_duplicates"] += int(dup.sum())
        df = df[~dup]
    return df.reset_index(drop=True), dropped


def _split_meta(df: Any, names: list[str] | None) -> dict[str, Any]:
    """{"rows": n, "labels": {name: count}} for one split (labels in id order; {} without labels)."""
    if names is None or "label" not in df.columns:
        return {"rows": len(df), "labels": {}}
    counts = df["label"].value_counts()
    return {"rows": len(df), "labels": {name: int(counts.get(i, 0)) for i, name in enumerate(names)}}


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def _dropped_text(dropped: dict[str, int]) -> str:
    return ", ".join(f"{count} by {rule}" for rule, count in dropped.items() if count) or "nothing"
