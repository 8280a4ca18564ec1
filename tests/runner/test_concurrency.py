"""Two processes on one cache, and a process killed mid-step: no corruption, no duplicate work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from runner.cache import Cache
from tests.helpers import ROOT, default_signals, fake_project


def _start(wf, tmp_path, out: str, *extra):
    env = {**os.environ, "PIPELINE_PLUGINS": "tests.fakes", "PYTHONPATH": str(ROOT),
           "FAKE_COUNTER": str(tmp_path / "counter.txt")}
    return subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "run", str(wf), "--cache-dir", str(tmp_path / "cache"),
         "--output", str(tmp_path / out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, preexec_fn=default_signals,
    )


def test_two_runs_on_one_cache_build_each_step_once(tmp_path):
    wf = fake_project(tmp_path)
    text = wf.read_text().replace('suffix: "!"}', 'suffix: "!", sleep: 2.0}')
    wf.write_text(text)
    first = _start(wf, tmp_path, "out1")
    time.sleep(0.8)
    second = _start(wf, tmp_path, "out2")
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    ran = (tmp_path / "counter.txt").read_text().split()
    assert sorted(ran) == ["a", "b", "j", "m", "src"], ran  # every step built once in all
    assert "waiting for another run" in err1 + err2
    assert (tmp_path / "out1" / "joined" / "text.txt").read_text() == (tmp_path / "out2" / "joined" / "text.txt").read_text()
    assert all(not Cache(tmp_path / "cache").verify(e.key) for e in Cache(tmp_path / "cache").entries())


def test_a_killed_run_leaves_no_half_artifact(tmp_path):
    wf = fake_project(tmp_path)
    wf.write_text(wf.read_text().replace('suffix: "!"}', 'suffix: "!", sleep: 30}'))
    proc = _start(wf, tmp_path, "out")
    deadline = time.time() + 60
    counter = tmp_path / "counter.txt"
    while time.time() < deadline and "b" not in (counter.read_text().split() if counter.exists() else []):
        time.sleep(0.1)
    time.sleep(0.3)  # b has written half its output by now
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    cache = Cache(tmp_path / "cache")
    assert "b" not in {e.step for e in cache.entries()}
    # the next run rebuilds b and collects the dead run's temporary folder
    wf.write_text(wf.read_text().replace("sleep: 30", "sleep: 0"))
    second = _start(wf, tmp_path, "out")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    Cache(tmp_path / "cache").gc(older_than_seconds=10**9)
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_ctrl_c_exits_130_and_keeps_nothing_half_built(tmp_path):
    wf = fake_project(tmp_path)
    wf.write_text(wf.read_text().replace('suffix: "!"}', 'suffix: "!", sleep: 30}'))
    proc = _start(wf, tmp_path, "out")
    counter = tmp_path / "counter.txt"
    deadline = time.time() + 60
    while time.time() < deadline and "b" not in (counter.read_text().split() if counter.exists() else []):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "b" not in {e.step for e in Cache(tmp_path / "cache").entries()}
    assert not list((tmp_path / "cache" / "tmp").iterdir())
