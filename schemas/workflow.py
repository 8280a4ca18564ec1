"""The workflow file's top level: version, name, description, target, steps and outputs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StringConstraints, field_validator
from typing_extensions import Annotated

from .base import StepConfig, StepName, StrictModel

SUPPORTED_VERSIONS = (1,)

Device = Literal["cpu", "gpu", "npu"]

#: Execution providers picked when a target names only its device.
DEFAULT_PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "gpu": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "npu": ["QNNExecutionProvider", "CPUExecutionProvider"],
}


class Target(StrictModel):
    """Where models are evaluated and what they are optimized for."""

    device: Device = Field("cpu", description="The kind of device: cpu, gpu or npu.")
    providers: list[str] | None = Field(
        None,
        min_length=1,
        description="ONNX Runtime execution providers in order of preference; default from `device`.",
    )
    fallback: Literal["error", "cpu"] = Field(
        "error",
        description="When a provider is not installed: `error` refuses the workflow, `cpu` runs on the CPU.",
    )
    threads: int | None = Field(
        None, ge=1, le=256, description="Intra-op threads for ONNX Runtime sessions; default: all cores."
    )

    def resolved_providers(self) -> list[str]:
        """The providers in order, with the device default when none were given."""
        return list(self.providers or DEFAULT_PROVIDERS[self.device])


class WorkflowHeader(StrictModel):
    """Everything but the steps, validated first; each step is validated by its own class."""

    version: int = Field(description=f"The format version; supported: {', '.join(map(str, SUPPORTED_VERSIONS))}.")
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")] = Field(
        description="The workflow's name (letters, digits, `_ . -`); names the default output folder."
    )
    description: str = Field("", description="What the workflow does, for people.")
    target: Target = Field(default_factory=Target, description="Where models run and what they are optimized for.")
    steps: dict = Field(description="Step name -> step config; `type` picks the pass.")
    outputs: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")], StepName] = Field(
        default_factory=dict,
        description="Output folder name -> step whose artifact is copied, deployable, to the output folder.",
    )

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
