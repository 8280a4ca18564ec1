"""The pass registry: step type -> pass class, registered explicitly, duplicates rejected."""

from __future__ import annotations

import importlib
import importlib.util

from schemas import get_step_type
from schemas.registry import load_plugins

from .base import Pass

_PASSES: dict[str, type[Pass]] = {}

#: Modules holding the built-in passes (light to import: heavy libraries load inside `run`).
BUILTIN_MODULES = (
    "passes.model",
    "passes.data",
    "passes.train",
    "passes.onnx_export",
    "passes.quantize",
    "passes.evaluate",
)
_loaded = False


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Register a pass class under its config's step type (usable as a decorator)."""
    name = cls.config_class.step_type()
    if get_step_type(name) is not cls.config_class:
        raise ValueError(f"{cls.__name__}: its config {cls.config_class.__name__} is not the registered step type {name!r}")
    if name in _PASSES and _PASSES[name] is not cls:
        raise ValueError(f"a pass is already registered for {name!r}: {_PASSES[name].__name__}")
    if not isinstance(cls.version, int) or cls.version < 1:
        raise ValueError(f"{cls.__name__}.version must be a positive integer")
    _PASSES[name] = cls
    return cls


def unregister_pass(name: str) -> None:
    """Remove a pass (tests register fake passes and take them away again)."""
    _PASSES.pop(name, None)


def load_passes() -> None:
    """Import the built-in pass modules and the plugins named in `PIPELINE_PLUGINS` (comma-separated)."""
    global _loaded
    if not _loaded:
        for module in BUILTIN_MODULES:
            # a built-in module that is missing is a packaging bug, caught by
            # tests/passes/test_registry.py (every step type has a pass); skip it here so that the
            # other passes stay usable
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
        _loaded = True
    load_plugins()


def get_pass(name: str) -> type[Pass]:
    """The pass class for a step type."""
    load_passes()
    try:
        return _PASSES[name]
    except KeyError:
        raise KeyError(f"no pass is registered for step type {name!r}") from None


def passes() -> dict[str, type[Pass]]:
    """Every registered pass, by step type."""
    load_passes()
    return dict(sorted(_PASSES.items()))
