"""`--set steps.tune.epochs=1`: override any field of the workflow from the command line."""

from __future__ import annotations

from typing import Any, Sequence

import yaml

from schemas.errors import ConfigError, Issue, PipelineError

from .yaml_loader import Positions


class OverrideError(PipelineError):
    """A `--set` argument is malformed (no `=`, an empty key part, a value that is not YAML)."""


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """`a.b.c=value` -> (("a", "b", "c"), value); the value is read as a YAML scalar or flow collection."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise OverrideError(f"--set takes KEY=VALUE (e.g. steps.tune.epochs=1), got {text!r}")
    parts = tuple(p.strip() for p in key.strip().split("."))
    if any(not p for p in parts):
        raise OverrideError(f"--set key {key!r} has an empty part (write a.b.c=value)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise OverrideError(f"--set {key}: the value {raw!r} is not valid YAML ({exc}); quote text in YAML: KEY='\"a: b\"'") from None
    return parts, value


def apply_overrides(data: dict, overrides: Sequence[str], positions: Positions) -> dict:
    """Apply `--set` overrides to the loaded data in place; errors name the override."""
    issues = []
    for n, text in enumerate(overrides, 1):
        where = f"--set #{n}"
        try:
            parts, value = parse_override(text)
        except OverrideError as exc:
            issues.append(Issue(str(exc), (), where))
            continue
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None and isinstance(node, dict):
                child = node[part] = {}
                # a mapping made by this override (`steps.nope` for steps.nope.x=1) is the override's:
                # problems with it (no `type`) must name the `--set`, not a line of the file
                positions.origins.setdefault(parts[: i + 1], f"--set {text}")
            if not isinstance(child, dict):
                issues.append(Issue(f"cannot set {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is not a mapping", parts, where))
                break
            node = child
        else:
            node[parts[-1]] = value
            # the overridden value now comes from the command line, not the file
            positions.origins[parts] = f"--set {text}"
    if issues:
        raise ConfigError(issues)
    return data
