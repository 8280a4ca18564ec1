"""Helpers for engine tests: write a workflow file, run the CLI in-process or in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import tests.fakes  # noqa: F401  (registers the fake passes in this process)

ROOT = Path(__file__).resolve().parent.parent


def write(folder: Path, text: str, name: str = "wf.yaml") -> Path:
    """Write a dedented workflow file and return its path."""
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def cli(*args: str) -> int:
    """Run `pipeline ARGS` in this process; return the exit code."""
    from runner.cli import main

    return main([str(a) for a in args])


def default_signals() -> None:
    """`preexec_fn` for children that tests interrupt: SIGINT back to its default. A shell that starts a
    job in the background (`cmd &` without job control) makes it ignore SIGINT, and Python then never raises
    KeyboardInterrupt: a Ctrl-C test would then see the run finish instead of stop."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_subprocess(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `pipeline ARGS` in a fresh interpreter (with the fake passes as a plugin)."""
    full_env = {**os.environ, "PIPELINE_PLUGINS": "tests.fakes", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=300)


FAKE_WORKFLOW = """
version: 1
name: fake
description: a small DAG of fake passes
steps:
  src: {type: fake_source, path: in.txt}
  a: {type: fake_append, data: src, suffix: "?"}
  b: {type: fake_append, data: src, suffix: "!"}
  m: {type: fake_train, data: a}
  j: {type: fake_join, parts: [a, b, m]}
outputs:
  joined: j
"""


def fake_project(folder: Path, text: str = FAKE_WORKFLOW) -> Path:
    """A folder with in.txt and a workflow of fake passes; returns the workflow path."""
    (folder / "in.txt").write_text("hello")
    return write(folder, text)
