"""Tests of the `load_data` pass: formats, column mapping, labels, cleaning, splits, balance, errors."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from passes.base import PassError
from passes.sources.data import LoadData
from schemas.steps import LoadDataConfig
from tests.builders import ROOT, tiny_corpus

RECIPE_DATA = ROOT / "pipelines" / "recipes" / "data"


def run(make_ctx, step="data", **fields):
    """Run load_data with the given config fields; returns (meta, ctx, DatasetDict)."""
    from datasets import load_from_disk

    ctx = make_ctx(step)
    meta = LoadData(LoadDataConfig(type="load_data", **fields)).run({}, ctx)
    return meta, ctx, load_from_disk(str(ctx.out_dir / "data"))


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def imbalanced_rows(n_ham: int = 90, n_spam: int = 30) -> list[list[str]]:
    return [["ham", f"see you at lunch {i}"] for i in range(n_ham)] + [["spam", f"win cash now {i}"] for i in range(n_spam)]


# --- the basic path ---------------------------------------------------------------------------------


def test_csv_classification_default_splits(make_ctx, tiny_csv):
    meta, ctx, dd = run(make_ctx, path=str(tiny_csv), text="text", label="label")
    assert list(dd) == ["train", "validation", "test"]
    assert {s: len(d) for s, d in dd.items()} == {"train": 84, "validation": 12, "test": 24}
    assert dd["train"].features["label"].names == ["ham", "spam"]
    assert dd["train"].column_names == ["text", "label"]
    assert meta["labels"] == ["ham", "spam"] and meta["format"] == "classification"
    for split, d in dd.items():
        counts = Counter(d["label"])
        assert meta["splits"][split] == {"rows": len(d), "labels": {"ham": counts[0], "spam": counts[1]}}
    assert meta["dropped"] == {"drop_empty": 0, "max_chars": 0, "drop_duplicates": 0, "max_samples": 0}
    assert meta["summary"].startswith("train 84 (ham ") and meta["summary"].endswith("validation 12, test 24")
    # Only data/ is written: no datasets cache files next to it.
    assert [p.name for p in ctx.out_dir.iterdir()] == ["data"]
    assert any(line.startswith("train: 84 rows (ham") for line in ctx.lines)
    # Every row of the file is in exactly one split, with its label.
    expected = {(t, l) for t, l in tiny_corpus()}
    seen = [(row["text"], ["ham", "spam"][row["label"]]) for d in dd.values() for row in d]
    assert sorted(seen) == sorted(expected)


def test_same_config_and_file_give_identical_bytes(make_ctx, tiny_csv):
    fields = dict(path=str(tiny_csv), text="text", label="label", stratify=True, balance="oversample")
    _, a, _ = run(make_ctx, "a", **fields)
    _, b, _ = run(make_ctx, "b", **fields)
    assert digests(a.out_dir) == digests(b.out_dir)
    _, c, _ = run(make_ctx, "c", **{**fields, "seed": 7})
    assert digests(c.out_dir) != digests(a.out_dir)


def test_relative_path_resolves_against_the_workflow_folder(make_ctx, tiny_csv):
    # make_ctx's workflow_dir is tmp_path, where tiny_csv lives.
    meta, _, dd = run(make_ctx, path="tiny.csv", text="text", label="label")
    assert sum(len(d) for d in dd.values()) == 120


# --- the real recipe data ------------------------------------------------------------------------------


def test_sms_spam_stratified_undersampled_is_balanced_and_deterministic(make_ctx):
    fields = dict(
        path=str(RECIPE_DATA / "sms_spam.csv"), text="text", label="label",
        splits={"train": 0.7, "validation": 0.1, "test": 0.2}, stratify=True, balance="undersample",
    )
    meta, ctx, dd = run(make_ctx, "sms1", **fields)
    train = meta["splits"]["train"]["labels"]
    assert train["ham"] == train["spam"] > 300
    assert Counter(dd["train"]["label"]) == {0: train["ham"], 1: train["spam"]}
    # Validation and test keep the natural (stratified) mix: ~13% spam in each.
    for split in ("validation", "test"):
        labels = meta["splits"][split]["labels"]
        assert 0.10 < labels["spam"] / (labels["spam"] + labels["ham"]) < 0.16
    cleaned = 4837 - meta["dropped"]["drop_duplicates"]
    rows = {s: meta["splits"][s]["rows"] for s in ("validation", "test")}
    assert rows == {"validation": round(cleaned * 0.1), "test": round(cleaned * 0.2)}
    assert meta["balance"]["rows_before"] == cleaned - sum(rows.values())
    _, ctx2, _ = run(make_ctx, "sms2", **fields)
    assert digests(ctx.out_dir) == digests(ctx2.out_dir)


def test_chatterbot_instruction_mapping(make_ctx):
    meta, _, dd = run(make_ctx, path=str(RECIPE_DATA / "chatterbot_qa.jsonl"), prompt="instruction", response="response")
    assert meta["format"] == "instruction" and meta["labels"] is None
    assert dd["train"].column_names == ["prompt", "response"]
    first = json.loads((RECIPE_DATA / "chatterbot_qa.jsonl").read_text().splitlines()[0])
    pairs = {(r["prompt"], r["response"]) for d in dd.values() for r in d}
    assert (first["instruction"], first["response"]) in pairs
    assert meta["splits"]["train"]["labels"] == {}


# --- formats -----------------------------------------------------------------------------------------


ROWS = [{"sentence": f"row number {i}", "y": "pos" if i % 2 else "neg"} for i in range(40)]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet", "csv.gz"])
def test_formats_by_extension(make_ctx, tmp_path, fmt):
    import gzip

    import pandas as pd

    df = pd.DataFrame(ROWS)
    path = tmp_path / f"rows.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "csv.gz":
        with gzip.open(path, "wt") as f:
            df.to_csv(f, index=False)
    elif fmt == "tsv":
        df.to_csv(path, index=False, sep="\t")
    elif fmt == "json":
        path.write_text(json.dumps(ROWS))
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    meta, _, dd = run(make_ctx, path=str(path), text="sentence", label="y")
    assert meta["labels"] == ["neg", "pos"]
    assert sorted(r["text"] for d in dd.values() for r in d) == sorted(r["sentence"] for r in ROWS)


def test_text_format_one_row_per_line(make_ctx, tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line {i}\n" for i in range(20)) + "\n")
    meta, _, dd = run(make_ctx, path=str(path), text="text", splits={"train": 0.8, "test": 0.2})
    assert meta["labels"] is None and list(dd) == ["train", "test"]
    assert sum(len(d) for d in dd.values()) == 20  # the blank line is dropped
    assert meta["dropped"]["drop_empty"] == 1


def test_explicit_format_reads_an_unknown_extension(make_ctx, tmp_path):
    path = write_csv(tmp_path / "rows.data", ["label", "text"], imbalanced_rows())
    with pytest.raises(PassError, match=r"cannot tell the format of rows.data .*set `format`"):
        run(make_ctx, path=str(path), text="text", label="label")
    _, _, dd = run(make_ctx, "b", path=str(path), format="csv", text="text", label="label")
    assert sum(len(d) for d in dd.values()) == 120


def test_csv_keeps_na_strings_as_text(make_ctx, tmp_path):
    rows = [["ham", "NA"], ["spam", "null"]] + imbalanced_rows(10, 10)
    path = write_csv(tmp_path / "na.csv", ["label", "text"], rows)
    meta, _, dd = run(make_ctx, path=str(path), text="text", label="label", splits={"train": 0.5, "test": 0.5})
    texts = {r["text"] for d in dd.values() for r in d}
    assert {"NA", "null"} <= texts and meta["dropped"]["drop_empty"] == 0


def test_folder_with_split_files(make_ctx, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    rows = imbalanced_rows(20, 20)
    write_csv(folder / "train.csv", ["label", "text"], rows[:30])
    write_csv(folder / "dev.csv", ["label", "text"], rows[30:35])
    write_csv(folder / "test.csv", ["label", "text"], rows[35:])
    (folder / ".hidden.csv").write_text("junk")
    meta, ctx, dd = run(make_ctx, path=str(folder), text="text", label="label", splits="existing")
    assert {s: len(d) for s, d in dd.items()} == {"train": 30, "validation": 5, "test": 5}
    assert set(dd["test"]["text"]) == {r[1] for r in rows[35:]}
    # With ratios, the source's splits are merged, then cleaned (a test row that is also in train is a
    # duplicate), and re-split.
    write_csv(folder / "test.csv", ["label", "text"], rows[35:] + [rows[0]])
    meta, ctx, dd = run(make_ctx, "ratios", path=str(folder), text="text", label="label")
    assert sum(len(d) for d in dd.values()) == 40 and meta["dropped"]["drop_duplicates"] == 1
    assert any("merged and re-split" in line for line in ctx.lines)


def test_folder_errors(make_ctx, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_csv(mixed / "a.csv", ["label", "text"], imbalanced_rows())
    (mixed / "b.jsonl").write_text('{"label": "ham", "text": "x"}\n')
    with pytest.raises(PassError, match=r"mixes formats \(csv, jsonl\)"):
        run(make_ctx, path=str(mixed), text="text", label="label")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("nothing")
    with pytest.raises(PassError, match="holds no data files"):
        run(make_ctx, "b", path=str(empty), text="text", label="label")


def test_missing_path_and_malformed_file(make_ctx, tmp_path):
    with pytest.raises(PassError, match="no such file or folder"):
        run(make_ctx, path="nope.csv", text="text")
    with pytest.raises(PassError, match=r"data/nope.csv: no such file or folder"):  # not taken for a hub id
        run(make_ctx, path="data/nope.csv", text="text")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(PassError, match=r"cannot read bad.jsonl as jsonl"):
        run(make_ctx, "b", path=str(bad), text="text")


def test_hub_dataset_offline_is_a_clear_error(make_ctx, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(PassError, match=r"hub is not reachable.*download the dataset to a local file"):
        run(make_ctx, path="someone/some-dataset", text="text")


# --- columns and labels ----------------------------------------------------------------------------------


def test_missing_column_lists_the_columns(make_ctx, tiny_csv):
    with pytest.raises(PassError, match=r"`text: body`: .* has no column 'body'; its columns are: label, text"):
        run(make_ctx, path=str(tiny_csv), text="body", label="label")
    with pytest.raises(PassError, match=r"`label: y`: .*its columns are: label, text"):
        run(make_ctx, "b", path=str(tiny_csv), text="text", label="y")


def test_template_builds_the_prompt(make_ctx, tmp_path):
    rows = [{"q": f"question {i}", "ctx": "" if i % 2 else f"context {i}", "a": f"answer {i}"} for i in range(10)]
    rows.append({"q": "", "ctx": "", "a": "orphan answer"})
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta, _, dd = run(
        make_ctx, path=str(path), template="Q: {q}\nContext: {ctx}", response="a", splits={"train": 0.5, "test": 0.5}
    )
    prompts = {r["prompt"]: r["response"] for d in dd.values() for r in d}
    assert prompts["Q: question 0\nContext: context 0"] == "answer 0"
    assert prompts["Q: question 1\nContext: "] == "answer 1"  # an empty field alone does not drop a row
    assert "orphan answer" not in prompts.values() and meta["dropped"]["drop_empty"] == 1


def test_template_placeholder_must_be_a_column(make_ctx, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"q": "a", "a": "b"}\n')
    with pytest.raises(PassError, match=r"`template` uses \{question\} but .* its columns are: q, a"):
        run(make_ctx, path=str(path), template="Q: {question}", response="a")


def test_text_pair(make_ctx, tmp_path):
    rows = [[f"premise {i}", f"hypothesis {i}", ["yes", "no"][i % 2]] for i in range(20)]
    path = write_csv(tmp_path / "pairs.csv", ["a", "b", "y"], rows)
    _, _, dd = run(make_ctx, path=str(path), text="a", text_pair="b", label="y", splits={"train": 0.5, "test": 0.5})
    assert dd["train"].column_names == ["text", "text_pair", "label"]
    row = dd["train"][0]
    assert row["text"].replace("premise", "hypothesis") == row["text_pair"]


def test_label_names_set_the_id_order(make_ctx, tiny_csv):
    meta, _, dd = run(make_ctx, path=str(tiny_csv), text="text", label="label", label_names=["spam", "ham"])
    assert meta["labels"] == ["spam", "ham"] and dd["train"].features["label"].names == ["spam", "ham"]
    truth = dict(tiny_corpus())
    assert all(["spam", "ham"][r["label"]] == truth[r["text"]] for d in dd.values() for r in d)


def test_label_not_in_label_names_is_named(make_ctx, tmp_path):
    rows = imbalanced_rows(10, 10) + [["spamm", "typo label"]]
    path = write_csv(tmp_path / "typo.csv", ["label", "text"], rows)
    with pytest.raises(PassError, match=r"label 'spamm' is not in label_names \[ham, spam\]"):
        run(make_ctx, path=str(path), text="text", label="label", label_names=["ham", "spam"])


def test_integer_labels(make_ctx, tmp_path):
    rows = [[[1, 2, 10][i % 3], f"text {i}"] for i in range(30)]
    path = write_csv(tmp_path / "ints.csv", ["label", "text"], rows)
    meta, _, dd = run(make_ctx, path=str(path), text="text", label="label", splits={"train": 0.5, "test": 0.5})
    assert meta["labels"] == ["1", "2", "10"]  # numeric order (as strings "10" would sort before "2")
    by_text = {r["text"]: r["label"] for d in dd.values() for r in d}
    assert by_text["text 2"] == 2 and by_text["text 1"] == 1 and by_text["text 0"] == 0
    # With names, integer labels are ids into them.
    rows = [[i % 2, f"text {i}"] for i in range(20)]
    path = write_csv(tmp_path / "ids.csv", ["label", "text"], rows)
    meta, _, dd = run(make_ctx, "b", path=str(path), text="text", label="label", label_names=["neg", "pos"],
                      splits={"train": 0.5, "test": 0.5})
    assert meta["labels"] == ["neg", "pos"]
    assert {r["text"]: r["label"] for d in dd.values() for r in d}["text 3"] == 1


def test_one_label_value_is_an_error(make_ctx, tmp_path):
    path = write_csv(tmp_path / "one.csv", ["label", "text"], [["ham", f"t {i}"] for i in range(10)])
    with pytest.raises(PassError, match="only the value 'ham': a classifier needs at least two labels"):
        run(make_ctx, path=str(path), text="text", label="label")


# --- cleaning -----------------------------------------------------------------------------------------------


def test_cleaning_rules_and_counts(make_ctx, tmp_path):
    rows = imbalanced_rows(20, 20)
    rows += [["ham", ""], ["spam", "   "], ["", "no label here"]]  # 3 empty
    rows += [rows[0], rows[1]]  # 2 duplicates
    rows += [["ham", "x" * 500]]  # 1 too long
    path = write_csv(tmp_path / "dirty.csv", ["label", "text"], rows)
    meta, _, dd = run(make_ctx, path=str(path), text="text", label="label", max_chars=100)
    assert meta["dropped"] == {"drop_empty": 3, "max_chars": 1, "drop_duplicates": 2, "max_samples": 0}
    assert sum(len(d) for d in dd.values()) == 40
    meta, _, dd = run(make_ctx, "keep", path=str(path), text="text", label="label", drop_duplicates=False,
                      max_samples=30)
    assert meta["dropped"]["drop_duplicates"] == 0 and meta["dropped"]["max_samples"] == 43 - 30  # the long row stays
    assert sum(len(d) for d in dd.values()) == 30


def test_missing_label_without_drop_empty_is_an_error(make_ctx, tmp_path):
    rows = imbalanced_rows(10, 10) + [["", "no label"]]
    path = write_csv(tmp_path / "nolabel.csv", ["label", "text"], rows)
    with pytest.raises(PassError, match=r"1 row\(s\) of .*nolabel.csv have no label \(the first is data row 21\).*drop_empty: true"):
        run(make_ctx, path=str(path), text="text", label="label", drop_empty=False)


def test_drop_empty_off_keeps_empty_texts(make_ctx, tmp_path):
    rows = imbalanced_rows(10, 10) + [["ham", ""]]
    path = write_csv(tmp_path / "e.csv", ["label", "text"], rows)
    _, _, dd = run(make_ctx, path=str(path), text="text", label="label", drop_empty=False, splits={"train": 0.5, "test": 0.5})
    assert "" in {r["text"] for d in dd.values() for r in d}


def test_nothing_left_after_cleaning(make_ctx, tmp_path):
    path = write_csv(tmp_path / "long.csv", ["label", "text"], imbalanced_rows())
    with pytest.raises(PassError, match=r"no rows left after cleaning .*120 by max_chars"):
        run(make_ctx, path=str(path), text="text", label="label", max_chars=3)


# --- splits and balance ---------------------------------------------------------------------------------------


def test_stratify_keeps_label_proportions(make_ctx, tmp_path):
    path = write_csv(tmp_path / "imb.csv", ["label", "text"], imbalanced_rows(160, 40))
    meta, _, _ = run(make_ctx, path=str(path), text="text", label="label", stratify=True)
    assert {s: meta["splits"][s]["labels"] for s in meta["splits"]} == {
        "train": {"ham": 112, "spam": 28}, "validation": {"ham": 16, "spam": 4}, "test": {"ham": 32, "spam": 8},
    }


def test_balance_only_touches_train(make_ctx, tmp_path):
    path = write_csv(tmp_path / "imb.csv", ["label", "text"], imbalanced_rows(160, 40))
    meta, ctx, dd = run(make_ctx, path=str(path), text="text", label="label", stratify=True, balance="undersample")
    assert meta["splits"]["train"]["labels"] == {"ham": 28, "spam": 28}
    assert meta["splits"]["test"]["labels"] == {"ham": 32, "spam": 8}
    assert meta["summary"] == "train 56 (ham 28, spam 28), validation 20, test 40"
    assert any("balanced train (undersample): ham 112, spam 28 -> 28 per label" in line for line in ctx.lines)
    meta, _, dd = run(make_ctx, "over", path=str(path), text="text", label="label", stratify=True, balance="oversample")
    assert meta["splits"]["train"]["labels"] == {"ham": 112, "spam": 112}
    assert len(set(dd["train"]["text"])) == 140  # the 28 spam rows repeated, nothing invented
    assert meta["balance"] == {"method": "oversample", "rows_before": 140, "rows_after": 224,
                               "labels_before": {"ham": 112, "spam": 28}}


def test_existing_splits_need_more_than_train(make_ctx, tiny_csv):
    with pytest.raises(PassError, match=r"`splits: existing` needs a train split and a validation or test split, but .* has train"):
        run(make_ctx, path=str(tiny_csv), text="text", label="label", splits="existing")


def test_a_split_with_no_rows_is_an_error(make_ctx, tmp_path):
    path = write_csv(tmp_path / "small.csv", ["label", "text"], imbalanced_rows(2, 2))
    with pytest.raises(PassError, match=r"the validation split would get 0 of 4 rows at ratio 0.1"):
        run(make_ctx, path=str(path), text="text", label="label")


def test_stratify_impossible_is_explained(make_ctx, tmp_path):
    path = write_csv(tmp_path / "rare.csv", ["label", "text"], imbalanced_rows(40, 1))
    with pytest.raises(PassError, match=r"cannot stratify the validation split .*turn `stratify` off"):
        run(make_ctx, path=str(path), text="text", label="label", stratify=True)


def test_schema_rejects_contradictory_mappings():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not both"):
        LoadDataConfig(type="load_data", path="x.csv", text="t", prompt="p")
    with pytest.raises(ValidationError, match="`text_pair` needs a `text` column"):
        LoadDataConfig(type="load_data", path="x.csv", prompt="p", text_pair="t")
    with pytest.raises(ValidationError, match="`label_names` needs a `label` column"):
        LoadDataConfig(type="load_data", path="x.csv", text="t", label_names=["a", "b"])


@pytest.mark.parametrize(("value", "hub"), [
    ("org/name", True),
    ("Qwen/Qwen2.5-0.5B", True),
    ("data/train.csv", False),  # the hub shape, but a data file: a typo of a local path
    ("models/tiny.gguf", False),
    ("pkg://package/folder", False),
    ("./org/name", False),
    ("one/two/three", False),
])
def test_hub_ids_are_told_from_local_paths(tmp_path, value, hub):
    from schemas.paths import looks_like_hub_id

    assert looks_like_hub_id(value, tmp_path) is hub
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert looks_like_hub_id("org/name", tmp_path) is False  # an existing local folder wins
