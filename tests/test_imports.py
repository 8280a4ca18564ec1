"""The fast paths import only what they need, the layers hold (import-linter), and no import circles.

What is checked is which modules a command imports, never how long it takes: timings vary with the
machine and its load, while "`--help` imports no pydantic" holds everywhere and is what makes it fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, fake_project

HEAVY = ["torch", "transformers", "peft", "onnx", "onnxruntime", "onnxruntime_genai", "optimum", "datasets", "sklearn",
         "olive", "mlflow"]
#: Libraries that are light enough for a run but that a quick answer must not wait for.
ENGINE = ["networkx", "pydantic", "rich", "yaml"]
OUR_PACKAGES = ("schemas", "pipelines", "passes", "runner")

PROBE = """
import json, sys
from runner.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help
    code = exc.code
watched = %r
print(json.dumps({"code": code, "heavy": sorted(m for m in watched if m in sys.modules),
                  "steps": sorted(m for m in sys.modules if m.startswith("schemas.steps."))}), file=sys.stderr)
""" % (HEAVY + ENGINE,)


def _probe(*args, cwd=ROOT):
    """Run the CLI in a fresh interpreter; its exit code, the watched libraries and step modules it imported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_PLUGINS": "tests.fakes"}
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)
    line = [l for l in proc.stderr.splitlines() if l.startswith('{"code"')]
    assert line, proc.stderr
    result = json.loads(line[-1])
    result["ml"] = [m for m in result["heavy"] if m in HEAVY]
    return result


RECIPE = ROOT / "pipelines" / "recipes" / "spam-minilm-int8.yaml"


@pytest.mark.parametrize("args", [
    ["validate", str(RECIPE)],
    ["plan", str(RECIPE)],
    ["schema"],
    ["passes"],
    ["passes", "quantize"],
    ["passes", "olive"],
    ["passes", "olive/Gptq"],
])
def test_fast_commands_import_no_ml_library(args):
    result = _probe(*args)
    assert result["code"] == 0
    assert result["ml"] == []


OLIVE_WORKFLOW = """
version: 1
name: olive
steps:
  base: {type: model, path: m}
  int4: {type: olive, pass: ModelBuilder, model: base, config: {precision: int4}}
  rtn: {type: olive, pass: OnnxBlockWiseRtnQuantization, model: int4, config: {block_size: 32}}
"""


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_olive_steps_validate_and_plan_without_olive(tmp_path, command):
    """The manifest (JSON) answers for Olive: neither Olive nor torch is imported to check its passes."""
    (tmp_path / "m").mkdir()
    (tmp_path / "wf.yaml").write_text(OLIVE_WORKFLOW)
    result = _probe(command, tmp_path / "wf.yaml", "--cache-dir", tmp_path / "c") if command == "plan" \
        else _probe(command, tmp_path / "wf.yaml")
    assert result["code"] == 0
    assert result["ml"] == []


@pytest.mark.parametrize("args", [["--help"], ["validate", "--help"], ["cache", "ls", "--nope"]])
def test_help_and_bad_arguments_import_neither_the_contract_nor_rich(args):
    result = _probe(*args)
    assert result["code"] in (0, 2)
    assert result["heavy"] == []  # no pydantic (the models), networkx, rich or yaml: argparse answers alone


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_validate_and_plan_do_not_wait_for_networkx(command):
    result = _probe(command, RECIPE)
    assert result["code"] == 0
    assert "networkx" not in result["heavy"]  # it is imported only to name the cycles of a cyclic workflow


def test_a_cached_rerun_imports_no_ml_library(tmp_path):
    wf = fake_project(tmp_path)
    first = _probe("run", wf, "--cache-dir", tmp_path / "c", "--output", tmp_path / "o")
    again = _probe("run", wf, "--cache-dir", tmp_path / "c", "--output", tmp_path / "o")
    assert first["code"] == again["code"] == 0
    assert again["ml"] == []
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
