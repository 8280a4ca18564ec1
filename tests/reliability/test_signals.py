"""SIGINT and SIGTERM stop a run cleanly (run.json says `interrupted`); two runs on one cache build each step once."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from runner.cache import Cache
from tests.reliability.common import WORKFLOW, intact, no_traceback, project, snapshot, start, stop

SLOW = WORKFLOW.replace('suffix: "2", sleep: 0.3', 'suffix: "2", sleep: 30')


def _wait_for(counter: Path, step: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and step not in (counter.read_text().split() if counter.exists() else []):
        time.sleep(0.05)
    time.sleep(0.3)  # inside the step's work by now


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_cleanly(tmp_path, sig, code):
    wf = project(tmp_path / "proj", SLOW)
    cache_dir, out, counter = tmp_path / "cache", tmp_path / "out", tmp_path / "counter.txt"
    before = snapshot(tmp_path / "proj")
    proc = start("run", wf, "--cache-dir", cache_dir, "--output", out, counter=counter)
    _wait_for(counter, "b")
    stop(proc, sig, code, within=10)
    doc = json.loads((out / "run.json").read_text())
    assert doc["status"] == "interrupted" and doc["exit_code"] == code
    assert doc["steps"]["b"]["status"] == "failed" and doc["steps"]["b"]["error"] == "interrupted"
    cache = Cache(cache_dir)
    assert {e.step for e in cache.entries()} == {"src", "a"}  # b was not committed
    assert not list((cache_dir / "tmp").iterdir())  # and its work was removed
    assert snapshot(tmp_path / "proj") == before
    wf.write_text(WORKFLOW)
    resume = start("run", wf, "--cache-dir", cache_dir, "--output", out)
    stdout, stderr = resume.communicate(timeout=120)
    assert resume.returncode == 0, stderr
    no_traceback(stdout, stderr)


def test_two_runs_on_one_cache_build_each_step_once(tmp_path):
    wf = project(tmp_path / "proj", WORKFLOW.replace("sleep: 0.3", "sleep: 1.5"))
    counter = tmp_path / "counter.txt"
    before = snapshot(tmp_path / "proj")
    first = start("run", wf, "--cache-dir", tmp_path / "cache", "--output", tmp_path / "out1", counter=counter)
    _wait_for(counter, "src")
    second = start("run", wf, "--cache-dir", tmp_path / "cache", "--output", tmp_path / "out2", counter=counter)
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    no_traceback(out1, err1, out2, err2)
    assert sorted(counter.read_text().split()) == ["a", "b", "j", "m", "src"]  # each step built once in all
    assert "waiting for another run" in err1 + err2
    assert (tmp_path / "out1" / "joined" / "text.txt").read_bytes() == (tmp_path / "out2" / "joined" / "text.txt").read_bytes()
    assert intact(tmp_path / "cache")
    assert snapshot(tmp_path / "proj") == before
