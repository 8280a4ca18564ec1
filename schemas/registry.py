"""The registry of step types: one name, one config class, registered explicitly.

The `type` string is the config class's `Literal`, its registry key and its YAML discriminator; it is
never derived from a class name. Registering a second class under a taken name is an error.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Iterator

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


def step_types() -> dict[str, type[StepConfig]]:
    """The registered step types, by name (a copy)."""
    _load_builtin()
    return dict(sorted(_STEP_TYPES.items()))


def get_step_type(name: str) -> type[StepConfig] | None:
    """The config class registered for `name`, or None."""
    _load_builtin()
    return _STEP_TYPES.get(name)


def iter_step_types() -> Iterator[tuple[str, type[StepConfig]]]:
    """Iterate over (name, config class) in name order."""
    yield from step_types().items()


def _load_builtin() -> None:
    # The built-in configs register themselves on import; importing here keeps the registry
    # complete whichever module a caller imported first.
    from . import steps  # noqa: F401

    load_plugins()


def load_plugins() -> None:
    """Import the modules named in `PIPELINE_PLUGINS` (comma-separated); they register their steps.

    A plugin module registers a config class here and its pass in `passes`, so third-party passes
    validate, plan and run like built-in ones.
    """
    for module in filter(None, (m.strip() for m in os.environ.get("PIPELINE_PLUGINS", "").split(","))):
        if module not in sys.modules:
            importlib.import_module(module)
