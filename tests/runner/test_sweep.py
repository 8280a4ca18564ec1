"""Sweeps and select end to end with fake passes: keys per variant, caching of trials (grid, random, tpe),
and `select` picking, deploying, reporting and failing (no ML library)."""

from __future__ import annotations

import json

import pytest

import tests.fakes_sweep  # noqa: F401  (registers fake_eval)
from runner.execute import plan_workflow
from pipelines.validate import load_workflow
from tests.helpers import cli, fake_project

SWEEP = """
version: 1
name: sweep
steps:
  src: {type: fake_source, path: in.txt}
  base: {type: fake_train, data: src, epochs: 9}
  m:
    type: fake_train
    data: src
    matrix: {epochs: [1, 2, 3, 4, 5, 6]}
    SEARCH
  compare: {type: fake_eval, models: [base, m]}
  best:
    type: select
    evaluate: compare
    objective: {minimize: latency_p50_ms}
outputs: {model: best}
"""


def project(tmp_path, search: str = "", text: str = SWEEP):
    return fake_project(tmp_path, text.replace("SEARCH", f"search: {search}" if search else ""))


def run(wf, tmp_path, *extra) -> int:
    return cli("run", wf, "--cache-dir", tmp_path / "cache", "--output", tmp_path / "out", *extra)


def ran(tmp_path) -> list[str]:
    """The steps that executed since the last call (FAKE_COUNTER), then forget them."""
    path = tmp_path / "counter.txt"
    names = path.read_text().split() if path.exists() else []
    path.unlink(missing_ok=True)
    return names


@pytest.fixture(autouse=True)
def counter(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter.txt"))


def test_each_variant_is_an_ordinary_step_with_its_own_key(tmp_path):
    wf = project(tmp_path)
    assert run(wf, tmp_path, "--only", "src") == 0  # keys below it are known once it is built
    keys = {r.name: r.key for r in plan_workflow(load_workflow(wf), tmp_path / "cache")}
    variants = [f"m[epochs={e}]" for e in range(1, 7)]
    assert len({keys[v] for v in variants}) == 6
    # the key of a variant is the key of the same step written by hand (the cache is shared with it)
    by_hand = project(tmp_path, text=SWEEP.replace("matrix: {epochs: [1, 2, 3, 4, 5, 6]}", "epochs: 3"))
    assert {r.name: r.key for r in plan_workflow(load_workflow(by_hand), tmp_path / "cache")}["m"] == keys["m[epochs=3]"]


def test_a_sweep_runs_once_then_is_cached_and_only_q_means_every_variant(tmp_path, capsys):
    wf = project(tmp_path)
    assert run(wf, tmp_path, "--only", "m") == 0
    assert sorted(ran(tmp_path)) == sorted(["src"] + [f"m[epochs={e}]" for e in range(1, 7)])
    assert run(wf, tmp_path) == 0
    assert sorted(ran(tmp_path)) == ["base", "compare"]  # (and best: select is no fake, it counts nothing)
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert "m[epochs=4]" in doc["steps"] and doc["steps"]["best"]["status"] == "ran"
    assert set(doc["metrics"]["compare"]) == {"base", *(f"m[epochs={e}]" for e in range(1, 7))}  # one evaluation
    assert run(wf, tmp_path) == 0
    assert ran(tmp_path) == []
    assert "m[epochs=1] (fake_train): cached" in capsys.readouterr().err


def test_raising_max_samples_of_a_random_search_runs_only_the_new_trials(tmp_path):
    wf = project(tmp_path, "{sampler: random, max_samples: 2, seed: 3}")
    assert run(wf, tmp_path) == 0
    first = {n for n in ran(tmp_path) if n.startswith("m[")}
    assert len(first) == 2
    assert run(wf, tmp_path, "--set", "steps.m.search.max_samples=4") == 0
    second = ran(tmp_path)
    assert len({n for n in second if n.startswith("m[")} - first) == 2 and not first & set(second)
    assert run(wf, tmp_path, "--set", "steps.m.search.max_samples=4") == 0
    assert ran(tmp_path) == []


def test_a_tpe_search_replays_its_trials_from_the_cache_and_extends_them(tmp_path, capsys):
    wf = project(tmp_path, "{sampler: tpe, max_samples: 3, seed: 1, objective: {evaluate: compare, minimize: latency_p50_ms}}")
    assert run(wf, tmp_path) == 0
    first = [n for n in ran(tmp_path) if n.startswith("m[")]
    assert len(first) == 3
    trials = [l.split(": ")[1].split()[2] for l in capsys.readouterr().err.splitlines() if ": trial " in l]
    assert sorted(trials) == sorted(first)
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(doc["metrics"]["compare"]) == {"base", *first}  # the final evaluation times every trial at once
    assert doc["steps"]["best"]["meta"]["selected"] == min(first, key=lambda n: int(n[9:-1]))  # fewest epochs: fastest
    assert run(wf, tmp_path) == 0
    assert ran(tmp_path) == []  # the same trials, in the same order, all cache hits
    assert [l.split(": ")[1].split()[2] for l in capsys.readouterr().err.splitlines() if ": trial " in l] == trials
    assert run(wf, tmp_path, "--set", "steps.m.search.max_samples=5") == 0
    again = ran(tmp_path)
    new = [n for n in again if n.startswith("m[")]
    assert len(new) == 2 and not set(new) & set(first)  # only the two new trials were built
    assert [l.split(": ")[1].split()[2] for l in capsys.readouterr().err.splitlines() if ": trial " in l][:3] == trials


SELECT = """
version: 1
name: pick
steps:
  src: {type: fake_source, path: in.txt}
  base: {type: fake_train, data: src, epochs: 9}
  m:
    type: fake_train
    data: src
    matrix: {epochs: [1, 2, 3]}
  compare:
    type: fake_eval
    models: [base, m]
    table:
      base: {accuracy: 0.99, latency_p50_ms: 10, size_mb: 90}
      "m[epochs=1]": {accuracy: 0.98, latency_p50_ms: 3, size_mb: 23}
      "m[epochs=2]": {accuracy: 0.99, latency_p50_ms: 4, size_mb: 23}
      "m[epochs=3]": {accuracy: 0.985, latency_p50_ms: 4, size_mb: 12}
  best:
    type: select
    evaluate: compare
    candidates: [m]
    objective: {minimize: latency_p50_ms}
    constraints: {accuracy_delta_pt: {min: -0.5}}
outputs: {model: best}
"""


def test_select_picks_the_fastest_within_the_constraints_and_deploys_it_with_a_report(tmp_path):
    wf = fake_project(tmp_path, SELECT)
    assert run(wf, tmp_path) == 0
    out = tmp_path / "out"
    # m[epochs=1] is faster but 1 point less accurate; epochs 2 and 3 tie on latency: the smaller (3) wins
    assert (out / "model" / "model.txt").read_text() == "hello" * 3
    doc = json.loads((out / "run.json").read_text())
    assert doc["steps"]["best"]["meta"]["selected"] == "m[epochs=3]"
    assert "tied with m[epochs=2]" in doc["steps"]["best"]["summary"]
    report = (out / "reports" / "best" / "report.md").read_text()
    assert "Chose **m[epochs=3]**" in report and "missed: accuracy_delta_pt -1 (≥ -0.5)" in report
    assert (out / "reports" / "best" / "pareto.png").stat().st_size > 1000
    assert "## Report: best" in (out / "report.md").read_text()
    chosen = json.loads((out / "reports" / "best" / "selection.json").read_text())
    assert [c["name"] for c in chosen["candidates"]] == ["m[epochs=1]", "m[epochs=2]", "m[epochs=3]"]


def test_select_with_a_weighted_objective_and_without_constraints(tmp_path):
    wf = fake_project(tmp_path, SELECT.replace("objective: {minimize: latency_p50_ms}",
                                               "objective: [{minimize: latency_p50_ms}, {maximize: accuracy, weight: 200}]")
                      .replace("    constraints: {accuracy_delta_pt: {min: -0.5}}\n", ""))
    assert run(wf, tmp_path) == 0
    # scores: 3 - 196 = -193, 4 - 198 = -194, 4 - 197 = -193: epochs=2 is lowest
    assert json.loads((tmp_path / "out" / "run.json").read_text())["steps"]["best"]["meta"]["selected"] == "m[epochs=2]"


def test_no_candidate_meeting_the_constraints_fails_naming_the_closest(tmp_path, capsys):
    wf = fake_project(tmp_path, SELECT)
    assert run(wf, tmp_path, "--set", "steps.best.constraints.size_ratio={max: 0.1}") == 1
    err = capsys.readouterr().err
    assert ("no candidate meets the constraints (accuracy_delta_pt ≥ -0.5, size_ratio ≤ 0.1); the closest is "
            "m[epochs=3], which missed size_ratio 0.1333 (≤ 0.1)") in err
    assert not (tmp_path / "out" / "model").exists()


@pytest.mark.parametrize("change, message", [
    ("candidates: [m]", "candidates: [nope]"),
    ("constraints: {accuracy_delta_pt: {min: -0.5}}", "constraints: {f1: {min: 0.5}}"),
])
def test_select_is_checked_against_its_evaluate_step(tmp_path, change, message, capsys):
    wf = fake_project(tmp_path, SELECT.replace(change, message))
    assert cli("validate", wf) == 2
    err = capsys.readouterr().err
    assert ("unknown step 'nope'" if "nope" in message else "'compare' does not measure f1") in err
