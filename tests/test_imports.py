"""The fast paths import no ML library, and the layers hold (import-linter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, fake_project

OUR_PACKAGES = ("schemas", "pipelines", "passes", "runner")
HEAVY = ["torch", "transformers", "peft", "onnx", "onnxruntime", "onnxruntime_genai", "optimum", "datasets", "sklearn"]

PROBE = """
import json, sys
from runner.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}), file=sys.stderr)
""" % (HEAVY,)


def _probe(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_PLUGINS": "tests.fakes"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)
    elapsed = time.perf_counter() - t0
    line = [l for l in proc.stderr.splitlines() if l.startswith('{"code"')]
    assert line, proc.stderr
    return json.loads(line[-1]), elapsed


RECIPE = ROOT / "pipelines" / "recipes" / "spam-minilm-int8.yaml"


@pytest.mark.parametrize("args", [
    ["validate", str(RECIPE)],
    ["plan", str(RECIPE)],
    ["schema"],
    ["passes"],
    ["passes", "quantize"],
])
def test_fast_commands_import_no_ml_library(args):
    result, elapsed = _probe(*args)
    assert result["code"] == 0
    assert result["heavy"] == []


def test_help_imports_no_ml_library():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys\nfrom runner.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n" \
           f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_a_cached_rerun_imports_no_ml_library(tmp_path):
    wf = fake_project(tmp_path)
    first, _ = _probe("run", wf, "--cache-dir", tmp_path / "c", "--output", tmp_path / "o")
    again, _ = _probe("run", wf, "--cache-dir", tmp_path / "c", "--output", tmp_path / "o")
    assert first["code"] == again["code"] == 0
    assert again["heavy"] == []
    assert {s["status"] for s in json.loads((tmp_path / "o" / "run.json").read_text())["steps"].values()} == {"cached"}


def test_layers_are_kept():
    """runner -> pipelines/passes -> schemas; schemas and pipelines import no ML library."""
    from pathlib import Path

    tool = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(tool), "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def import_cycles(packages=OUR_PACKAGES) -> list[list[str]]:
    """Each group of our modules that import one another in a circle (strongly connected, 2+ modules).

    grimp reads every import statement, including those inside functions and under TYPE_CHECKING: a
    lazy import still ties two modules together, and a circle of them breaks when the order changes.
    """
    import grimp
    import networkx as nx

    graph = grimp.build_graph(*packages, cache_dir=None)
    ours = {m for m in graph.modules if m.split(".")[0] in packages}
    edges = nx.DiGraph()
    edges.add_nodes_from(ours)
    edges.add_edges_from((m, t) for m in ours for t in graph.find_modules_directly_imported_by(m) if t in ours)
    return sorted(sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1)


def test_no_import_circles():
    assert import_cycles() == []
