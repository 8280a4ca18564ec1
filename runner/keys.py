"""Cache keys: the SHA-256 of canonical JSON of everything that decides a step's result.

Components: the pass type and implementation version, the whole validated config minus declared
exclusions (references and paths are replaced by the content digests of what they name), the content
digests of the inputs, the versions of the packages the pass declares, and the target when the pass
depends on it. Never an allow-list of hand-picked fields: a new config field is keyed automatically.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from typing import Any

from schemas import StepConfig, Target

from passes.ort import isa
from schemas.base import RUN_FIELDS

KEY_FORMAT = 1


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the named distributions (`missing` when not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


@dataclass(frozen=True)
class KeyParts:
    """What a key is made of, kept so `plan` can say which part changed."""

    pass_type: str
    pass_version: int
    config: dict
    inputs: dict
    external: dict
    packages: dict
    target: dict | None
    #: The CPU instruction set the step built for, for passes whose result depends on it on cpu targets.
    isa: str | None = None

    def as_dict(self) -> dict:
        """The JSON document that is hashed (`isa` only where it applies, so other keys stay as they were)."""
        return ({"isa": self.isa} if self.isa else {}) | {
            "format": KEY_FORMAT,
            "pass": self.pass_type,
            "pass_version": self.pass_version,
            "config": self.config,
            "inputs": self.inputs,
            "external": self.external,
            "packages": self.packages,
            "target": self.target,
        }

    @property
    def key(self) -> str:
        """The full 64-hex SHA-256."""
        return hashlib.sha256(canonical_json(self.as_dict()).encode()).hexdigest()


def keyed_config(config: StepConfig) -> dict:
    """The config as keyed: JSON mode, minus `key_exclude`, references and paths (keyed by content)."""
    # `target` (a step's override) is keyed as the effective target, and only where the pass uses it.
    # How a step runs (isolation, resources) never changes what it produces.
    drop = set(config.key_exclude) | set(config.reference_fields()) | set(config.path_fields()) | {"target"} | RUN_FIELDS
    drop |= {name for name in config.key_omit_when_empty if not getattr(config, name)}
    return config.model_dump(mode="json", exclude=drop)


def key_parts(config: StepConfig, pass_version: int, packages: tuple[str, ...], inputs: dict,
              external: dict, target: Target) -> KeyParts:
    """Assemble the key parts of one step."""
    return KeyParts(
        pass_type=config.step_type(),
        pass_version=pass_version,
        config=keyed_config(config),
        inputs=inputs,
        external=external,
        packages=package_versions(tuple(sorted(packages))),
        # `isa` is keyed as resolved (auto -> this machine's), and only for steps that depend on it.
        target=target.model_dump(mode="json", exclude={"isa"}) if config.uses_target else None,
        isa=isa.resolve(target.isa) if config.uses_isa and target.device == "cpu" else None,
    )


def explain_change(old: dict | None, new: KeyParts) -> str:
    """Why a step's key differs from the last one recorded for it (for `pipeline plan`)."""
    if old is None:
        return "never run"
    new_d = new.as_dict()
    if old.get("pass_version") != new_d["pass_version"]:
        return f"pass version changed ({old.get('pass_version')} -> {new_d['pass_version']})"
    if old.get("config") != new_d["config"]:
        before, after = old.get("config") or {}, new_d["config"]
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        return f"config changed ({', '.join(changed)})"
    if old.get("inputs") != new_d["inputs"] or old.get("external") != new_d["external"]:
        before = {**(old.get("inputs") or {}), **(old.get("external") or {})}
        after = {**new_d["inputs"], **new_d["external"]}
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        return f"input changed ({', '.join(changed)})"
    if old.get("packages") != new_d["packages"]:
        return "package versions changed"
    if old.get("target") != new_d["target"]:
        return "target changed"
    if old.get("isa") != new_d.get("isa"):
        return f"CPU instruction set changed ({old.get('isa')} -> {new_d.get('isa')})"
    return "not in the cache"
