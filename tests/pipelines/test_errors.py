"""One exception root: every error the tool raises on purpose is a PipelineError, reported in one branch."""

from __future__ import annotations

import pytest

from passes import PassError, get_pass
from pipelines.overrides import OverrideError, apply_overrides, parse_override
from pipelines.yaml_loader import load_yaml
from schemas.errors import ConfigError, PipelineError, RegistryError, UnknownStepTypeError
from schemas.paths import PathResolutionError, package_folder
from schemas.suggest import did_you_mean
from schemas.target import TargetError


@pytest.mark.parametrize("cls", [ConfigError, PassError, PathResolutionError, TargetError, OverrideError,
                                 RegistryError, UnknownStepTypeError])
def test_every_error_class_derives_from_the_root(cls):
    assert issubclass(cls, PipelineError)


def test_registry_errors_stay_catchable_as_before_and_read_as_sentences():
    assert issubclass(RegistryError, ValueError) and issubclass(UnknownStepTypeError, KeyError)
    with pytest.raises(UnknownStepTypeError) as exc:
        get_pass("nope")
    # a KeyError's str() would wrap the message in quotes
    assert str(exc.value).startswith("no pass is registered for step type 'nope': built-in types are ")


def test_a_bad_path_is_a_pipeline_error():
    with pytest.raises(PipelineError, match="package 'no_such_package_xyz' is not installed"):
        package_folder("no_such_package_xyz")


@pytest.mark.parametrize("text, message", [
    ("steps.tune.epochs", "--set takes KEY=VALUE"),
    ("steps..epochs=1", "has an empty part"),
    ("steps.tune.epochs=[1", "is not valid YAML"),
])
def test_a_malformed_override_is_an_override_error_and_a_config_issue(text, message):
    with pytest.raises(OverrideError, match=message):
        parse_override(text)
    data, positions = load_yaml("version: 1\n", "wf.yaml")
    with pytest.raises(ConfigError) as exc:
        apply_overrides(data, [text], positions)
    assert [i.file for i in exc.value.issues] == ["--set #1"] and message in exc.value.issues[0].message


def test_did_you_mean_knows_near_misses_and_other_tools_names():
    assert did_you_mean("epoch", ["epochs", "batch_size"]) == "did you mean 'epochs'?"
    assert did_you_mean("lr", {"learning_rate": 1, "epochs": 2}) == "did you mean 'learning_rate'?"
    assert did_you_mean("zzz", ["epochs"]) is None
