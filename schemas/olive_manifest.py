"""What validation knows of Olive's passes, read from the committed manifest `olive_passes.json`.

The manifest is generated from Olive's own pass classes (`python -m passes.olive.manifest --write`) and a
test keeps it in sync with the installed olive-ai. Only `json` is imported here, never Olive: `pipeline
validate` and `plan` check every Olive pass's parameters in milliseconds. The file is read on the first
lookup (a workflow with an `olive` step, or `pipeline passes olive`), not on import.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

MANIFEST_FILE = Path(__file__).with_name("olive_passes.json")


@lru_cache(maxsize=1)
def olive_manifest() -> dict[str, Any]:
    """The whole manifest: {"olive_version", "accelerator", "passes": {name: entry}} (read once)."""
    return json.loads(MANIFEST_FILE.read_text(encoding="utf-8"))


def olive_passes() -> dict[str, dict]:
    """Olive's passes by name (as Olive's registry spells them: Gptq, OnnxStaticQuantization, ...)."""
    return olive_manifest()["passes"]


def olive_pass(name: str) -> dict | None:
    """One pass's entry (name, module, description, params, accepts, produces, needs_data, framework), or None."""
    return olive_passes().get(name)


def canonical_pass_name(name: str) -> str | None:
    """The registry's spelling of `name`, matched without case (Olive's configs write `onnxconversion`)."""
    if name in olive_passes():
        return name
    lowered = {n.lower(): n for n in olive_passes()}
    return lowered.get(str(name).lower())


def data_params(entry: dict) -> list[str]:
    """The pass's data-config parameters (`data_config`, `train_data_config`, ...): fed from the step's `data`."""
    return [p for p in entry["params"] if p.endswith("data_config")]


def takes_data(entry: dict) -> bool:
    """Whether the pass reads data at all (it has a data-config parameter)."""
    return bool(data_params(entry))


def value_problem(param: dict, value: Any) -> str | None:
    """Why `value` does not fit a manifest parameter (its type string and choices), or None when it does.

    Types the manifest names but this check cannot judge (Olive's own classes, `Any`) accept anything:
    Olive validates them when the pass runs. A value equal to the declared default always fits.
    """
    default = param.get("default")
    if value is None:
        return None if default is None or "None" in _alternatives(param["type"]) else "this parameter cannot be null"
    if value == default and type(value) is type(default):
        return None
    choices = param.get("choices")
    if choices is not None:
        if any(value == c and type(value) is type(c) for c in choices):
            return None
        return f"{value!r} is not one of {', '.join(repr(c) for c in choices)}"
    if not any(_fits(alt, value) for alt in _alternatives(param["type"])):
        return f"expected {param['type']}, got {_json_type(value)} {value!r}"
    return None


def _alternatives(text: str) -> list[str]:
    """Split `a | list[b | c] | None` at the top level only."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            out.append(text[start:i].strip())
            start = i + 1
    out.append(text[start:].strip())
    return out


_SCALARS = {"int": int, "float": (int, float), "str": str, "bool": bool, "path": str, "Callable": str}


def _fits(alt: str, value: Any) -> bool:
    base, _, inner = alt.partition("[")
    if alt == "None":
        return value is None
    if base in _SCALARS:
        if isinstance(value, bool) and base != "bool":
            return False
        return isinstance(value, _SCALARS[base])
    if base in ("list", "tuple", "set"):
        if not isinstance(value, list):
            return False
        item = inner[:-1] if inner else ""
        return not item or all(any(_fits(a, v) for a in _alternatives(item)) for v in value)
    if base == "dict":
        return isinstance(value, dict)
    return True  # Any, or one of Olive's classes (DataConfig, HFTrainingArguments, Metric...): Olive checks it


def _json_type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)
