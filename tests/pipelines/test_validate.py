"""Every validation error: exit code 2, file:line:column, step, field and hint."""

from __future__ import annotations

import pytest

from schemas.errors import ConfigError
from pipelines.validate import load_workflow
from tests.helpers import cli, fake_project, write

HEADER = "version: 1\nname: t\nsteps:\n"


def errors_of(path, *overrides) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_workflow(path, overrides)
    return [i.format() for i in info.value.issues]


def test_valid_workflow_exits_0(tmp_path, capsys):
    wf = fake_project(tmp_path)
    assert cli("validate", wf) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("text, expected", [
    ("version: 1\nname: [unclosed\n", "wf.yaml:3:1: YAML syntax error"),
    ("", "wf.yaml:1:1: the file is empty"),
    ("# only a comment\n", "the file is empty"),
    ("- a\n- b\n", "wf.yaml:1:1: the top level must be a mapping"),
    ("version: 2\nname: t\nsteps: {s: {type: fake_source, path: in.txt}}\n", "wf.yaml:1:10: version: unsupported version 2"),
    ("version: 1\nname: t\nname: u\nsteps: {}\n", "wf.yaml:3:1: name: duplicate key 'name' (first defined at line 2)"),
    ("version: 1\nname: t\nsteps: {}\ncolour: red\n", "wf.yaml:4:1: colour: unknown field 'colour'"),
    ("version: 1\nname: t\nsteps: !!python/object:os.system {}\n", "YAML tag 'tag:yaml.org,2002:python/object:os.system' is not allowed"),
    ("version: 1\nname: t\nsteps: {}\nx: !custom 3\n", "YAML tag '!custom' is not allowed"),
    ("version: 1\nname: t\nsteps: {}\n---\nversion: 1\n", "holds one YAML document"),
])
def test_file_level_errors(tmp_path, text, expected):
    wf = write(tmp_path, text)
    messages = "\n".join(errors_of(wf))
    assert expected in messages


def test_every_problem_at_once_with_positions_and_hints(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("x")
    wf = write(tmp_path, """
        version: 1
        name: t
        target:
          fallbak: cpu
        steps:
          src: {type: fake_source, path: in.txt, uper: true}
          a:
            type: fake_append
            data: scr
          a2: {type: fake_append, data: src, sleep: -1}
          b:
            type: fake_apend
          c: {type: fake_train, data: a, epochs: many}
          d:
            data: a
          e: {type: fake_append, data: m}
          m: {type: fake_train, data: src}
          missing: {type: fake_source, path: nowhere.txt}
        outputs:
          model: mm
    """)
    assert cli("validate", wf) == 2
    text = capsys.readouterr().err
    assert "wf.yaml:4:3: target.fallbak: unknown field 'fallbak'" in text
    assert "did you mean 'fallback'?" in text
    assert "wf.yaml:6:42: steps.src.uper: unknown field 'uper'" in text
    assert "did you mean 'upper'?" in text
    assert "wf.yaml:9:11: steps.a.data: unknown step 'scr'" in text and "did you mean 'src'?" in text
    assert "wf.yaml:10:45: steps.a2.sleep: Input should be greater than or equal to 0" in text
    assert "wf.yaml:12:11: steps.b.type: unknown step type 'fake_apend'" in text and "did you mean 'fake_append'?" in text
    assert "wf.yaml:13:42: steps.c.epochs: Input should be a valid integer" in text
    assert "wf.yaml:15:5: steps.d: missing `type`" in text
    assert "wf.yaml:16:32: steps.e.data: fake_append needs a dataset; 'm' produces an hf_model" in text
    assert "wf.yaml:18:38: steps.missing.path: 'nowhere.txt' does not exist" in text
    assert "wf.yaml:20:10: outputs.model: unknown step 'mm'" in text
    assert "nothing was run" in text


def test_missing_required_field_points_at_the_step(tmp_path):
    wf = write(tmp_path, HEADER + "  s:\n    type: fake_source\n")
    (msg,) = errors_of(wf)
    assert msg.startswith(f"{wf}:5:5: steps.s: missing required field 'path'")


def test_cycles_name_the_steps_in_the_loop(tmp_path):
    wf = write(tmp_path, HEADER + "  a: {type: fake_append, data: b}\n  b: {type: fake_append, data: c}\n"
               "  c: {type: fake_append, data: a}\n")
    (msg,) = errors_of(wf)
    assert "the steps form a cycle: a -> b -> c -> a" in msg
    wf = write(tmp_path, HEADER + "  a: {type: fake_append, data: a}\n")
    assert any("references itself" in m for m in errors_of(wf))


def test_wrong_kind_suggests_the_step_to_put_in_between(tmp_path):
    wf = write(tmp_path, """
        version: 1
        name: t
        steps:
          base: {type: model, path: .}
          q: {type: quantize, model: base}
    """)
    (msg,) = errors_of(wf)
    assert "steps.q.model: quantize needs an onnx_model; 'base' produces an hf_model" in msg
    assert "hint: add an export_onnx step in between" in msg


def test_alias_bomb_fails_fast(tmp_path):
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i-1}"] * 9) + "]")
    wf = write(tmp_path, "version: 1\nname: t\nsteps: {}\nbomb:\n" + "\n".join("  " + l for l in lines) + "\n")
    (msg,) = errors_of(wf)
    assert "alias bomb" in msg


def test_aliases_and_merge_keys_work(tmp_path):
    (tmp_path / "in.txt").write_text("x")
    wf = write(tmp_path, """
        version: 1
        name: t
        steps:
          src: &src {type: fake_source, path: in.txt}
          src2:
            <<: *src
            upper: true
    """)
    loaded = load_workflow(wf)
    assert loaded.workflow.steps["src2"].upper is True


def test_set_overrides_and_their_errors(tmp_path):
    wf = fake_project(tmp_path)
    loaded = load_workflow(wf, ["steps.a.suffix=X", "description=changed"])
    assert loaded.workflow.steps["a"].suffix == "X"
    assert loaded.workflow.description == "changed"
    msgs = errors_of(wf, "steps.a.sleep=-3")
    assert msgs == ["--set steps.a.sleep=-3: steps.a.sleep: Input should be greater than or equal to 0"]
    assert "takes KEY=VALUE" in errors_of(wf, "steps.a.suffix")[0]
    assert cli("run", wf, "--set", "steps.nope.type=fake_append") == 2


def test_unavailable_provider(tmp_path):
    wf = fake_project(tmp_path)
    text = wf.read_text().replace("steps:", "target: {device: gpu}\nsteps:", 1)
    wf.write_text(text)
    msgs = errors_of(wf)
    assert any("CUDAExecutionProvider is not available: install onnxruntime-gpu" in m for m in msgs)
    wf.write_text(text.replace("{device: gpu}", "{device: gpu, fallback: cpu}"))
    assert load_workflow(wf).warnings  # a warning, not an error


def test_merge_adapter_takes_its_base_from_the_adapter_step(tmp_path):
    wf = write(tmp_path, """
        version: 1
        name: t
        steps:
          base: {type: model, path: .}
          data: {type: load_data, path: ., text: text, label: label}
          tune: {type: lora, model: base, data: data}
          merged: {type: merge_adapter, adapter: tune}
    """)
    loaded = load_workflow(wf)
    assert loaded.workflow.steps["merged"].model == "base"
    assert set(loaded.graph.predecessors("merged")) == {"base", "tune"}


def test_missing_workflow_file(tmp_path, capsys):
    assert cli("validate", tmp_path / "nope.yaml") == 2
    assert "no such workflow file" in capsys.readouterr().err


def test_package_paths_resolve_without_import(tmp_path):
    wf = write(tmp_path, HEADER + "  s: {type: fake_source, path: pkg://no_such_package_xyz/file.txt}\n")
    (msg,) = errors_of(wf)
    assert "package 'no_such_package_xyz' is not installed" in msg


def test_a_bad_evaluate_goal_points_at_the_goals(tmp_path):
    (tmp_path / "in.txt").write_text("x")
    wf = write(tmp_path, """
        version: 1
        name: t
        steps:
          src: {type: fake_source, path: in.txt}
          m: {type: fake_train, data: src}
          ev:
            type: evaluate
            models: [m]
            data: src
            goals:
              m: {speed: {min: 4}}
    """)
    messages = "\n".join(errors_of(wf))
    assert "wf.yaml:11:7: steps.ev.goals: m: no metric 'speed'; goals can bound accuracy" in messages
