"""One name, one identity: every step type has exactly one pass, duplicates and bad names are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import ClassVar, Literal

import pytest
from pydantic import Field

from passes import Pass, get_pass, passes, register_pass
from passes.registry import BUILTIN_PASSES
from schemas import StepConfig, register_step, step_types, unregister_step
from tests.builders import ROOT


def test_every_builtin_step_type_has_its_pass():
    registered = passes()
    for name in BUILTIN_PASSES:
        assert name in step_types()
        assert registered[name].config_class is step_types()[name]
    assert set(BUILTIN_PASSES) <= set(registered)


#: Libraries a pass imports inside `run` only: looking a pass up must not load them.
HEAVY = ("torch", "transformers", "peft", "datasets", "onnx", "onnxruntime", "onnxruntime_genai", "sklearn", "numpy")


def _modules_after_lookup(step_type: str) -> set[str]:
    """sys.modules after `get_pass(step_type)` in a fresh interpreter (this one has imported everything)."""
    code = ("import json, sys; from passes import get_pass; "
            f"get_pass({step_type!r}); print(json.dumps(sorted(sys.modules)))")
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_PLUGINS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize(("step_type", "module", "other_families"), [
    ("load_data", "passes.sources.data", ("passes.train", "passes.onnx", "passes.evaluate", "passes.ort")),
    ("quantize", "passes.onnx.quantize", ("passes.sources", "passes.train", "passes.evaluate")),
])
def test_get_pass_imports_only_the_module_it_needs(step_type, module, other_families):
    loaded = _modules_after_lookup(step_type)
    assert module in loaded
    assert not [m for m in loaded if m.startswith(other_families)], "another family was imported"
    assert not [m for m in loaded if m.split(".")[0] in HEAVY], "a heavy library was imported by the lookup"
    with pytest.raises(KeyError, match="no pass is registered for step type 'nope'"):
        get_pass("nope")


def test_duplicate_and_malformed_registrations_are_refused():
    class Dup(StepConfig):
        type: Literal["quantize"] = Field(description="x")
        output_kind: ClassVar[str] = "onnx_model"

    with pytest.raises(ValueError, match="already registered"):
        register_step(Dup)

    class Bad(StepConfig):
        type: Literal["Bad-Name"] = Field(description="x")
        output_kind: ClassVar[str] = "onnx_model"

    with pytest.raises(ValueError, match="lower_snake_case"):
        register_step(Bad)

    class WrongKind(StepConfig):
        type: Literal["wrong_kind"] = Field(description="x")
        output_kind: ClassVar[str] = "tensor"

    with pytest.raises(ValueError, match="output_kind"):
        register_step(WrongKind)


def test_a_pass_for_an_unregistered_config_is_refused():
    class Lonely(StepConfig):
        type: Literal["lonely"] = Field(description="x")
        output_kind: ClassVar[str] = "metrics"

    class LonelyPass(Pass[Lonely]):
        config_class = Lonely

    with pytest.raises(ValueError, match="not the registered step type"):
        register_pass(LonelyPass)
    register_step(Lonely)
    try:
        register_pass(LonelyPass)

        class Second(Pass[Lonely]):
            config_class = Lonely

        with pytest.raises(ValueError, match="already registered"):
            register_pass(Second)
    finally:
        unregister_step("lonely")
        from passes.registry import unregister_pass

        unregister_pass("lonely")


def test_every_field_is_described():
    """Reference docs (`pipeline passes`) come from the descriptions: none may be missing."""
    for name, cls in step_types().items():
        for field_name, info in cls.model_fields.items():
            assert info.description, f"{name}.{field_name} has no description"
