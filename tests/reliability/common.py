"""Helpers of the reliability suite: the workflow, subprocess runs, snapshots and the tally."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.helpers import ROOT, default_signals, write

#: What the suite tried (printed by conftest): kills, corrupt entries, damaged entries served, signals.
TALLY: Counter = Counter()

#: Five steps in a chain and a fan-in; the sleeps give a kill time to land inside a step's work.
WORKFLOW = """
version: 1
name: rel
steps:
  src: {type: fake_source, path: in.txt}
  a: {type: fake_append, data: src, suffix: "1", sleep: 0.3}
  b: {type: fake_append, data: a, suffix: "2", sleep: 0.3}
  m: {type: fake_train, data: b}
  j: {type: fake_join, parts: [a, b, m]}
outputs:
  joined: j
  model: m
"""


def project(folder: Path, text: str = WORKFLOW, data: str = "hello") -> Path:
    """A project folder: the workflow, its input and a user's file the tool must never touch."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "in.txt").write_text(data)
    (folder / "notes.txt").write_text("my own notes")
    return write(folder, text)


def env(counter: Path | None = None) -> dict:
    """The environment of a subprocess run: the fake passes as a plugin, offline."""
    extra = {"FAKE_COUNTER": str(counter)} if counter else {}
    return {**os.environ, "PIPELINE_PLUGINS": "tests.fakes", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **extra}


def start(*args, counter: Path | None = None) -> subprocess.Popen:
    """`pipeline ARGS` in a new process (stdout and stderr piped)."""
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(counter), cwd=ROOT,
                            preexec_fn=default_signals)


def stop(proc: subprocess.Popen, sig: int, code: int, within: float) -> tuple[str, str]:
    """Send `sig` to a run; it must exit with `code` within `within` seconds, without a traceback."""
    import time

    t0 = time.monotonic()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    TALLY["signals"] += 1
    assert proc.returncode == code, stderr
    assert time.monotonic() - t0 < within
    no_traceback(stdout, stderr)
    return stdout, stderr


def snapshot(folder: Path, *own: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder` outside the tool's own folders `own`."""
    out = {}
    own_resolved = [p.resolve() for p in own]
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(path.resolve().is_relative_to(o) for o in own_resolved):
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def tree(folder: Path) -> dict[str, bytes]:
    """Every file's bytes under `folder` (to compare outputs byte for byte)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_traceback(*texts: str) -> None:
    """No output of the tool shows a Python traceback."""
    for text in texts:
        assert "Traceback" not in text, text


def intact(cache_dir: Path) -> bool:
    """`pipeline cache verify` finds no damaged entry (every manifest sound, every byte as recorded)."""
    from tests.helpers import cli

    return cli("cache", "--cache-dir", cache_dir, "verify") == 0
