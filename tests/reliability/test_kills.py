"""SIGKILL at random points of a run: the next run resumes from what was committed, to identical outputs."""

from __future__ import annotations

import json
import random
import signal
import time

from runner.cache import Cache
from tests.helpers import cli
from tests.reliability.common import TALLY, intact, no_traceback, project, snapshot, start, tree

KILLS = 12
SEED = 14


def began_work(proc, tmp, timeout: float = 60.0) -> None:
    """Return once the run has a step's work under way (its temporary folder holds something)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if tmp.is_dir() and any(tmp.iterdir()):
            return
        time.sleep(0.005)


def test_sigkill_at_random_points_then_resume(tmp_path, capsys):
    rng = random.Random(SEED)
    wf = project(tmp_path / "proj")
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    t0 = time.monotonic()
    first = start("run", wf, "--cache-dir", tmp_path / "timing-cache", "--output", tmp_path / "timing")
    first.communicate(timeout=120)
    span = time.monotonic() - t0  # a whole run, start-up included: kills land anywhere in it
    before = snapshot(tmp_path / "proj")
    left_work = 0
    for k in range(KILLS):
        (tmp_path / "proj" / "in.txt").write_text(f"hello {k}")  # a new input: every step has work to do again
        before["in.txt"] = snapshot(tmp_path / "proj")["in.txt"]
        ref_cache, ref_out = tmp_path / f"ref-cache-{k}", tmp_path / f"ref-{k}"
        assert cli("run", wf, "--cache-dir", ref_cache, "--output", ref_out) == 0, capsys.readouterr().err
        ref_keys = {e.key: e for e in Cache(ref_cache).entries()}

        proc = start("run", wf, "--cache-dir", cache_dir, "--output", out)
        if k % 2:  # anywhere in the run: start-up, a step's work, a commit, the outputs
            time.sleep(rng.uniform(0.05, 1.0) * span)
        else:  # inside a step's work, however slow the machine is today: wait for it to begin
            began_work(proc, cache_dir / "tmp")
            time.sleep(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        TALLY["kills"] += 1

        left_work += (cache_dir / "tmp").is_dir() and any((cache_dir / "tmp").iterdir())
        cache = Cache(cache_dir)
        assert intact(cache_dir)  # no half artifact
        for entry in cache.entries():  # nothing but what an intact run commits: no cached failure
            if entry.key in ref_keys:
                assert cache.lookup(entry.key, touch=False).digest == Cache(ref_cache).lookup(entry.key, touch=False).digest
        cache.fingerprints.close()

        resume = start("run", wf, "--cache-dir", cache_dir, "--output", out)
        stdout, stderr = resume.communicate(timeout=120)
        assert resume.returncode == 0, stderr
        no_traceback(stdout, stderr)
        assert json.loads((out / "run.json").read_text())["status"] == "ok"
        for name in ("joined", "model"):
            assert tree(out / name) == tree(ref_out / name), f"kill {k}: {name} differs"
        # the killed run's temporary work was removed by the run that built the same keys
        assert not list((cache_dir / "tmp").iterdir()), f"kill {k}: {list((cache_dir / 'tmp').iterdir())}"
        assert snapshot(tmp_path / "proj") == before
    assert left_work >= 3, "too few kills landed inside a step's work"
    print(f"{KILLS} kills (seed {SEED}), {left_work} inside a step's work, every resume byte-identical")
