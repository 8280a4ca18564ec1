"""The committed manifest of Olive's passes matches the installed olive-ai, and says what the passes do."""

from __future__ import annotations

import json

import pytest

from passes.olive import manifest as gen
from schemas.olive_manifest import MANIFEST_FILE, olive_pass, olive_passes, value_problem


def test_the_manifest_matches_the_installed_olive():
    """`python -m passes.olive.manifest --check` as a test: regenerate and compare, pass by pass."""
    pytest.importorskip("olive")
    current = json.loads(gen.render(gen.build_manifest()))
    committed = json.loads(MANIFEST_FILE.read_text())
    assert gen.differences(committed, current) == [], "run `python -m passes.olive.manifest --write`"
    assert MANIFEST_FILE.read_text() == gen.render(current)  # byte for byte: the file is what --write writes


def test_every_pass_of_olives_registry_is_there():
    passes = olive_passes()
    assert len(passes) >= 80
    for name in ("Gptq", "ModelBuilder", "OnnxStaticQuantization", "OrtTransformersOptimization", "QuaRot",
                 "MergeAdapterWeights", "LoRA", "OnnxConversion"):
        assert passes[name]["name"] == name


@pytest.mark.parametrize("name, accepts, produces, needs_data", [
    ("Gptq", ["hf_model"], "hf_model", False),                        # calibration data optional (Olive's default set)
    ("QuaRot", ["hf_model"], "hf_model", False),
    ("MergeAdapterWeights", ["hf_model"], "hf_model", False),
    ("LoRA", ["hf_model"], "hf_model", True),                         # train_data_config is required
    ("OnnxConversion", ["hf_model"], "onnx_model", False),
    ("ModelBuilder", ["hf_model", "onnx_model"], "onnx_model", False),
    ("OnnxStaticQuantization", ["onnx_model"], "onnx_model", True),   # Olive: dataset_required
    ("OrtTransformersOptimization", ["onnx_model"], "onnx_model", False),
    ("GptqModel", ["hf_model"], "hf_model", False),                   # the override: it returns an HF folder
    ("SplitModel", ["onnx_model"], None, False),                      # a composite: no artifact of ours
    ("OpenVINOConversion", ["hf_model", "onnx_model"], None, False),  # an OpenVINO model: none either
])
def test_kinds_and_data_needs(name, accepts, produces, needs_data):
    entry = olive_pass(name)
    assert (entry["accepts"], entry["produces"], entry["needs_data"]) == (accepts, produces, needs_data)


def test_lora_type_passes_note_their_adapter():
    assert "adapter" in olive_pass("LoRA")["note"]


def test_parameters_have_types_defaults_and_choices():
    params = olive_pass("Gptq")["params"]
    assert params["bits"] == {**params["bits"], "type": "int", "default": 4, "required": False,
                              "choices": [2, 4, 8, 16, 32]}
    assert params["group_size"]["default"] == 128 and params["group_size"]["description"]
    precision = olive_pass("ModelBuilder")["params"]["precision"]
    assert precision["required"] and "int4" in precision["choices"]


@pytest.mark.parametrize("param, value, problem", [
    ({"type": "int", "default": 4, "choices": [2, 4, 8]}, 8, None),
    ({"type": "int", "default": 4, "choices": [2, 4, 8]}, 3, "3 is not one of 2, 4, 8"),
    ({"type": "int", "default": 4, "choices": [2, 4, 8]}, "4", "'4' is not one of 2, 4, 8"),
    ({"type": "int", "default": 128, "choices": None}, True, "expected int, got a boolean True"),
    ({"type": "float", "default": 0.01, "choices": None}, 1, None),
    ({"type": "bool", "default": None, "choices": None}, None, None),
    ({"type": "bool", "default": False, "choices": None}, None, "this parameter cannot be null"),
    ({"type": "list[str] | str | None", "default": None, "choices": None}, ["a", "b"], None),
    ({"type": "list[str]", "default": None, "choices": None}, [1], "expected list[str], got a list [1]"),
    ({"type": "dict[str, Any]", "default": None, "choices": None}, "x", "expected dict[str, Any], got a string 'x'"),
    ({"type": "HFTrainingArguments | dict", "default": None, "choices": None}, "anything", None),  # Olive checks it
])
def test_values_are_checked_against_the_manifest(param, value, problem):
    assert value_problem(param, value) == problem


def test_differences_name_the_passes_that_changed():
    old = {"olive_version": "0.13.0", "passes": {"A": {"x": 1}, "B": {"x": 1}}}
    new = {"olive_version": "0.14.0", "passes": {"A": {"x": 2}, "C": {"x": 1}}}
    assert gen.differences(old, new) == [
        "olive_version: committed '0.13.0', installed '0.14.0'", "A: x differ",
        "B: in the manifest, not in the installed Olive", "C: in the installed Olive, not in the manifest"]


def test_type_text_does_not_depend_on_which_equal_union_was_built_first():
    import typing

    from passes.olive.manifest import type_text

    first = typing.Union[str, list[str]]  # typing caches it: the next equal union comes back in this order
    assert type_text(first) == type_text(typing.Optional[typing.Union[list[str], str]]).removesuffix(" | None")
    assert type_text(typing.Optional[typing.Union[list[str], str]]) == "list[str] | str | None"
