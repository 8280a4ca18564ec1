"""The pass registry: step type -> pass class, registered explicitly, duplicates rejected."""

from __future__ import annotations

import importlib

from schemas import get_step_type
from schemas.errors import RegistryError, UnknownStepTypeError
from schemas.catalog import load_plugins

from passes.base import Pass

_PASSES: dict[str, type[Pass]] = {}

#: Where each built-in pass lives. A module is imported only when a workflow uses one of its step
#: types (as Olive does), and its heavy libraries only inside `run`.
BUILTIN_PASSES = {
    "model": "passes.sources.model",
    "load_data": "passes.sources.data",
    "lora": "passes.train.steps",
    "qlora": "passes.train.steps",
    "finetune": "passes.train.steps",
    "merge_adapter": "passes.train.steps",
    "tune_scales": "passes.train.scales",
    "prune": "passes.train.prune",
    "export_onnx": "passes.onnx.export",
    "optimize_onnx": "passes.onnx.optimize",
    "quantize": "passes.onnx.quantize",
    "evaluate": "passes.evaluate.steps",
    "select": "passes.evaluate.select",
    "tune_session": "passes.evaluate.tune",
    "olive": "passes.olive.run",
}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Register a pass class under its config's step type (usable as a decorator)."""
    name = cls.config_class.step_type()
    if get_step_type(name) is not cls.config_class:
        raise RegistryError(f"{cls.__name__}: its config {cls.config_class.__name__} is not the registered step type "
                            f"{name!r}: register the config first (schemas.register_step)")
    if name in _PASSES and _PASSES[name] is not cls:
        raise RegistryError(f"a pass is already registered for {name!r}: {_PASSES[name].__name__} "
                            "(one step type, one pass)")
    if not isinstance(cls.version, int) or cls.version < 1:
        raise RegistryError(f"{cls.__name__}.version must be a positive integer")
    _PASSES[name] = cls
    return cls


def unregister_pass(name: str) -> None:
    """Remove a pass (tests register fake passes and take them away again)."""
    _PASSES.pop(name, None)


def load_passes() -> None:
    """Import every built-in pass module and the plugins named in `PIPELINE_PLUGINS` (comma-separated)."""
    for module in sorted(set(BUILTIN_PASSES.values())):
        importlib.import_module(module)
    load_plugins()


def get_pass(name: str) -> type[Pass]:
    """The pass class for a step type."""
    if name not in _PASSES:
        if name in BUILTIN_PASSES:
            importlib.import_module(BUILTIN_PASSES[name])
        load_plugins()
    try:
        return _PASSES[name]
    except KeyError:
        raise UnknownStepTypeError(
            f"no pass is registered for step type {name!r}: built-in types are {', '.join(sorted(BUILTIN_PASSES))}; "
            "a plugin's module must be named in PIPELINE_PLUGINS"
        ) from None


def passes() -> dict[str, type[Pass]]:
    """Every registered pass, by step type."""
    load_passes()
    return dict(sorted(_PASSES.items()))
