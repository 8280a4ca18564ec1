"""The passes: the work each step type does. Heavy libraries are imported inside `run`, never here."""

from .base import Artifact, Pass, PassError, SimpleContext, StepContext
from .registry import get_pass, load_passes, passes, register_pass, unregister_pass

__all__ = [
    "Artifact", "Pass", "PassError", "SimpleContext", "StepContext",
    "get_pass", "load_passes", "passes", "register_pass", "unregister_pass",
]
