"""`type: olive` steps: every mistake is an error at its file:line:column, checked from the manifest alone."""

from __future__ import annotations

import pytest

from pipelines.validate import load_workflow
from schemas.base import step_output_kind
from schemas.errors import ConfigError
from schemas.olive_manifest import olive_manifest
from schemas.steps import OliveConfig
from tests.helpers import cli, write

HEAD = """\
version: 1
name: olive
steps:
  base: {type: model, path: m}
  calib: {type: load_data, path: d.csv, text: text, label: label}
"""


def _project(tmp_path, steps: str):
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "d.csv").write_text("text,label\nhi,0\n")
    return write(tmp_path, HEAD + steps)


def _errors(path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_workflow(path)
    return [i.format() for i in info.value.issues]


def test_the_issues_example_validates_and_each_step_produces_its_pass_kind(tmp_path):
    wf = _project(tmp_path, """\
  gptq:
    type: olive
    pass: Gptq
    model: base
    data: calib
    config: {bits: 4, group_size: 128}
  int4:
    type: olive
    pass: ModelBuilder
    model: gptq
    config: {precision: int4}
""")
    loaded = load_workflow(wf)
    steps = loaded.workflow.steps
    assert isinstance(steps["gptq"], OliveConfig) and steps["gptq"].pass_name == "Gptq"
    assert step_output_kind(steps["gptq"]) == "hf_model" and step_output_kind(steps["int4"]) == "onnx_model"
    assert loaded.graph.nodes["gptq"]["kind"] == "hf_model"
    assert loaded.order == ["base", "calib", "gptq", "int4"]


@pytest.mark.parametrize("step, expected", [
    ("  q: {type: olive, pass: Gptqq, model: base}\n",
     ["wf.yaml:6:26: steps.q.pass: unknown Olive pass 'Gptqq'", "hint: did you mean 'Gptq'?"]),
    ("  q: {type: olive, pass: onnxconversion, model: base}\n",
     ["wf.yaml:6:26: steps.q.pass: unknown Olive pass 'onnxconversion'", "did you mean 'OnnxConversion'?"]),
    ("  q:\n    type: olive\n    pass: Gptq\n    model: base\n    config:\n      bits: 4\n      group_sise: 64\n",
     ["wf.yaml:12:7: steps.q.config.group_sise: unknown parameter 'group_sise' of Olive pass Gptq",
      "hint: did you mean 'group_size'?"]),
    ("  q: {type: olive, pass: Gptq, model: base, config: {bits: 3}}\n",
     ["wf.yaml:6:60: steps.q.config.bits: 3 is not one of 2, 4, 8, 16, 32"]),
    ("  q: {type: olive, pass: Gptq, model: base, config: {sym: 'yes'}}\n",
     ["steps.q.config.sym: expected bool, got a string 'yes'"]),
    ("  q: {type: olive, pass: ModelBuilder, model: base}\n",
     ["steps.q.config: missing required parameter 'precision' of Olive pass ModelBuilder"]),
    ("  q: {type: olive, pass: Gptq, model: base, config: {data_config: x}}\n",
     ["steps.q.config.data_config: data_config is built from the step's `data` and `split`"]),
    ("  q:\n    type: olive\n    pass: OnnxStaticQuantization\n    model: base\n",
     ["wf.yaml:7:5: steps.q.data: Olive pass OnnxStaticQuantization needs data (data_config)",
      "hint: add `data: <a load_data step>` to this step"]),
    ("  q: {type: olive, pass: ModelBuilder, model: base, data: calib, config: {precision: int4}}\n",
     ["steps.q.data: Olive pass ModelBuilder takes no data"]),
    ("  q: {type: olive, pass: SplitModel, model: base}\n",
     ["steps.q.pass: Olive pass SplitModel works on ONNXModelHandler -> CompositeModelHandler"]),
    ("  q:\n    type: olive\n    pass: Gptq\n    model: base\n    config_by_isa:\n      avx512_vnni: {group_sise: 64}\n",
     ["wf.yaml:11:21: steps.q.config_by_isa.avx512_vnni.group_sise: unknown parameter 'group_sise' of Olive pass Gptq",
      "hint: did you mean 'group_size'?"]),
    ("  q: {type: olive, pass: Gptq, model: base, config_by_isa: {avx2: {bits: 3}}}\n",
     ["steps.q.config_by_isa.avx2.bits: 3 is not one of 2, 4, 8, 16, 32"]),
    ("  q: {type: olive, pass: Gptq, model: base, config_by_isa: {avx9: {bits: 4}}}\n",
     ["steps.q.config_by_isa", "avx9", "avx512_vnni"]),
])
def test_olive_mistakes_are_errors_at_their_place(tmp_path, step, expected):
    messages = "\n".join(_errors(_project(tmp_path, step)))
    for text in expected:
        assert text in messages


def test_a_pass_that_cannot_take_the_incoming_kind_names_the_step_to_put_in_between(tmp_path):
    wf = _project(tmp_path, """\
  static:
    type: olive
    pass: OnnxStaticQuantization
    model: base
    data: calib
  int4: {type: olive, pass: ModelBuilder, model: base, config: {precision: int4}}
  rot: {type: olive, pass: QuaRot, model: int4}
  int8: {type: quantize, model: rot}
""")
    messages = [m.removeprefix(f"{tmp_path}/") for m in _errors(wf)]
    assert messages[0] == ("wf.yaml:9:12: steps.static.model: olive (OnnxStaticQuantization) needs an onnx_model; "
                           "'base' produces an hf_model\n    hint: add an export_onnx step in between "
                           "(it takes an hf_model and produces an onnx_model)")
    assert messages[1].startswith("wf.yaml:12:43: steps.rot.model: olive (QuaRot) needs an hf_model; "
                                  "'int4' produces an onnx_model")
    # a native step reading an Olive step: the kind is the pass's (QuaRot: an hf_model), not the class default
    assert messages[2].startswith("wf.yaml:13:33: steps.int8.model: quantize needs an onnx_model; "
                                  "'rot' produces an hf_model")


def test_the_config_class_alone_is_as_strict():
    """Passes and tests that build an OliveConfig directly get the same checks (no workflow needed)."""
    OliveConfig(type="olive", pass_name="Gptq", model="m", config={"bits": 8})
    with pytest.raises(ValueError, match="unknown parameter 'bitz'"):
        OliveConfig.model_validate({"type": "olive", "pass": "Gptq", "model": "m", "config": {"bitz": 8}})


def test_the_manifest_is_read_only_for_olive_steps(tmp_path):
    """validate and plan stay fast: a workflow without an `olive` step never reads the 280 kB manifest."""
    (tmp_path / "m").mkdir()
    wf = write(tmp_path, "version: 1\nname: t\nsteps:\n  base: {type: model, path: m}\n"
                         "  x: {type: export_onnx, model: base}\n")
    olive_manifest.cache_clear()
    load_workflow(wf)
    assert olive_manifest.cache_info().currsize == 0


def test_pipeline_passes_olive_lists_and_shows(capsys):
    assert cli("passes", "olive") == 0
    out = capsys.readouterr().out
    for text in ("Olive passes (olive-ai 0.13.0", "Gptq", "OnnxStaticQuantization", "ModelBuilder", "needs"):
        assert text in out
    assert cli("passes", "olive/Gptq") == 0
    out = capsys.readouterr().out
    assert "olive/Gptq: GPTQ quantization." in out and "group_size" in out and "data_config" not in out
    assert cli("passes", "olive/Gptqq") == 2
    assert "did you mean 'Gptq'?" in capsys.readouterr().err


def test_config_by_isa_keys_the_step_by_the_instruction_set_only_when_set(tmp_path):
    """Per-ISA parameters apply over `config` on that ISA; only a step that has them is keyed by the CPU."""
    from runner.keys import keyed_config

    wf = _project(tmp_path, """\
  plain: {type: olive, pass: Gptq, model: base, data: calib, config: {bits: 4, group_size: 32}}
  per_isa:
    type: olive
    pass: Gptq
    model: base
    data: calib
    config: {bits: 4, group_size: 32, sym: true}
    config_by_isa: {avx512_vnni: {group_size: 64, sym: false}}
""")
    steps = load_workflow(wf).workflow.steps
    plain, per_isa = steps["plain"], steps["per_isa"]
    assert not plain.uses_isa and "config_by_isa" not in keyed_config(plain)  # keys as before the field existed
    assert per_isa.uses_isa and keyed_config(per_isa)["config_by_isa"] == {"avx512_vnni": {"group_size": 64, "sym": False}}
    assert per_isa.config_for("avx512_vnni") == {"bits": 4, "group_size": 64, "sym": False}
    assert per_isa.config_for("avx2") == per_isa.config_for(None) == {"bits": 4, "group_size": 32, "sym": True}
