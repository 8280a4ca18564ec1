"""`matrix:` expansion: variants and their names, fan-out downstream, list references, search samplers,
and invalid combinations reported at their line (fake passes: no ML library)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import tests.fakes_sweep  # noqa: F401  (registers fake_eval)
from pipelines.validate import load_workflow
from schemas.errors import ConfigError
from tests.helpers import ROOT, fake_project

MATRIX = """
version: 1
name: sweep
steps:
  src: {type: fake_source, path: in.txt}
  a:
    type: fake_append
    data: src
    matrix: {suffix: ["?", "!"], fail: [true, false]}
  m: {type: fake_train, data: a}
  j: {type: fake_join, parts: [src, a]}
"""


def errors(wf, *overrides) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_workflow(wf, overrides)
    return [i.format() for i in exc.value.issues]


def test_a_matrix_is_one_step_per_combination_named_by_its_values(tmp_path):
    loaded = load_workflow(fake_project(tmp_path, MATRIX))
    names = ["a[suffix=?,fail=true]", "a[suffix=?,fail=false]", "a[suffix=!,fail=true]", "a[suffix=!,fail=false]"]
    assert loaded.variants["a"] == names
    steps = loaded.workflow.steps
    assert steps["a[suffix=!,fail=false]"].suffix == "!" and steps["a[suffix=!,fail=false]"].fail is False
    assert "a" not in steps


def test_a_step_behind_a_matrix_fans_out_and_a_list_reference_names_every_variant(tmp_path):
    loaded = load_workflow(fake_project(tmp_path, MATRIX))
    steps = loaded.workflow.steps
    assert loaded.variants["m"] == [n.replace("a[", "m[") for n in loaded.variants["a"]]
    assert steps["m[suffix=?,fail=false]"].data == "a[suffix=?,fail=false]"
    assert steps["j"].parts == ["src", *loaded.variants["a"]]  # one fan-in step, not four
    assert set(loaded.graph.predecessors("j")) == {"src", *loaded.variants["a"]}


def test_two_fanned_inputs_keep_only_agreeing_combinations(tmp_path):
    text = MATRIX.replace("  j: {type: fake_join, parts: [src, a]}", """\
  b: {type: fake_append, data: a, suffix: x}
  t: {type: fake_train, data: b}
  k:
    type: fake_join
    parts: [t]
  e:
    type: fake_train
    data: b
    matrix: {epochs: [1, 2]}""")
    loaded = load_workflow(fake_project(tmp_path, text))
    # b and t each follow a's 4 variants (a diamond a -> b -> t does not multiply); e adds its own axis
    assert len(loaded.variants["t"]) == 4 and len(loaded.variants["e"]) == 8
    assert "e[suffix=!,fail=true,epochs=2]" in loaded.workflow.steps
    assert loaded.workflow.steps["e[suffix=!,fail=true,epochs=2]"].data == "b[suffix=!,fail=true]"


def test_invalid_values_and_combinations_are_reported_at_their_line(tmp_path):
    wf = fake_project(tmp_path, MATRIX.replace('fail: [true, false]', 'sleep: [0, -1, oops], sufix: [x]'))
    found = errors(wf)
    line = next(i for i, l in enumerate(wf.read_text().splitlines(), 1) if "matrix:" in l)
    assert any(f"wf.yaml:{line}:" in e and "steps.a.matrix.sufix: fake_append has no field 'sufix'" in e
               and "did you mean 'suffix'" in e for e in found)
    wf = fake_project(tmp_path, MATRIX.replace('fail: [true, false]', 'sleep: [0, -1, oops]'))
    found = errors(wf)
    # the bad values, each once (not once per combination that holds it), at the value's column
    col = wf.read_text().splitlines()[line - 1].index("-1") + 1
    assert [e.split(": ", 1)[0] for e in found] == [f"{wf}:{line}:{col}", f"{wf}:{line}:{col + 4}"]
    assert "greater than or equal to 0" in found[0] and "valid number" in found[1]
    assert found[0].split(": ")[1] in ("steps.a[suffix=?,sleep=-1].sleep", "steps.a[suffix=!,sleep=-1].sleep")


def test_a_combination_the_config_rejects_is_reported_at_the_matrix(tmp_path):
    # quantize rejects activation_type with dynamic_int8: a rule across two swept fields
    text = """
version: 1
name: q
steps:
  src: {type: fake_source, path: in.txt}
  q:
    type: quantize
    model: src
    matrix: {method: [dynamic_int8, static_int8], activation_type: [uint8]}
"""
    found = errors(fake_project(tmp_path, text))
    assert any(":8:" in e and "steps.q[method=dynamic_int8,activation_type=uint8]: `activation_type` applies to "
               "static_int8" in e for e in found), found


@pytest.mark.parametrize("matrix, message", [
    ("{suffix: []}", "a matrix entry is a non-empty list of values"),
    ("{suffix: x}", "a matrix entry is a non-empty list of values"),
    ("[suffix]", "`matrix` must map fields to lists"),
    ("{suffix: [x, x]}", "'suffix' lists a value twice"),
    ("{type: [fake_train]}", "has no field 'type' to sweep"),
    ("{data: [src], suffix: [x]}", "'data' is set on the step and swept by its matrix"),
])
def test_malformed_matrices_are_errors(tmp_path, matrix, message):
    found = errors(fake_project(tmp_path, MATRIX.replace('{suffix: ["?", "!"], fail: [true, false]}', matrix)))
    assert any(message in e for e in found), found


def test_an_output_cannot_be_a_whole_matrix_and_step_names_cannot_hold_brackets(tmp_path):
    found = errors(fake_project(tmp_path, MATRIX + "outputs: {out: a}\n"))
    assert any("outputs.out: 'a' is a matrix of 4 variants" in e and "select" in e for e in found)
    wf = fake_project(tmp_path, MATRIX + "outputs: {out: 'a[suffix=!,fail=false]'}\n")
    assert load_workflow(wf).workflow.outputs == {"out": "a[suffix=!,fail=false]"}  # one variant is fine
    found = errors(fake_project(tmp_path, MATRIX + "  'x[y]': {type: fake_source, path: in.txt}\n"))
    assert any("invalid step name 'x[y]'" in e for e in found)


def test_set_overrides_a_matrix_and_a_field_it_sweeps_cannot_also_be_set(tmp_path):
    wf = fake_project(tmp_path, MATRIX)
    loaded = load_workflow(wf, ["steps.a.matrix.fail=[false]"])
    assert loaded.variants["a"] == ["a[suffix=?,fail=false]", "a[suffix=!,fail=false]"]
    assert any("'fail' is set on the step and swept" in e for e in errors(wf, "steps.a.fail=true"))


def test_grid_takes_the_first_combinations_and_random_a_seeded_prefix_stable_sample(tmp_path):
    text = MATRIX.replace('fail: [true, false]}', 'sleep: [0, 1, 2, 3, 4]}\n    search: {sampler: SAMPLER, max_samples: N}')
    wf = fake_project(tmp_path, text.replace("SAMPLER", "grid").replace("N", "3"))
    assert load_workflow(wf).variants["a"] == ["a[suffix=?,sleep=0]", "a[suffix=?,sleep=1]", "a[suffix=?,sleep=2]"]
    wf = fake_project(tmp_path, text.replace("SAMPLER", "random").replace("N", "3"))
    three = load_workflow(wf).variants["a"]
    six = load_workflow(wf, ["steps.a.search.max_samples=6"]).variants["a"]
    other = load_workflow(wf, ["steps.a.search.seed=7"]).variants["a"]
    assert len(three) == 3 and six[:3] == three and other != three
    assert len(load_workflow(wf, ["steps.a.search.max_samples=100"]).variants["a"]) == 10


def test_search_needs_a_matrix_and_tpe_an_objective_on_an_evaluate_step(tmp_path):
    found = errors(fake_project(tmp_path, MATRIX + "  z: {type: fake_train, data: src, search: {sampler: grid}}\n"))
    assert any("steps.z.search: `search` applies to a `matrix`" in e for e in found)
    tpe = MATRIX.replace('fail: [true, false]}', 'fail: [false]}\n    search: {sampler: tpe}')
    assert any("the tpe sampler proposes each trial" in e for e in errors(fake_project(tmp_path, tpe)))
    tpe = tpe.replace("{sampler: tpe}", "{sampler: tpe, objective: {evaluate: src, minimize: latency_p50_ms}}")
    assert any("'src' is a fake_source step" in e for e in errors(fake_project(tmp_path, tpe)))
    tpe = tpe.replace("minimize: latency_p50_ms", "minimize: speed")
    assert any("no metric 'speed'" in e for e in errors(fake_project(tmp_path, tpe)))


def test_plan_of_a_tpe_search_imports_neither_optuna_nor_torch(tmp_path):
    text = MATRIX.replace("  j: {type: fake_join, parts: [src, a]}", """\
  e: {type: fake_eval, models: [m]}""").replace('fail: [true, false]}', 'fail: [false]}\n    search: '
                                                  '{sampler: tpe, objective: {evaluate: e, minimize: latency_p50_ms}}')
    wf = fake_project(tmp_path, text)
    code = ("import sys; from runner.cli import main; code = main(['plan', sys.argv[1], '--json']); "
            "assert code == 0 and 'optuna' not in sys.modules and 'torch' not in sys.modules, code")
    env = {**os.environ, "PIPELINE_PLUGINS": "tests.fakes,tests.fakes_sweep", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, str(wf)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["a[suffix=!,fail=false]"]["reason"] == "tpe tries 2 of these 2 at run time"
