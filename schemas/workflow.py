"""The workflow file's top level: version, name, description, target, steps, outputs, azureml and tracking."""

from __future__ import annotations

from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema, field_validator
from typing_extensions import Annotated

from .azureml import AzureML
from .base import Isolation, StepConfig, StepName, StrictModel
from .target import DEFAULT_PROVIDERS, Device, StepTarget, Target  # noqa: F401  (re-exported)
from .tracking import Tracking

SUPPORTED_VERSIONS = (1,)

#: What `pipeline run` itself writes into the output folder (runner/report.py and runner/execute.py
#: take the names from here). An `outputs:` entry of the same name would replace them, or be replaced.
#: `mlflow/` holds the local MLflow store of a tracked run (runner/tracking.py).
RUN_JSON, REPORT_MD, LOGS_DIR, REPORTS_DIR, MLFLOW_DIR = "run.json", "report.md", "logs", "reports", "mlflow"
RUN_FILES = (RUN_JSON, REPORT_MD, LOGS_DIR, REPORTS_DIR, MLFLOW_DIR)

#: One plain file name: no `/` or `\`, not `.` or `..`, no leading dot (the run's temporary and
#: hidden files start with one), at most 64 characters.
OUTPUT_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$"


def check_output_name(name: str) -> str:
    """An `outputs:` name must be one plain path component that the run does not write itself."""
    import re

    if not re.match(OUTPUT_NAME_PATTERN, name):
        raise ValueError(
            f"output name {name!r} must be a plain folder name: letters, digits, `_ . -`, not starting with `.` "
            "or `-`, at most 64 characters (it becomes a folder in the output folder; no paths)"
        )
    # compared case-insensitively: on macOS and Windows `Run.json` and `run.json` are one file
    if name.lower() in RUN_FILES:
        raise ValueError(f"output name {name!r} is taken: the run writes {', '.join(RUN_FILES)} itself; choose another name")
    return name


#: The pattern also goes to the JSON Schema (as `patternProperties`), so editors flag a bad name as you type.
OutputName = Annotated[str, AfterValidator(check_output_name),
                       WithJsonSchema({"type": "string", "pattern": OUTPUT_NAME_PATTERN})]


class WorkflowHeader(StrictModel):
    """Everything but the steps, validated first; each step is validated by its own class."""

    version: int = Field(description=f"The format version; supported: {', '.join(map(str, SUPPORTED_VERSIONS))}.")
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")] = Field(
        description="The workflow's name (letters, digits, `_ . -`); names the default output folder."
    )
    description: str = Field("", description="What the workflow does, for people.")
    target: Target = Field(default_factory=Target, description="Where models run and what they are optimized for.")
    steps: dict = Field(description="Step name -> step config; `type` picks the pass.")
    outputs: dict[OutputName, StepName] = Field(
        default_factory=dict,
        description="Output folder name -> step whose artifact is copied, deployable, to the output folder.",
    )
    azureml: AzureML = Field(
        default_factory=AzureML,
        description="Where and how `pipeline submit` runs the workflow in Azure ML (optional; flags override it).",
    )
    tracking: Tracking | None = Field(
        None, description="Log each run to MLflow: the run, each step as a nested run (optional; `--track` overrides it).",
    )
    isolation: Isolation = Field(
        "none", description="`process`: every step runs in a process of its own (a crash fails that step alone); a "
                            "step's own `isolation` wins. `--jobs` > 1 always isolates steps.")

    @field_validator("version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value not in SUPPORTED_VERSIONS:
            raise ValueError(f"unsupported version {value}; this release reads version {SUPPORTED_VERSIONS[-1]}")
        return value


class Workflow(StrictModel):
    """A validated workflow: the header plus each step's typed config."""

    version: int
    name: str
    description: str = ""
    target: Target
    steps: dict[str, StepConfig]
    outputs: dict[str, str]
    azureml: AzureML = Field(default_factory=AzureML)  # a factory: no model is built while importing
    tracking: Tracking | None = None
    isolation: Isolation = "none"
