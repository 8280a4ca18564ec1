"""The registry of step types: one name, one config class, registered explicitly.

The `type` string is the config class's `Literal`, its registry key and its YAML discriminator; it is
never derived from a class name. Registering a second class under a taken name is an error.

This module only stores registrations, so the built-in configs (`schemas.steps`) can register
themselves here; `schemas.catalog` answers "which step types are there" after loading them.
"""

from __future__ import annotations

import re

from .base import KINDS, StepConfig
from .errors import RegistryError

_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,40}$")
_STEP_TYPES: dict[str, type[StepConfig]] = {}


def register_step(cls: type[StepConfig]) -> type[StepConfig]:
    """Register a step config class under its `type` Literal (usable as a decorator)."""
    try:
        name = cls.step_type()
    except (KeyError, ValueError) as exc:
        raise RegistryError(f"{cls.__name__}.type must be a Literal with exactly one value, "
                            f"e.g. type: Literal[\"my_step\"] = Field(description=...)") from exc
    if not _TYPE_PATTERN.match(name):
        raise RegistryError(f"step type {name!r} must be lower_snake_case (letters, digits, _; 2-41 characters)")
    if cls.output_kind not in KINDS:
        raise RegistryError(f"{cls.__name__}.output_kind {cls.output_kind!r} is not one of {KINDS}")
    if name in _STEP_TYPES and _STEP_TYPES[name] is not cls:
        raise RegistryError(f"step type {name!r} is already registered by {_STEP_TYPES[name].__name__}: "
                            "choose another name (a type string names exactly one config class)")
    _STEP_TYPES[name] = cls
    return cls


def unregister_step(name: str) -> None:
    """Remove a step type (tests register fake passes and take them away again)."""
    _STEP_TYPES.pop(name, None)


def registered_step_types() -> dict[str, type[StepConfig]]:
    """What has been registered so far, by name (a copy); `schemas.catalog.step_types` adds the built-ins."""
    return dict(_STEP_TYPES)
