"""`cache` commands act only on a cache (its marker file); `gc` collects abandoned temporary work and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runner.cache import Cache
from tests.helpers import cli
from tests.reliability.common import env, no_traceback, project, snapshot

ACTIONS = [("ls",), ("verify",), ("verify", "--repair"), ("gc", "--older-than", "0s"), ("gc", "--dry-run"), ("clear", "--yes")]


def _pipeline(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], capture_output=True, text=True,
                          env=env(), timeout=120)


def _user_folder(folder):
    """A folder of someone's files that happen to use the cache's names."""
    for sub in ("tmp/work", "history", "artifacts/photos"):
        (folder / sub).mkdir(parents=True)
    (folder / "tmp" / "work" / "draft.txt").write_text("keep me")
    (folder / "history" / "2024.txt").write_text("keep me too")
    (folder / "artifacts" / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    return folder


@pytest.mark.parametrize("action", ACTIONS, ids=" ".join)
def test_cache_commands_refuse_a_folder_that_is_not_a_cache(tmp_path, capsys, action):
    folder = _user_folder(tmp_path / "mine")
    before = snapshot(tmp_path)
    assert cli("cache", "--cache-dir", folder, *action) == 2
    text = capsys.readouterr()
    assert "is not a pipeline cache" in text.err and "refusing" in text.err
    no_traceback(text.out, text.err)
    assert snapshot(tmp_path) == before  # nothing deleted, nothing written


def test_run_refuses_a_folder_that_is_not_a_cache(tmp_path):
    folder = _user_folder(tmp_path / "mine")
    wf = project(tmp_path / "proj")
    before = snapshot(tmp_path)
    done = _pipeline("run", wf, "--cache-dir", folder, "--output", tmp_path / "out")
    assert done.returncode == 2, done.stderr
    assert "is not a pipeline cache" in done.stderr
    no_traceback(done.stdout, done.stderr)
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_an_empty_or_absent_folder_has_nothing_to_do(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "absent"):
        assert cli("cache", "--cache-dir", folder, "gc") == 0
        assert "nothing to do" in capsys.readouterr().out
    assert list((tmp_path / "empty").iterdir()) == [] and not (tmp_path / "absent").exists()


def test_a_cache_made_before_the_marker_is_accepted_and_marked(tmp_path, capsys):
    wf = project(tmp_path / "proj")
    cache = tmp_path / "cache"
    assert cli("run", wf, "--cache-dir", cache, "--output", tmp_path / "out") == 0
    assert json.loads((cache / "pipeline-cache.json").read_text())["tool"] == "pipeline-orchestrator"
    assert (cache / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    (cache / "pipeline-cache.json").unlink()
    (cache / "CACHEDIR.TAG").unlink()
    assert cli("cache", "--cache-dir", cache, "ls") == 0
    assert "5 artifacts" in capsys.readouterr().out
    assert (cache / "pipeline-cache.json").exists()


def test_gc_removes_abandoned_temporary_work_and_says_how_much(tmp_path, capsys):
    wf = project(tmp_path / "proj")
    cache = tmp_path / "cache"
    assert cli("run", wf, "--cache-dir", cache, "--output", tmp_path / "out") == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no process has now
    for i in range(3):
        work = cache / "tmp" / f"{'ab' * 32}.{dead.pid}.0000000{i}" / "data"
        work.mkdir(parents=True)
        (work / "weights.bin").write_bytes(b"\0" * 1000)
    alive = cache / "tmp" / f"{'cd' * 32}.{os.getpid()}.00000000"
    alive.mkdir()
    capsys.readouterr()
    assert cli("cache", "--cache-dir", cache, "gc", "--dry-run") == 0
    text = capsys.readouterr().out
    assert "would remove 0 artifacts, 0 B; 3 abandoned temporary folders, 2.9 KB" in text
    assert text.count("would remove") == 4 and len(list((cache / "tmp").iterdir())) == 4
    assert cli("cache", "--cache-dir", cache, "gc") == 0
    text = capsys.readouterr().out
    assert "3 abandoned temporary folders" in text
    no_traceback(text)
    assert [p.name for p in (cache / "tmp").iterdir()] == [alive.name]  # a live run's work is kept
    assert len(Cache(cache).entries()) == 5
