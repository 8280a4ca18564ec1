"""Reading data for `load_data`: which files, which format, loaded with `datasets`; columns mapped, labels encoded.

Kept apart from the pass so the pass reads as the recipe (load, map, clean, split, balance, save)
and these pieces can be reused (e.g. by an evaluate step that reads a file directly).
"""

from __future__ import annotations

import math
import re
import string
from pathlib import Path
from typing import Any

from passes.base import PassError
from passes.hf.folders import hub_offline

#: File extensions -> format names of `LoadDataConfig.format`.
EXTENSIONS = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".pq": "parquet", ".txt": "text", ".text": "text",
}
#: Compression suffixes `datasets` reads through (a `.csv.gz` is a CSV).
COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".zip")
#: Words in a file or folder name that say which split it holds.
SPLIT_WORDS = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test",
}
SPLITS = ("train", "validation", "test")
#: Mapped columns whose text counts for `drop_empty`, `max_chars` (label is handled separately).
TEXT_COLUMNS = ("text", "text_pair", "prompt", "response")


def file_format(path: Path) -> str | None:
    """The format of a data file by its extension (through a compression suffix), or None."""
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSION:
        suffixes.pop()
    return EXTENSIONS.get(suffixes[-1]) if suffixes else None


def split_of(relative: Path) -> str | None:
    """The split a file belongs to from the words in its path (`data/train-00.parquet` -> train)."""
    for part in reversed(relative.parts):
        for word in re.split(r"[^a-z]+", part.lower()):
            if word in SPLIT_WORDS:
                return SPLIT_WORDS[word]
    return None


def find_files(path: Path, fmt: str) -> tuple[dict[str, list[str]], str]:
    """({split: [files]}, format) for a file or a folder of files.

    A single file is the `train` split. In a folder, a file whose name (or folder) says `train`,
    `validation`/`valid`/`dev` or `test` goes to that split; files that name no split go to `train`.
    """
    if path.is_file():
        found = file_format(path) if fmt == "auto" else fmt
        if found is None:
            raise PassError(
                f"cannot tell the format of {path.name} from its extension; set `format` to one of "
                "csv, tsv, json, jsonl, parquet, text"
            )
        return {"train": [str(path)]}, found
    files = sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
        and file_format(p) is not None
    )
    if fmt != "auto":
        # json and jsonl are one reader: a folder of .jsonl files with format json is fine.
        family = {"jsonl": "json"}.get(fmt, fmt)
        files = [p for p in files if {"jsonl": "json"}.get(file_format(p), file_format(p)) == family]
    if not files:
        kinds = ", ".join(sorted(EXTENSIONS)) if fmt == "auto" else f"{fmt} files"
        raise PassError(f"{path} holds no data files ({kinds})")
    formats = sorted({file_format(p) for p in files})
    if fmt == "auto" and len(formats) > 1:
        raise PassError(f"{path} mixes formats ({', '.join(formats)}); set `format` or keep one format in the folder")
    by_split: dict[str, list[str]] = {}
    for p in files:
        by_split.setdefault(split_of(p.relative_to(path)) or "train", []).append(str(p))
    return {s: by_split[s] for s in SPLITS if s in by_split}, (formats[0] if fmt == "auto" else fmt)


def load_files(files: dict[str, list[str]], fmt: str, cache_dir: str) -> dict[str, Any]:
    """Load files with `datasets` into pandas frames, one per split (in memory; `cache_dir` is scratch)."""
    from datasets import load_dataset

    builder = {"tsv": "csv", "jsonl": "json"}.get(fmt, fmt)
    kwargs: dict[str, Any] = {}
    if builder == "csv":
        # Read every cell as text: "NA" or "null" is a message, not a missing value, and mixed
        # int/str label chunks would otherwise fail to merge; labels are decoded below.
        sep = "\t" if fmt == "tsv" else ","
        kwargs.update(sep=sep, keep_default_na=False, features=_all_text_features(files, sep))
    try:
        loaded = load_dataset(builder, data_files=files, cache_dir=cache_dir, keep_in_memory=True, **kwargs)
    except Exception as exc:  # pyarrow, pandas and json raise many types for a malformed file
        names = ", ".join(Path(f).name for fs in files.values() for f in fs)
        raise PassError(f"cannot read {names} as {fmt}: {type(exc).__name__}: {exc}") from exc
    return {split: ds.to_pandas() for split, ds in loaded.items()}


def _all_text_features(files: dict[str, list[str]], sep: str) -> Any:
    """String features for every column of a CSV (the header of its first file, read with pandas)."""
    import pandas as pd
    from datasets import Features, Value

    first = next(f for fs in files.values() for f in fs)
    try:
        header = pd.read_csv(first, sep=sep, nrows=0).columns
    except Exception as exc:  # an empty file, a broken quote, a bad compression
        raise PassError(f"cannot read the header of {Path(first).name}: {type(exc).__name__}: {exc}") from exc
    return Features({str(c): Value("string") for c in header})


def load_hub(repo_id: str, cache_dir: str | None) -> dict[str, Any]:
    """Load a hub dataset's splits into pandas frames; a clear PassError when the hub cannot be reached."""
    offline = hub_offline() or _env_true("HF_DATASETS_OFFLINE")
    hint = (
        f"download the dataset to a local file (e.g. `huggingface-cli download {repo_id} --repo-type dataset "
        f"--local-dir data/{repo_id.split('/')[-1]}`) and point `path` at it"
    )
    if offline:
        raise PassError(f"the Hugging Face hub is not reachable (offline mode is set) for dataset {repo_id!r}: {hint}")
    from datasets import load_dataset

    try:
        loaded = load_dataset(repo_id, cache_dir=cache_dir)
    except ConnectionError as exc:
        raise PassError(f"the Hugging Face hub is not reachable for dataset {repo_id!r} ({exc}): {hint}") from exc
    except Exception as exc:  # DatasetNotFoundError, FileNotFoundError, ...
        raise PassError(f"cannot load the hub dataset {repo_id!r}: {type(exc).__name__}: {exc}. Or {hint}") from exc
    return {split: ds.to_pandas() for split, ds in loaded.items()}


def _env_true(name: str) -> bool:
    import os

    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# --- column mapping ---------------------------------------------------------------------------------


def as_text(value: Any) -> str:
    """A cell as text: missing values (None, NaN) become ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else str(value)


def template_fields(template: str) -> list[str]:
    """The `{column}` placeholders of a template, in order."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        raise PassError(f"`template` is not a valid template ({exc}); write literal braces as {{{{ and }}}}") from exc


def map_columns(df: Any, cfg: Any, where: str) -> Any:
    """The source frame -> a frame with the conventional columns (text/text_pair or prompt/response, label).

    Every column named in the config must exist; the error lists the ones that do. A `label` column
    is kept raw here (encoded once all splits are known).
    """
    import pandas as pd

    columns = [str(c) for c in df.columns]
    wanted = {f: getattr(cfg, f) for f in ("text", "text_pair", "prompt", "response", "label") if getattr(cfg, f)}
    placeholders = template_fields(cfg.template) if cfg.template else []
    for field, column in wanted.items():
        if column not in columns:
            raise PassError(
                f"`{field}: {column}`: {where} has no column {column!r}; its columns are: {', '.join(columns)}"
            )
    missing = [p for p in placeholders if p not in columns]
    if missing:
        raise PassError(
            f"`template` uses {', '.join('{' + m + '}' for m in missing)} but {where} has no such column; "
            f"its columns are: {', '.join(columns)}"
        )
    out = pd.DataFrame(index=df.index)
    for field in ("text", "text_pair", "prompt", "response"):
        if field in wanted:
            out[field] = df[wanted[field]].map(as_text)
    if cfg.template:
        values = {p: df[p].map(as_text) for p in placeholders}
        rows = [dict(zip(values, row)) for row in zip(*values.values())] if values else [{}] * len(df)
        out["prompt"] = [cfg.template.format_map(r) for r in rows]
        # A rendered template is never empty; the row is empty when every field it uses is.
        out["_template_empty"] = [all(not v.strip() for v in r.values()) for r in rows] if values else False
    if "label" in wanted:
        out["label"] = df[wanted["label"]].to_numpy()
    return out.reset_index(drop=True)


# --- labels -------------------------------------------------------------------------------------------


def label_key(value: Any) -> str | int | None:
    """A label cell normalized: integers (also '3' read from CSV, 3.0 from a float column) as int,
    other values as stripped text, missing values as None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else str(value)
    text = str(value).strip()
    if not text:
        return None
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def label_space(keys: list[Any], names: list[str] | None) -> tuple[list[str], dict[Any, int]]:
    """(label names in id order, {normalized value: id}) for the values seen.

    With `names`, the values must all be names (`spam`) or all be ids in range (`1`); without, the
    names are the distinct values sorted (numerically when they are all integers).
    """
    distinct = sorted(set(keys), key=lambda k: (isinstance(k, str), k))
    if names is not None:
        if all(str(k) in names for k in distinct):
            return list(names), {k: names.index(str(k)) for k in distinct}
        if all(isinstance(k, int) and 0 <= k < len(names) for k in distinct):
            return list(names), {k: k for k in distinct}
        bad = [k for k in distinct if str(k) not in names]
        raise PassError(
            f"label {bad[0]!r} is not in label_names [{', '.join(names)}]"
            + (f" (and {len(bad) - 1} more: {', '.join(map(repr, bad[1:6]))})" if len(bad) > 1 else "")
            + "; add it to `label_names` or fix the data"
        )
    if len(distinct) < 2:
        raise PassError(
            f"the label column has {'only the value ' + repr(distinct[0]) if distinct else 'no values'}: "
            "a classifier needs at least two labels"
        )
    return [str(k) for k in distinct], {k: i for i, k in enumerate(distinct)}
