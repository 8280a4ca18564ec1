"""The `azureml:` section: where and how `pipeline submit` runs a workflow in Azure Machine Learning.

Only the contract lives here (Pydantic, no Azure import): the workspace, the compute, the environment,
datastore URIs for inputs and the cache, and per-step compute overrides. `runner.azureml` turns it into
Azure ML jobs with the SDK, imported only when a job is built.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, StringConstraints, ValidationInfo, field_validator, model_validator
from typing_extensions import Annotated

from .base import STEP_NAME_PATTERN, StepConfig, StrictModel
from .suggest import did_you_mean

StepKey = Annotated[str, StringConstraints(pattern=STEP_NAME_PATTERN)]

#: A base image with Python and pip, for environments built from the project's requirements.
DEFAULT_IMAGE = "mcr.microsoft.com/azureml/openmpi5.0-ubuntu24.04:latest"

#: What each kind of value must look like, and an example for the error message.
_FORMATS: dict[str, tuple[str, str]] = {
    "uri": (r"^azureml:(//\S+|[A-Za-z0-9_.\-]+(:[A-Za-z0-9_.\-]+|@latest))$",
            "a datastore URI azureml://datastores/NAME/paths/PATH or a data asset azureml:NAME:VERSION"),
    "datastore": (r"^azureml://(subscriptions/\S+/)?datastores/[A-Za-z0-9_]+/paths/\S+$",
                  "a datastore folder azureml://datastores/NAME/paths/FOLDER"),
    "compute": (r"^(azureml:)?[A-Za-z0-9][A-Za-z0-9_\-]{1,63}$", "a compute name such as cpu-cluster"),
    "environment": (r"^azureml:\S+$", "azureml:NAME:VERSION, azureml:NAME@latest or azureml://registries/..., "
                    "or a mapping {image: ..., extras: [...]} to build one from this project's requirements"),
    "subscription": (r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$",
                     "a subscription id such as 00000000-0000-0000-0000-000000000000"),
    "resource_group": (r"^[\w.()\-]{1,90}$", "letters, digits, `_ . ( ) -`, at most 90"),
    "workspace": (r"^[A-Za-z0-9][A-Za-z0-9_\-]{1,32}$", "letters, digits, `_ -`, 2 to 33, starting with a letter or digit"),
    "experiment": (r"^[A-Za-z0-9_.\-]{1,255}$", "letters, digits, `_ . -`"),
}


def _check(kind: str, value: Any) -> Any:
    """Raise a readable error when `value` (a string) does not have the form of `kind`."""
    if isinstance(value, str):
        pattern, expected = _FORMATS[kind]
        if not re.match(pattern, value):
            raise ValueError(f"{value!r} is not valid here: expected {expected}")
    return value


class BuiltEnvironment(StrictModel):
    """An environment built from the project's own requirements (and `constraints.txt`) on a base image."""

    image: str = Field(
        DEFAULT_IMAGE,
        min_length=1,
        description="The base Docker image (it must have Python >= 3.10 and pip); e.g. an Azure ML CUDA image "
        "for GPU clusters.",
    )
    extras: list[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_\-]*$")]] = Field(
        default_factory=list,
        description="Optional extras of this project to install besides its dependencies (e.g. `models`). Local "
        "and `pkg://` models are uploaded as job inputs, so no extra is needed for them.",
    )


class StepOverride(StrictModel):
    """Settings of one step's node in `--mode pipeline`."""

    compute: str = Field(description="The compute this step's node runs on (e.g. a GPU cluster for training).")

    @field_validator("compute")
    @classmethod
    def _compute(cls, value: str) -> str:
        return _check("compute", value)


class AzureML(StrictModel):
    """Where and how `pipeline submit` runs the workflow in an Azure ML workspace."""

    subscription_id: str | None = Field(
        None, description="The Azure subscription id (a GUID). Give it with `resource_group` and `workspace`."
    )
    resource_group: str | None = Field(None, description="The resource group of the workspace.")
    workspace: str | None = Field(None, description="The Azure ML workspace name.")
    config: str | None = Field(
        None,
        min_length=1,
        description="A workspace `config.json` (relative to the workflow file). Without it and without the three "
        "fields above, `config.json` is looked up as the SDK does: in the current folder and its parents, and in "
        "`.azureml/`.",
    )
    compute: str | None = Field(None, description="The compute cluster (or instance) jobs run on.")
    environment: str | BuiltEnvironment = Field(
        default_factory=BuiltEnvironment,
        description="An existing Azure ML environment (`azureml:NAME:VERSION`, `azureml:NAME@latest` or an "
        "`azureml://registries/...` URI), or `{image, extras}`: one built from this project's requirements.",
    )
    experiment: str | None = Field(None, description="The experiment jobs are filed under; default: the workflow's name.")
    display_name: str | None = Field(None, min_length=1, max_length=255, description="The job's name in the studio.")
    tags: dict[Annotated[str, StringConstraints(min_length=1, max_length=255)], str | int | float | bool] = Field(
        default_factory=dict, description="Tags put on the job (values are written as text)."
    )
    inputs: dict[StepKey, str | dict[str, str]] = Field(
        default_factory=dict,
        description="Step name -> an `azureml://` datastore URI or `azureml:NAME:VERSION` data asset that replaces "
        "the step's local `path` in Azure (nothing is uploaded for it). For a step with several path fields, "
        "a mapping field -> URI.",
    )
    cache: str | None = Field(
        None,
        description="A datastore folder (`azureml://datastores/NAME/paths/FOLDER`) mounted read-write as the "
        "artifact cache, so steps cached by one job are reused by later jobs.",
    )
    steps: dict[StepKey, StepOverride] = Field(
        default_factory=dict,
        description="Step name -> node settings for `--mode pipeline` (e.g. `tune: {compute: gpu-cluster}`).",
    )

    @field_validator("subscription_id", "resource_group", "workspace", "compute", "experiment", "cache")
    @classmethod
    def _formats(cls, value: Any, info: ValidationInfo) -> Any:
        kind = {"subscription_id": "subscription", "cache": "datastore"}.get(info.field_name, info.field_name)
        return _check(kind, value)

    @field_validator("environment", mode="before")
    @classmethod
    def _environment(cls, value: Any) -> Any:
        return _check("environment", value)

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for item in value.values():
                for uri in item.values() if isinstance(item, dict) else [item]:
                    _check("uri", uri)
        return value

    @model_validator(mode="after")
    def _workspace(self) -> "AzureML":
        given = [n for n in ("subscription_id", "resource_group", "workspace") if getattr(self, n)]
        if given and len(given) < 3:
            missing = [n for n in ("subscription_id", "resource_group", "workspace") if n not in given]
            raise ValueError(f"give subscription_id, resource_group and workspace together (missing: "
                             f"{', '.join(missing)}), or none of them and a workspace config.json")
        if given and self.config:
            raise ValueError("give either `config` or subscription_id/resource_group/workspace, not both")
        return self

    def step_issues(self, steps: dict[str, StepConfig], known: set) -> list[tuple[tuple, str, str | None]]:
        """Problems with the step names this section uses: (path inside `azureml`, message, hint)."""
        issues: list[tuple[tuple, str, str | None]] = []
        for section in ("steps", "inputs"):
            for name in getattr(self, section):
                if name not in known:
                    issues.append(((section, name), f"unknown step {name!r}", did_you_mean(name, known)))
        for name, value in self.inputs.items():
            config = steps.get(name)
            if config is None:
                continue  # unknown (reported above) or invalid (reported with the step)
            fields = list(config.path_fields())
            if not fields:
                issues.append((("inputs", name), f"step {name!r} ({config.step_type()}) reads no local file or folder",
                               "`inputs` replaces a source step's `path` (model, load_data) with a datastore URI"))
            elif isinstance(value, dict):
                issues += [(("inputs", name, f), f"{config.step_type()} has no path field {f!r}",
                            f"path fields here: {', '.join(fields)}") for f in value if f not in fields]
            elif len(fields) > 1:
                issues.append((("inputs", name), f"step {name!r} has several path fields ({', '.join(fields)})",
                               "map each field to its URI: {field: azureml://...}"))
        return issues

    def remote_inputs(self, steps: dict[str, StepConfig]) -> dict[tuple[str, str], str]:
        """{(step, path field): URI} for the fields given as datastore URIs (after `step_issues` passed)."""
        out: dict[tuple[str, str], str] = {}
        for name, value in self.inputs.items():
            if name not in steps:
                continue
            if isinstance(value, dict):
                out.update({(name, f): uri for f, uri in value.items()})
            else:
                fields = list(steps[name].path_fields())
                if len(fields) == 1:
                    out[(name, fields[0])] = value
        return out


def tag_text(value: Any) -> str:
    """A tag value as Azure ML stores it (text); booleans as `true` / `false`, as YAML writes them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
