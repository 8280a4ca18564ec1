"""`pipeline step`: one step from its inputs' artifacts, as each Azure ML pipeline node runs it (fake passes)."""

from __future__ import annotations

import json
import shutil

from tests.helpers import cli, fake_project

EDGES = {"src": [], "a": ["src"], "b": ["src"], "m": ["a"], "j": ["a", "b", "m"]}


def run_nodes(wf, tmp_path, nodes: str = "nodes", cache: str | None = None) -> dict[str, int]:
    """Run every step as its own node, in DAG order, each with its own cache unless `cache` is shared."""
    codes = {}
    for step, refs in EDGES.items():
        args = ["step", wf, step, "--output", tmp_path / nodes / step,
                "--cache-dir", tmp_path / (cache or f"cache-{nodes}-{step}")]
        for ref in refs:
            args += ["--input", f"{ref}={tmp_path / nodes / ref}"]
        codes[step] = cli(*args)
    return codes


def manifest(folder) -> dict:
    return json.loads((folder / "artifact.json").read_text())


def counts(tmp_path) -> list[str]:
    path = tmp_path / "counter.txt"
    return path.read_text().split() if path.exists() else []


def test_nodes_rebuild_the_run_exactly(tmp_path, monkeypatch):
    """One step per node, each with a fresh cache: same keys, digests and outputs as `pipeline run`."""
    wf = fake_project(tmp_path)
    assert run_nodes(wf, tmp_path) == {s: 0 for s in EDGES}
    assert (tmp_path / "nodes" / "j" / "data" / "text.txt").read_text() == "hello?|hello!|hello?"
    assert cli("run", wf, "--cache-dir", tmp_path / "run-cache", "--output", tmp_path / "out") == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    for step in EDGES:
        node = manifest(tmp_path / "nodes" / step)
        assert node["key"] == run["steps"][step]["key"], step
    assert (tmp_path / "out" / "joined" / "text.txt").read_text() == "hello?|hello!|hello?"
    # the node output is the cache's own format: data/ and a manifest listing every file
    assert set(manifest(tmp_path / "nodes" / "m")["files"]) == {"model.txt"}
    assert manifest(tmp_path / "nodes" / "m")["kind"] == "hf_model"


def test_a_shared_cache_makes_later_nodes_cache_hits(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter.txt"))
    wf = fake_project(tmp_path)
    assert set(run_nodes(wf, tmp_path, "first", cache="shared").values()) == {0}
    assert sorted(counts(tmp_path)) == sorted(EDGES)
    assert set(run_nodes(wf, tmp_path, "second", cache="shared").values()) == {0}
    assert sorted(counts(tmp_path)) == sorted(EDGES)  # nothing ran again
    assert manifest(tmp_path / "second" / "j")["digest"] == manifest(tmp_path / "first" / "j")["digest"]


def test_a_source_step_reads_an_overridden_path(tmp_path):
    """A node's source step reads the mounted input that `--set steps.S.path=...` points it at."""
    wf = fake_project(tmp_path)
    (tmp_path / "mounted.txt").write_text("from azure")
    assert cli("step", wf, "src", "--set", f"steps.src.path={tmp_path / 'mounted.txt'}", "--output", tmp_path / "o") == 0
    assert (tmp_path / "o" / "data" / "text.txt").read_text() == "from azure"


def test_missing_unexpected_and_malformed_inputs_are_command_line_errors(tmp_path, capsys):
    wf = fake_project(tmp_path)
    assert cli("step", wf, "src", "--output", tmp_path / "nodes" / "src") == 0
    capsys.readouterr()
    assert cli("step", wf, "j", "--input", f"a={tmp_path / 'nodes' / 'src'}", "--input", f"src={tmp_path}",
               "--output", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "step 'j' takes the output of 'b' (parts): give --input b=DIR" in err
    assert "--input src: step 'j' does not reference 'src'" in err
    assert cli("step", wf, "a", "--input", "src", "--output", tmp_path / "o") == 2
    assert "--input takes STEP=DIR" in capsys.readouterr().err
    assert cli("step", wf, "sorc", "--output", tmp_path / "o") == 2
    assert "did you mean 'src'?" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert cli("step", wf, "src", "--output", tmp_path / "full") == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_a_damaged_or_wrong_kind_input_is_refused(tmp_path, capsys):
    wf = fake_project(tmp_path)
    assert run_nodes(wf, tmp_path) == {s: 0 for s in EDGES}
    capsys.readouterr()
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "nodes" / "src", damaged)
    (damaged / "data" / "text.txt").write_text("tampered")
    assert cli("step", wf, "a", "--input", f"src={damaged}", "--output", tmp_path / "o1") == 1
    assert "the artifact is damaged (changed text.txt)" in capsys.readouterr().err
    (damaged / "artifact.json").unlink()
    assert cli("step", wf, "a", "--input", f"src={damaged}", "--output", tmp_path / "o2") == 1
    assert "no artifact.json there" in capsys.readouterr().err
    # m's artifact is an hf_model; src produces a dataset
    assert cli("step", wf, "a", "--input", f"src={tmp_path / 'nodes' / 'm'}", "--output", tmp_path / "o3") == 1
    assert "holds 'hf_model', but step 'src' produces 'dataset'" in capsys.readouterr().err


def test_a_failing_step_exits_1_and_writes_no_artifact(tmp_path, capsys):
    wf = fake_project(tmp_path)
    assert cli("step", wf, "src", "--output", tmp_path / "src") == 0
    code = cli("step", wf, "a", "--set", "steps.a.fail=true", "--input", f"src={tmp_path / 'src'}",
               "--output", tmp_path / "a")
    assert code == 1
    assert "asked to fail" in capsys.readouterr().err
    assert not (tmp_path / "a" / "artifact.json").exists()


def test_missed_goals_fail_the_node_but_keep_its_artifact(tmp_path, capsys):
    wf = fake_project(tmp_path)
    assert cli("step", wf, "src", "--output", tmp_path / "src") == 0
    goals = ("--set", "steps.a.goals_missed=1", "--set", "steps.a.goals_fail=true")
    code = cli("step", wf, "a", *goals, "--input", f"src={tmp_path / 'src'}", "--output", tmp_path / "a")
    assert code == 1 and "1 goal(s) missed" in capsys.readouterr().err
    assert (tmp_path / "a" / "artifact.json").exists()
    warn = ("--set", "steps.a.goals_missed=1")
    assert cli("step", wf, "a", *warn, "--input", f"src={tmp_path / 'src'}", "--output", tmp_path / "a2") == 0
