"""Generate `schemas/olive_passes.json` from Olive's own pass classes: what validation knows of Olive.

    python -m passes.olive.manifest --write   # regenerate after upgrading olive-ai
    python -m passes.olive.manifest --check   # exit 1 when the committed manifest differs from the installed Olive

For every pass in Olive's registry (`olive/olive_config.json`) the manifest holds its parameters (from the
class's `default_config` for a cpu target: type, default, required, description, allowed values), the
model kinds it takes and produces, whether it needs data, and its framework. Validation reads the JSON
(`schemas.olive_manifest`) so `pipeline validate` never imports Olive or torch; Olive is imported only
inside these functions.

Kinds come from the annotations of the pass's `_run_for_config(model, ...) -> Handler`: HfModelHandler is
our hf_model, ONNXModelHandler our onnx_model. A handler we have no artifact for (OpenVINO, QNN, Qairt,
diffusers, a composite of several ONNX graphs, a pickled PyTorch model) leaves the list empty or
`produces` null, and validation refuses the pass with the handler's name. Passes without annotations fall
back on their module (olive.passes.onnx: onnx_model -> onnx_model; olive.passes.pytorch: hf_model ->
hf_model). LoRA-type passes return the base model with its adapter: an hf_model (noted in `note`).
"""

from __future__ import annotations

import argparse
import enum
import importlib
import inspect
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

#: The committed manifest (schemas owns it: it is data of the contract).
MANIFEST = Path(__file__).resolve().parents[2] / "schemas" / "olive_passes.json"

#: Olive model handlers -> our artifact kinds.
HANDLER_KINDS = {"HfModelHandler": "hf_model", "ONNXModelHandler": "onnx_model"}

#: Where an annotation says less than the code does, verified by reading the pass's source.
KIND_OVERRIDES: dict[str, dict[str, Any]] = {
    # annotated `-> PyTorchModelHandler`, but returns inherit_hf_from_hf(...): a Hugging Face folder
    "GptqModel": {"produces": "hf_model"},
}

#: Passes whose result is the base model plus a PEFT adapter (an HfModelHandler with `adapter_path`).
_ADAPTER_NOTE = "returns the base model with a trained adapter (an hf_model folder plus the adapter)"


def build_manifest() -> dict[str, Any]:
    """The manifest of the installed Olive: {"olive_version", "accelerator", "passes": {name: entry}}."""
    os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
    import olive
    from olive.hardware.accelerator import AcceleratorSpec, Device

    registry = json.loads((Path(olive.__file__).parent / "olive_config.json").read_text())["passes"]
    spec = AcceleratorSpec(accelerator_type=Device.CPU, execution_provider="CPUExecutionProvider")
    passes = {name: pass_entry(name, info, spec) for name, info in sorted(registry.items(), key=lambda kv: kv[0].lower())}
    return {
        "generated_by": "python -m passes.olive.manifest --write",
        "olive_version": olive.__version__,
        "accelerator": "cpu / CPUExecutionProvider (defaults that depend on the target are those of a cpu)",
        "passes": passes,
    }


def pass_entry(name: str, info: dict, spec: Any) -> dict[str, Any]:
    """One pass's entry: its parameters, kinds taken and produced, data needs, framework."""
    module, _, cls_name = info["module_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    params = {p: param_entry(cfg) for p, cfg in cls.default_config(spec).items()}
    framework = module.split(".")[2] if module.startswith("olive.passes.") else module
    takes, returns = _handlers(cls)
    accepts = sorted({HANDLER_KINDS[h] for h in takes if h in HANDLER_KINDS})
    produced = [HANDLER_KINDS[h] for h in returns if h in HANDLER_KINDS]
    if not takes and not returns:  # no annotations: the module says which framework it works in
        accepts, produced = {"onnx": (["onnx_model"], ["onnx_model"]),
                             "pytorch": (["hf_model"], ["hf_model"])}.get(framework, ([], []))
    # a pass that returns one of several handlers depending on its input (QuarkQuantization: hf -> hf,
    # onnx -> onnx; OpenVINOWeightCompression): only its ONNX branch, so that the kind a step produces
    # never depends on its input
    if "ONNXModelHandler" in returns and len(returns) > 1 and "onnx_model" in accepts:
        accepts, produced = ["onnx_model"], ["onnx_model"]
    entry = {
        "name": name,
        "module": info["module_path"],
        "description": _doc(cls),
        "params": params,
        "accepts": accepts,
        "produces": "onnx_model" if "onnx_model" in produced else produced[0] if produced else None,
        "needs_data": info.get("dataset") in ("dataset_required", "dataset")
        or any(p.endswith("data_config") and v["required"] for p, v in params.items()),
        "framework": framework,
        "olive_takes": takes,
        "olive_returns": returns,
    }
    entry.update(KIND_OVERRIDES.get(name, {}))
    if any(p == "train_data_config" for p in params) and entry["produces"] == "hf_model":
        entry["note"] = _ADAPTER_NOTE
    return entry


def param_entry(cfg: Any) -> dict[str, Any]:
    """A `PassConfigParam` as JSON: type (readable), default, required, description, choices."""
    return {
        "type": type_text(cfg.type_),
        "default": json_default(cfg.default_value),
        "required": bool(cfg.required),
        "description": " ".join((cfg.description or "").split()),
        "choices": choices(cfg.type_),
    }


def _members(names: set[str]) -> str:
    """Union members in a canonical order (sorted, None last). Why: typing caches unions by equality, and
    Union[a, b] == Union[b, a], so the order `get_args` returns depends on which equal union some other import
    built first; the manifest must not change with import order."""
    return " | ".join(sorted(names - {"None"}) + (["None"] if "None" in names else []))


def type_text(tp: Any) -> str:
    """A readable type: `int`, `str | None`, `list[str]`, `dict[str, Any]`; an enum is the type of its values."""
    if tp is None:  # Olive leaves some parameters untyped: anything goes
        return "Any"
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        return _members({type_text(a) for a in args})
    if origin is typing.Literal:
        return _members({type(a).__name__ for a in args})
    if origin in (list, tuple, set, dict):
        inner = ", ".join(type_text(a) for a in args)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(dict.fromkeys(type(m.value).__name__ for m in tp)) or "str"
    if tp is typing.Any:
        return "Any"
    if tp is typing.Callable or origin is not None and getattr(origin, "__name__", "") == "Callable":
        return "Callable"
    if isinstance(tp, type):
        return {"Path": "path", "PosixPath": "path"}.get(tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def choices(tp: Any) -> list | None:
    """The allowed values Olive declares (an enum or a Literal, possibly Optional), or None."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is typing.Union \
        or type(tp).__name__ == "UnionType" else [tp]
    if len(args) != 1:
        return None
    (tp,) = args
    if typing.get_origin(tp) is typing.Literal:
        return [json_default(a) for a in typing.get_args(tp)]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [json_default(m.value) for m in tp]
    return None


def json_default(value: Any) -> Any:
    """A default as JSON: enums by value, paths as strings; conditional/search defaults and objects -> null."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, (list, dict)):
        try:
            return json.loads(json.dumps(value, default=_enum_value))
        except (TypeError, ValueError):
            return None
    return value if isinstance(value, (str, int, float, bool)) or value is None else None


def _enum_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(type(value).__name__)


def _handlers(cls: type) -> tuple[list[str], list[str]]:
    """The handler class names in `_run_for_config`'s `model` and return annotations (strings too)."""
    sig = inspect.signature(cls._run_for_config)
    model = sig.parameters.get("model")
    return (_names(model.annotation if model else inspect.Parameter.empty),
            _names(sig.return_annotation))


def _names(annotation: Any) -> list[str]:
    if annotation is inspect.Parameter.empty:
        return []
    text = annotation if isinstance(annotation, str) else str(annotation) if typing.get_args(annotation) \
        else getattr(annotation, "__name__", str(annotation))
    parts = text.replace("typing.Union[", "").replace("]", "").replace("|", ",").split(",")
    return [p.strip().rsplit(".", 1)[-1] for p in parts if p.strip()]


def _doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    first = doc.split("\n\n", 1)[0]
    return " ".join(first.split()) or f"Olive's {cls.__name__} pass."


def render(manifest: dict) -> str:
    """The manifest's text exactly as committed (sorted keys, two-space indent, trailing newline)."""
    return json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`--write` regenerates the manifest; `--check` exits 1 (naming the passes that differ) when stale."""
    parser = argparse.ArgumentParser(prog="python -m passes.olive.manifest", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help=f"write {MANIFEST.name}")
    group.add_argument("--check", action="store_true", help="compare with the installed Olive")
    args = parser.parse_args(argv)
    text = render(build_manifest())
    if args.write:
        MANIFEST.write_text(text)
        print(f"wrote {MANIFEST} ({len(json.loads(text)['passes'])} passes)")
        return 0
    stale = differences(json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}, json.loads(text))
    for line in stale:
        print(line, file=sys.stderr)
    if stale:
        print("the manifest is out of date: run `python -m passes.olive.manifest --write`", file=sys.stderr)
    return 1 if stale else 0


def differences(committed: dict, current: dict) -> list[str]:
    """What differs between two manifests, one line per pass (or header field)."""
    out = [f"{key}: committed {committed.get(key)!r}, installed {current.get(key)!r}"
           for key in ("olive_version",) if committed.get(key) != current.get(key)]
    old, new = committed.get("passes", {}), current.get("passes", {})
    for name in sorted(set(old) | set(new)):
        if name not in new:
            out.append(f"{name}: in the manifest, not in the installed Olive")
        elif name not in old:
            out.append(f"{name}: in the installed Olive, not in the manifest")
        elif old[name] != new[name]:
            keys = sorted(k for k in set(old[name]) | set(new[name]) if old[name].get(k) != new[name].get(k))
            out.append(f"{name}: {', '.join(keys)} differ")
    return out


if __name__ == "__main__":
    sys.exit(main())
