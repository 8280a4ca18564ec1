"""The contract: Pydantic models of the workflow format and of each pass's config. No ML imports."""

from .base import (
    KINDS,
    Adapter,
    Dataset,
    HfModel,
    Metrics,
    OnnxModel,
    PathSpec,
    Ref,
    RefSpec,
    StepConfig,
    StrictModel,
)
from .catalog import get_step_type, step_types
from .registry import register_step, unregister_step
from .workflow import DEFAULT_PROVIDERS, SUPPORTED_VERSIONS, Target, Workflow, WorkflowHeader

__all__ = [
    "KINDS", "Adapter", "Dataset", "HfModel", "Metrics", "OnnxModel", "PathSpec", "Ref", "RefSpec",
    "StepConfig", "StrictModel", "get_step_type", "register_step", "step_types", "unregister_step",
    "DEFAULT_PROVIDERS", "SUPPORTED_VERSIONS", "Target", "Workflow", "WorkflowHeader",
]
