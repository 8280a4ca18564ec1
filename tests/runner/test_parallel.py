"""`run --jobs N`: steps at the same time, timing steps alone, threads divided and recorded, memory preflight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.validate import load_workflow
from runner import resources
from runner.cache import Cache
from runner.execute import compute_parts
from runner.isolation import Runtime
from schemas.steps.evaluate import EvaluateConfig
from tests.helpers import cli, write

BRANCHES = """
version: 1
name: branches
steps:
  src: {{type: fake_source, path: in.txt}}
  a: {{type: fake_work, data: src, stamps: {stamps}, wait_for: [b]}}
  b: {{type: fake_work, data: src, stamps: {stamps}, wait_for: [a]}}
  t: {{type: fake_work, data: src, stamps: {stamps}, timing: true}}
  c: {{type: fake_work, data: src, stamps: {stamps}}}
  j: {{type: fake_join, parts: [a, b, t, c]}}
outputs:
  joined: j
"""


def _project(tmp_path: Path, text: str = BRANCHES) -> tuple[Path, Path]:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    (tmp_path / "in.txt").write_text("hello")
    return write(tmp_path, text.format(stamps=stamps)), stamps


def _interval(stamps: Path, step: str) -> tuple[float, float]:
    return float((stamps / f"{step}.start").read_text()), float((stamps / f"{step}.end").read_text())


def test_independent_steps_run_at_the_same_time_and_a_timing_step_alone(tmp_path):
    wf, stamps = _project(tmp_path)
    assert cli("run", wf, "--jobs", "2", "--output", tmp_path / "out") == 0
    # a cannot end before b has started and b not before a has: both ran at once (with --jobs 1, `a` fails)
    a, b = _interval(stamps, "a"), _interval(stamps, "b")
    assert a[0] < b[1] and b[0] < a[1]
    t = _interval(stamps, "t")
    for other in ("a", "b", "c"):  # nothing ran while t timed
        start, end = _interval(stamps, other)
        assert end < t[0] or start > t[1], other
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    cores = resources.cpu_cores()
    assert doc["options"]["jobs"] == 2
    for name in ("a", "b", "c"):
        used = doc["steps"][name]["resources"]
        assert used["threads"] == max(1, cores // 2) and used["isolation"] == "process" and used["peak_memory_mb"] > 0
        assert doc["steps"][name]["meta"]["threads_env"] == doc["steps"][name]["meta"]["omp"] == str(used["threads"])
    assert doc["steps"]["t"]["resources"]["threads"] == cores  # the timing step has the machine to itself
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"{max(1, cores // 2)} thread" in report and "peak" in report


def test_without_jobs_steps_run_one_after_another_in_this_process(tmp_path):
    wf, stamps = _project(tmp_path, BRANCHES.replace(", wait_for: [b]", ", sleep: 0.01").replace(", wait_for: [a]", ", sleep: 0.02"))
    assert cli("run", wf, "--output", tmp_path / "out") == 0
    intervals = sorted(_interval(stamps, s) for s in ("a", "b", "t", "c"))
    assert all(first[1] < second[0] for first, second in zip(intervals, intervals[1:]))
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert doc["steps"]["a"]["resources"] == {"memory_estimate_mb": 150, "threads": resources.cpu_cores(),
                                              "isolation": "none"}


def test_evaluate_runs_alone_only_when_it_times():
    timed = EvaluateConfig(type="evaluate", models=["m"], data="d", metrics=["accuracy", "latency"])
    quality = EvaluateConfig(type="evaluate", models=["m"], data="d", metrics=["accuracy", "f1", "size"])
    lm = EvaluateConfig(type="evaluate", models=["m"], data="d", metrics=["perplexity", "tokens_per_second"])
    assert timed.runs_alone() and lm.runs_alone() and not quality.runs_alone()


@pytest.mark.parametrize("jobs, alone, cores, expected", [(1, False, 8, 8), (2, False, 2, 1), (3, False, 8, 2),
                                                         (4, False, 2, 1), (2, True, 2, 2)])
def test_threads_are_divided_between_jobs(jobs, alone, cores, expected):
    assert resources.threads_per_step(jobs, alone, cores) == expected


def test_isolation_and_resources_do_not_change_keys(tmp_path):
    plain, _ = _project(tmp_path)
    keys = {}
    for extra in ("", ", isolation: process", ", resources: {memory_gb: 3, max_memory_gb: 4}"):
        folder = tmp_path / f"v{len(keys)}"
        folder.mkdir()
        (folder / "in.txt").write_text("hello")
        wf = write(folder, plain.read_text().replace("path: in.txt}", f"path: in.txt{extra}}}"))
        loaded = load_workflow(wf)
        keys[extra] = compute_parts(loaded, "src", {}, Cache(tmp_path / "cache")).key
    assert len(set(keys.values())) == 1, keys


MEMORY = """
version: 1
name: memory
steps:
  src: {type: fake_source, path: in.txt}
  big: {type: fake_append, data: src}
  small: {type: fake_append, data: src, suffix: "?", resources: {memory_gb: 0.05}}
"""


def test_preflight_refuses_what_cannot_fit_and_resources_override_the_estimate(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(resources, "available_memory_mb", lambda: 100.0)  # the fake passes estimate 150 MB
    (tmp_path / "in.txt").write_text("hello")
    wf = write(tmp_path, MEMORY.replace("  src: {type: fake_source, path: in.txt}",
                                        "  src: {type: fake_source, path: in.txt, resources: {memory_gb: 0.01}}"))
    assert cli("run", wf, "--output", tmp_path / "out") == 1
    err = capsys.readouterr().err
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert doc["steps"]["small"]["status"] == "ran" and doc["steps"]["src"]["status"] == "ran"
    assert doc["steps"]["big"]["status"] == "failed"
    message = doc["steps"]["big"]["error"]
    assert "steps.big (fake_append) needs about 150 MB of memory" in message and "only 100 MB is available" in message
    assert "it was not started" in message and "resources: {memory_gb: N}" in message and "--step-compute big=" in message
    assert "big" in err and not any(e.step == "big" for e in Cache().entries())


def test_a_step_that_fits_only_later_waits_for_the_running_ones():
    free = [1000.0]
    gate = resources.MemoryGate(lambda: free[0])
    gate.admit("first", 800, lambda f: AssertionError("refused"), print)
    gate.attach("first", 0)  # counted at its estimate: 800 of the 1000 may still be taken
    said = []
    import threading

    admitted = threading.Event()
    waiter = threading.Thread(target=lambda: (gate.admit("second", 500, lambda f: AssertionError(f), said.append),
                                              admitted.set()))
    waiter.start()
    assert not admitted.wait(0.3) and said and "waiting for memory" in said[0]
    gate.release("first")
    assert admitted.wait(5)
    waiter.join()
    with pytest.raises(resources.MemoryRefused):
        gate.admit("huge", 5000, lambda f: resources.MemoryRefused(f"only {f}"), print)


def test_runtime_isolates_with_jobs_with_a_limit_or_when_asked():
    wf_steps = {
        "plain": {"type": "fake_source", "path": "x"},
        "asked": {"type": "fake_source", "path": "x", "isolation": "process"},
        "limited": {"type": "fake_source", "path": "x", "resources": {"max_memory_gb": 1}},
    }
    from schemas import step_types

    configs = {n: step_types()[b["type"]].model_validate(b) for n, b in wf_steps.items()}
    one = Runtime(jobs=1)
    assert [one.isolated(c) for c in configs.values()] == [False, True, True]
    assert all(Runtime(jobs=2).isolated(c) for c in configs.values())
    assert Runtime(jobs=1, default_isolation="process").isolated(configs["plain"])


def test_the_estimate_is_each_pass_s_measured_use_and_a_lora_is_told_to_try_qlora(tmp_path):
    from passes import get_pass
    from schemas import step_types

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\0" * 2_000_000)
    lora = step_types()["lora"].model_validate({"type": "lora", "model": "base", "data": "sms"})
    from passes import Artifact

    inputs = {"model": Artifact("hf_model", model, {}, "d", "base")}
    need, how = resources.memory_need_mb(lora, get_pass("lora"), inputs, tmp_path)
    assert need == pytest.approx(500 + 8.5 * 2.0) and "8.5 x 2 MB of inputs" in how
    message = str(resources.refusal("tune", lora, get_pass("lora"), 6000, how, 2000))
    assert "needs about 6.0 GB" in message and "only 2.0 GB is available" in message and "`type: qlora`" in message
    source = step_types()["model"]
    folder = source.model_validate({"type": "model", "path": "model"})
    gguf = source.model_validate({"type": "model", "path": "model", "gguf_file": "m.gguf"})
    assert get_pass("model").memory_for(folder).factor == 0 and get_pass("model").memory_for(gguf).factor == 4


def test_fail_fast_with_jobs_starts_nothing_after_a_failure(tmp_path):
    (tmp_path / "in.txt").write_text("hello")
    wf = write(tmp_path, """
        version: 1
        name: ff
        steps:
          src: {type: fake_source, path: in.txt}
          bad: {type: fake_append, data: src, fail: true}
          slow: {type: fake_append, data: src, suffix: "?", sleep: 1}
          later: {type: fake_train, data: slow}
        """)
    assert cli("run", wf, "--jobs", "2", "--fail-fast", "--output", tmp_path / "out") == 1
    steps = json.loads((tmp_path / "out" / "run.json").read_text())["steps"]
    assert steps["bad"]["status"] == "failed" and steps["bad"]["error"] == "asked to fail"
    assert steps["slow"]["status"] == "ran"  # it was already running: it finishes and is cached
    assert steps["later"]["status"] == "skipped" and "--fail-fast" in steps["later"]["error"]
