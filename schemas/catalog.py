"""The step types a workflow can use, by name: the built-in configs and those of plugins.

`schemas.registry` stores registrations; this module makes the store complete before it answers, by
importing the built-in configs (`schemas.steps`, which register themselves on import) and the plugin
modules named in `PIPELINE_PLUGINS`. Kept apart from the registry because the step modules import the
registry: the registry importing them back would be an import circle.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Iterator

from .base import StepConfig
from .registry import registered_step_types


def step_types() -> dict[str, type[StepConfig]]:
    """The registered step types, by name (a copy)."""
    _load_builtin()
    return dict(sorted(registered_step_types().items()))


def get_step_type(name: str) -> type[StepConfig] | None:
    """The config class registered for `name`, or None."""
    _load_builtin()
    return registered_step_types().get(name)


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

    A plugin module registers a config class (`schemas.register_step`) and its pass (`passes.register_pass`), so third-party passes
    validate, plan and run like built-in ones.
    """
    for module in filter(None, (m.strip() for m in os.environ.get("PIPELINE_PLUGINS", "").split(","))):
        if module not in sys.modules:
            importlib.import_module(module)
