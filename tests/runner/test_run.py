"""Running workflows of fake passes: caching, outputs, failures, --set/--force/--only, exit codes."""

from __future__ import annotations

import json

from passes.ort.isa import ISAS

from runner.cache import Cache
from tests.helpers import FAKE_WORKFLOW, cli, fake_project


def run(wf, tmp_path, *extra) -> int:
    return cli("run", wf, "--cache-dir", tmp_path / "cache", "--output", tmp_path / "out", *extra)


def counts(tmp_path) -> list[str]:
    path = tmp_path / "counter.txt"
    return path.read_text().split() if path.exists() else []


def test_run_then_rerun_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter.txt"))
    wf = fake_project(tmp_path)
    assert run(wf, tmp_path) == 0
    assert sorted(counts(tmp_path)) == ["a", "b", "j", "m", "src"]
    assert (tmp_path / "out" / "joined" / "text.txt").read_text() == "hello?|hello!|hello?"
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert doc["status"] == "ok" and doc["exit_code"] == 0
    assert {s["status"] for s in doc["steps"].values()} == {"ran"}
    assert all(len(s["key"]) == 64 for s in doc["steps"].values())
    assert doc["steps"]["a"]["metrics"] == {"length": 6}
    assert "pydantic" in doc["packages"]
    assert doc["platform"]["cpu"]["isa"] in ISAS  # the CPU's instruction set is recorded with every run
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith("# fake") and f"({doc['platform']['cpu']['isa']})" in report
    assert (tmp_path / "out" / "logs" / "run.log").exists()
    assert run(wf, tmp_path) == 0
    assert len(counts(tmp_path)) == 5  # nothing ran again
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert {s["status"] for s in doc["steps"].values()} == {"cached"}


def test_changing_one_byte_reruns_exactly_the_downstream_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter.txt"))
    wf = fake_project(tmp_path)
    assert run(wf, tmp_path) == 0
    (tmp_path / "counter.txt").unlink()
    (tmp_path / "in.txt").write_text("hellO")
    assert run(wf, tmp_path) == 0
    assert sorted(counts(tmp_path)) == ["a", "b", "j", "m", "src"]
    (tmp_path / "counter.txt").unlink()
    assert run(wf, tmp_path, "--set", "steps.b.suffix=X") == 0
    assert sorted(counts(tmp_path)) == ["b", "j"]


def test_a_failing_step_exits_1_caches_nothing_and_independent_steps_still_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter.txt"))
    wf = fake_project(tmp_path)
    assert run(wf, tmp_path, "--set", "steps.a.fail=true") == 1
    err = capsys.readouterr().err
    assert "a (fake_append): FAILED" in err and "asked to fail" in err
    assert "j (fake_join): skipped" in err
    assert sorted(counts(tmp_path)) == ["a", "b", "src"]  # b does not depend on a: it ran
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert doc["status"] == "failed" and doc["exit_code"] == 1
    assert doc["steps"]["a"]["status"] == "failed" and doc["steps"]["a"]["error"] == "asked to fail"
    assert doc["steps"]["m"]["status"] == "skipped" and doc["steps"]["j"]["status"] == "skipped"
    cache = Cache(tmp_path / "cache")
    assert {e.step for e in cache.entries()} == {"src", "b"}  # the failure left no artifact
    assert not list((cache.root / "tmp").iterdir())  # and no half-built folder


def test_missed_goals_fail_the_run_only_when_asked_and_keep_the_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter.txt"))
    wf = fake_project(tmp_path)
    assert run(wf, tmp_path, "--set", "steps.a.goals_missed=2") == 0  # on_goal_miss: warn
    assert run(wf, tmp_path, "--set", "steps.a.goals_missed=2", "--set", "steps.a.goals_fail=true") == 1
    assert "GOALS MISSED" in capsys.readouterr().err
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert doc["status"] == "goals_missed" and doc["exit_code"] == 1
    assert {s["status"] for s in doc["steps"].values()} <= {"ran", "cached"}  # every step worked
    assert (tmp_path / "out" / "joined" / "text.txt").exists()  # outputs are written
    # the step is cached with its findings: a re-run that runs nothing still exits 1
    before = len(counts(tmp_path))
    assert run(wf, tmp_path, "--set", "steps.a.goals_missed=2", "--set", "steps.a.goals_fail=true") == 1
    assert len(counts(tmp_path)) == before


def test_fail_fast_stops_at_the_first_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter.txt"))
    wf = fake_project(tmp_path)
    assert run(wf, tmp_path, "--set", "steps.a.fail=true", "--fail-fast") == 1
    assert sorted(counts(tmp_path)) == ["a", "src"]


def test_force_reruns_a_cached_step(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter.txt"))
    wf = fake_project(tmp_path)
    assert run(wf, tmp_path) == 0
    (tmp_path / "counter.txt").unlink()
    assert run(wf, tmp_path, "--force", "b") == 0
    # b's output is byte-identical, so its digest is too and nothing downstream re-runs
    assert counts(tmp_path) == ["b"]
    assert run(wf, tmp_path, "--force", "nope") == 2


def test_only_runs_a_step_and_what_it_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter.txt"))
    wf = fake_project(tmp_path)
    assert run(wf, tmp_path, "--only", "m") == 0
    assert sorted(counts(tmp_path)) == ["a", "m", "src"]
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(doc["steps"]) == {"src", "a", "m"}
    assert doc["outputs"]["joined"]["path"] is None


def test_invalid_workflow_exits_2_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter.txt"))
    wf = fake_project(tmp_path, FAKE_WORKFLOW.replace("suffix: \"?\"", "suffix: \"?\", colour: red"))
    assert run(wf, tmp_path) == 2
    assert counts(tmp_path) == []


def test_plan_says_what_will_run_and_why(tmp_path, capsys):
    wf = fake_project(tmp_path)
    assert cli("plan", wf, "--cache-dir", tmp_path / "cache", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["src", "a", "b", "m", "j"]
    assert rows[0]["status"] == "will run" and rows[0]["reason"] == "never run"
    assert rows[1]["key"] is None and rows[1]["reason"] == "input will be rebuilt (src)"
    assert run(wf, tmp_path) == 0
    capsys.readouterr()
    cli("plan", wf, "--cache-dir", tmp_path / "cache", "--json", "--set", "steps.a.suffix=X")
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["src"]["status"] == "cached" and rows["b"]["status"] == "cached"
    assert rows["a"]["reason"] == "config changed (suffix)"
    assert rows["m"]["reason"] == "input will be rebuilt (a)"
    (tmp_path / "in.txt").write_text("other")
    cli("plan", wf, "--cache-dir", tmp_path / "cache", "--json")
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["src"]["reason"] == "input changed (path)"


def test_plan_history_follows_a_copied_workflow(tmp_path, capsys):
    """History is kept by workflow name: a copy of the file (or of the cache) still says what changed."""
    wf = fake_project(tmp_path)
    assert run(wf, tmp_path) == 0
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    (copy / "in.txt").write_text((tmp_path / "in.txt").read_text())
    (copy / "wf.yaml").write_text(wf.read_text())
    capsys.readouterr()
    cli("plan", copy / "wf.yaml", "--cache-dir", tmp_path / "cache", "--json", "--set", "steps.a.suffix=X")
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["src"]["status"] == "cached" and rows["a"]["reason"] == "config changed (suffix)"


def test_cache_ls_verify_gc_clear(tmp_path, capsys):
    wf = fake_project(tmp_path)
    cache_dir = tmp_path / "cache"
    assert run(wf, tmp_path) == 0
    capsys.readouterr()
    assert cli("cache", "--cache-dir", cache_dir, "ls") == 0
    assert "5 artifacts" in capsys.readouterr().out
    assert cli("cache", "--cache-dir", cache_dir, "verify") == 0
    entry = next(e for e in Cache(cache_dir).entries() if e.step == "a")
    (cache_dir / "artifacts" / entry.key / "data" / "text.txt").write_text("tampered")
    assert cli("cache", "--cache-dir", cache_dir, "verify") == 1
    assert "DAMAGED: changed text.txt" in capsys.readouterr().out
    assert cli("cache", "--cache-dir", cache_dir, "verify", "--repair") == 0
    assert cli("cache", "--cache-dir", cache_dir, "verify") == 0
    assert run(wf, tmp_path) == 0  # the removed artifact is rebuilt
    assert cli("cache", "--cache-dir", cache_dir, "gc", "--older-than", "1d") == 0
    assert len(Cache(cache_dir).entries()) == 5
    assert cli("cache", "--cache-dir", cache_dir, "gc", "--older-than", "0s") == 0
    assert Cache(cache_dir).entries() == []
    assert run(wf, tmp_path) == 0
    assert cli("cache", "--cache-dir", cache_dir, "clear", "--yes") == 0
    assert Cache(cache_dir).entries() == []


def test_schema_and_passes_commands(tmp_path, capsys):
    assert cli("schema") == 0
    schema = json.loads(capsys.readouterr().out)
    variants = schema["properties"]["steps"]["additionalProperties"]["discriminator"]["mapping"]
    assert {"model", "load_data", "lora", "quantize", "evaluate"} <= set(variants)
    assert cli("passes") == 0
    assert "load_data" in capsys.readouterr().out
    assert cli("passes", "lora") == 0
    assert "learning_rate" in capsys.readouterr().out
    assert cli("passes", "lroa") == 2
