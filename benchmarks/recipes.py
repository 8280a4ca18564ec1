"""What the Olive comparisons share: run a recipe into a benchmark's cache and take its steps' artifacts."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Offline (tests and benchmarks never reach the hub) and without Olive's telemetry.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OLIVE_DISABLE_TELEMETRY": "1"}


def run_recipe(recipe: Path, cache_dir: Path, steps: tuple[str, ...], isa: str | None = None) -> list:
    """Run `recipe` with its cache in `cache_dir/cache` (a rerun builds nothing) and return `steps`' artifacts;
    `isa` builds for that instruction set instead of this machine's (`target.isa`)."""
    from runner.cache import Cache

    cache, out = cache_dir / "cache", cache_dir / "out"
    subprocess.run([sys.executable, "-m", "runner.cli", "run", str(recipe), "--cache-dir", str(cache),
                    "--output", str(out), "--quiet", *(["--set", f"target.isa={isa}"] if isa else [])], check=True, cwd=ROOT, env=ENV)
    run = json.loads((out / "run.json").read_text())
    # Named after the step: a shared cache may have built the same artifact as another step.
    return [dataclasses.replace(Cache(cache).lookup(run["steps"][s]["key"]), step=s) for s in steps]
