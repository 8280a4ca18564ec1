"""Isolated steps: a crash or an out-of-memory step fails alone, and Ctrl-C stops every worker."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psutil
import pytest

from runner.cache import Cache
from tests.reliability.common import intact, no_traceback, project, start, stop

BRANCHES = """
version: 1
name: iso
steps:
  src: {type: fake_source, path: in.txt}
  bad: {type: fake_work, data: src, BAD}
  after_bad: {type: fake_append, data: bad}
  good: {type: fake_append, data: src, sleep: 0.5}
  after_good: {type: fake_train, data: good}
outputs:
  model: after_good
"""

ABORT = "abort: true"
OVER_LIMIT = "allocate_mb: 600, sleep: 20, resources: {max_memory_gb: 0.3}"


@pytest.mark.parametrize("bad, how", [
    pytest.param(ABORT, ["--jobs", "2"], id="abort-jobs"),
    pytest.param(ABORT + ", isolation: process", [], id="abort-isolated"),
    pytest.param(OVER_LIMIT, ["--jobs", "2"], id="memory-jobs"),
    pytest.param(OVER_LIMIT, [], id="memory-isolated"),
])
def test_a_crashing_step_fails_alone(tmp_path, bad, how):
    wf = project(tmp_path / "proj", BRANCHES.replace("BAD", bad))
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    proc = start("run", wf, "--cache-dir", cache_dir, "--output", out, *how)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    no_traceback(stdout, stderr)
    doc = json.loads((out / "run.json").read_text())
    steps = doc["steps"]
    assert steps["bad"]["status"] == "failed" and steps["after_bad"]["status"] == "skipped"
    assert steps["good"]["status"] == steps["after_good"]["status"] == "ran"
    error = steps["bad"]["error"]
    if bad.startswith(ABORT):
        assert "killed by SIGABRT" in error and "peak memory" in error
    else:
        assert "out of memory" in error and "max_memory_gb = 0.3" in error
        assert steps["bad"]["resources"]["peak_memory_mb"] >= 300  # killed once over 300 MB; run.json rounds
    assert "bad" in stderr and error.split(";")[0] in stderr  # the console says it too
    cache = Cache(cache_dir)
    assert {e.step for e in cache.entries()} == {"src", "good", "after_good"}  # the sibling branch is cached
    assert not list((cache_dir / "tmp").iterdir())  # nothing half-built left behind
    assert intact(cache_dir) and (out / "model" / "model.txt").exists()


SLOW = """
version: 1
name: slow
steps:
  src: {type: fake_source, path: in.txt}
  a: {type: fake_append, data: src, suffix: "a", sleep: 60}
  b: {type: fake_append, data: src, suffix: "b", sleep: 60}
  j: {type: fake_join, parts: [a, b]}
"""


@pytest.mark.parametrize("sig, code, how, working", [
    pytest.param(signal.SIGINT, 130, ["--jobs", "2"], {"a", "b"}, id="sigint-two-workers"),
    pytest.param(signal.SIGTERM, 143, ["--jobs", "2"], {"a", "b"}, id="sigterm-two-workers"),
    pytest.param(signal.SIGINT, 130, ["--set", "isolation=process"], {"a"}, id="sigint-isolated"),
])
def test_ctrl_c_stops_every_worker(tmp_path, sig, code, how, working):
    wf = project(tmp_path / "proj", SLOW)
    cache_dir, out, counter = tmp_path / "cache", tmp_path / "out", tmp_path / "counter.txt"
    proc = start("run", wf, "--cache-dir", cache_dir, "--output", out, *how, counter=counter)
    deadline = time.time() + 60
    while time.time() < deadline and not working <= set(counter.read_text().split() if counter.exists() else []):
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) == len(working)  # each working step in its own process
    stop(proc, sig, code, within=8)
    gone, alive = psutil.wait_procs(workers, timeout=1)
    assert not alive
    doc = json.loads((out / "run.json").read_text())
    assert doc["status"] == "interrupted"
    assert {doc["steps"][s]["error"] for s in working} == {"interrupted"}
    assert {e.step for e in Cache(cache_dir).entries()} == {"src"}
    assert not list((cache_dir / "tmp").iterdir())
    assert intact(cache_dir)
