"""Cache keys: golden value, what changes them and what does not."""

from __future__ import annotations

import json
import os

from pipelines.validate import load_workflow
from runner.cache import Cache
from runner.execute import compute_parts
from runner.keys import canonical_json, explain_change
from tests.helpers import fake_project

# The key of `src` (fake_source, path in.txt holding "hello", upper false) in the fake workflow.
# If this changes, every user's cache is invalidated: bump it only on purpose (KEY_FORMAT).
GOLDEN_SRC_KEY = "e28b56d55062e682c3a3ff30881f73ba9dbf2f89f9edc1ff659d328f10ef0e96"


def src_key(wf, *overrides, cache_dir) -> str:
    loaded = load_workflow(wf, overrides)
    return compute_parts(loaded, "src", {}, Cache(cache_dir)).key


def test_golden_key(tmp_path):
    wf = fake_project(tmp_path)
    assert src_key(wf, cache_dir=tmp_path / "c") == GOLDEN_SRC_KEY


def test_canonical_json_is_order_independent():
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == canonical_json({"a": [1, {"c": 3, "d": 2}], "b": 1})


def test_what_changes_the_key_and_what_does_not(tmp_path, monkeypatch):
    wf = fake_project(tmp_path)
    c = tmp_path / "c"
    base = src_key(wf, cache_dir=c)
    # not keyed: excluded fields, the description, the workflow's location, the step's name
    assert src_key(wf, "steps.src.verbose=true", cache_dir=c) == base
    assert src_key(wf, "description=other words", cache_dir=c) == base
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "in.txt").write_text("hello")
    (moved / "wf.yaml").write_text(wf.read_text())
    assert src_key(moved / "wf.yaml", cache_dir=c) == base
    # keyed: a config field, the content of the input, the pass version
    assert src_key(wf, "steps.src.upper=true", cache_dir=c) != base
    (tmp_path / "in.txt").write_text("hellO")
    changed = src_key(wf, cache_dir=c)
    assert changed != base
    (tmp_path / "in.txt").write_text("hello")
    assert src_key(wf, cache_dir=c) == base


def test_pass_version_enters_the_key(tmp_path, monkeypatch):
    import tests.fakes as fakes

    wf = fake_project(tmp_path)
    loaded = load_workflow(wf)
    cache = Cache(tmp_path / "c")
    src = compute_parts(loaded, "src", {}, cache)
    from passes.base import Artifact

    arts = {"src": Artifact("dataset", tmp_path, {}, "d" * 64, "src")}
    before = compute_parts(loaded, "a", arts, cache)
    monkeypatch.setattr(fakes.FakeAppend, "version", 2)
    after = compute_parts(loaded, "a", arts, cache)
    assert before.key != after.key
    assert explain_change(before.as_dict(), after) == "pass version changed (1 -> 2)"
    # the input's digest is keyed, not the upstream step's name
    arts2 = {"src": Artifact("dataset", tmp_path, {}, "e" * 64, "src")}
    assert compute_parts(loaded, "a", arts2, cache).key != after.key
    assert explain_change(after.as_dict(), compute_parts(loaded, "a", arts2, cache)) == "input changed (data)"
    assert src.key == GOLDEN_SRC_KEY


def test_file_digests_are_memoised_by_size_and_mtime(tmp_path, monkeypatch):
    from runner import fingerprint

    f = tmp_path / "big.bin"
    f.write_bytes(b"x" * 1000)
    fp = fingerprint.Fingerprinter(tmp_path / "fp.sqlite")
    first = fp.digest(f)
    calls = []
    real = fingerprint.sha256_file
    monkeypatch.setattr(fingerprint, "sha256_file", lambda p: calls.append(p) or real(p))
    assert fp.digest(f) == first and calls == []
    f.write_bytes(b"y" * 1000)
    os.utime(f, ns=(1, 10**18))
    assert fp.digest(f) != first and len(calls) == 1
