"""The passes: the work each step type does. Heavy libraries are imported inside `run`, never here."""

import logging

from .base import Artifact, Pass, PassError, SimpleContext, StepContext
from .registry import get_pass, load_passes, passes, register_pass, unregister_pass

__all__ = [
    "Artifact", "Pass", "PassError", "SimpleContext", "StepContext",
    "get_pass", "load_passes", "passes", "register_pass", "unregister_pass",
]

# bitsandbytes (imported by peft) warns at import that the optional `kernels` package is missing; its
# CPU backend works without it, and the warning would appear in every training step's output.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
