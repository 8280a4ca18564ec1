"""Checking cache entries against their manifests, and recognising a folder as a cache.

An entry is `artifacts/<key>/` with `artifact.json` (the manifest) and `data/`. It is damaged when the
manifest is missing, unreadable, not a JSON object, lacks a field, names another key or does not match
its own digest, or when a file under `data/` is missing, extra, of another size or (in a full check)
of another SHA-256. The cheap check (sizes, names, manifest) runs on every lookup; the full check
hashes, memoised by path, size and mtime, so an intact entry is hashed about once.

The marker (`pipeline-cache.json`, plus the standard `CACHEDIR.TAG` so backup tools skip the cache)
is how `cache` commands know a folder is theirs to delete from.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from schemas.errors import ConfigError, Issue

from .fingerprint import iter_files
from .keys import canonical_json

MANIFEST = "artifact.json"
DATA = "data"
MARKER = "pipeline-cache.json"
CACHEDIR_TAG = "CACHEDIR.TAG"
#: The standard signature (https://bford.info/cachedir/): backup and sync tools skip such folders.
CACHEDIR_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
#: Every name the cache itself writes at its top level (a folder holding only these is a cache).
OWN_NAMES = frozenset({"artifacts", "tmp", "locks", "history", "quarantine", MARKER, CACHEDIR_TAG, "fingerprints.sqlite",
                       "fingerprints.sqlite-journal", "fingerprints.sqlite-wal", "fingerprints.sqlite-shm"})
_REQUIRED = {"kind": str, "step": str, "meta": dict, "files": dict, "digest": str, "created": (int, float)}


class DamagedEntry(Exception):
    """A cache entry that must not be served; `problems` says what is wrong, one phrase each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def artifact_digest(files: dict, meta: dict) -> str:
    """The artifact's content digest: its files' digests and its metadata, canonically."""
    return hashlib.sha256(canonical_json({"files": files, "meta": meta}).encode()).hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The entry's manifest, checked for shape and self-consistency; DamagedEntry when it is not sound."""
    if not folder.is_dir():
        raise DamagedEntry(["not a folder"])
    try:
        text = (folder / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DamagedEntry([f"no {MANIFEST}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedEntry([f"{MANIFEST} unreadable ({exc.__class__.__name__})"]) from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError:
        raise DamagedEntry([f"{MANIFEST} is not valid JSON (truncated?)" if text.strip() else f"{MANIFEST} is empty"]) from None
    if not isinstance(manifest, dict):
        raise DamagedEntry([f"{MANIFEST} is not a JSON object"])
    missing = [k for k, t in _REQUIRED.items() if not isinstance(manifest.get(k), t)]
    if missing:
        raise DamagedEntry([f"{MANIFEST} lacks or has a malformed {', '.join(missing)}"])
    if manifest.get("key", folder.name) != folder.name:
        raise DamagedEntry([f"{MANIFEST} belongs to key {str(manifest['key'])[:12]}, not this folder"])
    for rel, info in manifest["files"].items():
        if not (isinstance(info, dict) and isinstance(info.get("sha256"), str) and isinstance(info.get("size"), int)):
            raise DamagedEntry([f"{MANIFEST}: malformed entry for {rel}"])
    if artifact_digest(manifest["files"], manifest["meta"]) != manifest["digest"]:
        raise DamagedEntry(["manifest digest mismatch"])
    return manifest


def check_files(folder: Path, manifest: dict[str, Any], hasher: Callable[[Path], str] | None = None) -> list[str]:
    """Missing, extra, resized and (with `hasher`, a full check) changed files under `folder/data`."""
    actual = dict(iter_files(folder / DATA))
    problems = []
    for rel, info in sorted(manifest["files"].items()):
        full = actual.get(rel)
        if full is None:
            problems.append(f"missing {rel}")
            continue
        try:
            if full.stat().st_size != info["size"]:
                problems.append(f"changed {rel} (size {full.stat().st_size} B, expected {info['size']} B)")
            elif hasher is not None and hasher(full) != info["sha256"]:
                problems.append(f"changed {rel} (content differs)")
        except OSError as exc:
            problems.append(f"unreadable {rel} ({exc.__class__.__name__})")
    problems += [f"unexpected {rel}" for rel in sorted(set(actual) - set(manifest["files"]))]
    return problems


def check_entry(folder: Path, hasher: Callable[[Path], str] | None = None) -> dict[str, Any]:
    """The manifest of an intact entry; DamagedEntry otherwise (sizes only unless `hasher` is given)."""
    manifest = read_manifest(folder)
    problems = check_files(folder, manifest, hasher)
    if problems:
        raise DamagedEntry(problems)
    return manifest


def quarantine_name(key: str) -> str:
    """`<key>.<UTC timestamp>.<pid>`: sorts by time, never collides with an earlier one."""
    return f"{key}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.{os.getpid()}.{time.monotonic_ns() % 10**6}"


def write_marker(root: Path) -> None:
    """Mark `root` as a cache (idempotent)."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / MARKER).exists():
        tmp = root / f".{MARKER}.{os.getpid()}"
        tmp.write_text(json.dumps({"tool": "pipeline-orchestrator", "format": 1, "created": time.time()}) + "\n")
        os.replace(tmp, root / MARKER)
    if not (root / CACHEDIR_TAG).exists():
        (root / CACHEDIR_TAG).write_text(
            f"{CACHEDIR_SIGNATURE}\n# This file is a cache directory tag created by pipeline-orchestrator.\n"
            "# For information about cache directory tags, see https://bford.info/cachedir/\n")


def has_marker(root: Path) -> bool:
    """Whether `root` carries our marker file."""
    try:
        return json.loads((root / MARKER).read_text()).get("tool") == "pipeline-orchestrator"
    except (OSError, ValueError, AttributeError):
        return False


def looks_like_old_cache(root: Path) -> bool:
    """A cache made before the marker: only the cache's own names at the top, and a manifest or the memo."""
    names = {p.name for p in root.iterdir()}
    if not names <= OWN_NAMES:
        return False
    artifacts = root / "artifacts"
    has_manifest = artifacts.is_dir() and any((d / MANIFEST).is_file() for d in artifacts.iterdir())
    return has_manifest or (root / "fingerprints.sqlite").is_file()


def claim_root(root: Path, create: bool) -> bool:
    """Make sure `root` is a cache we may write to and delete from; False when there is nothing there yet.

    With `create`, an absent or empty folder becomes a cache (the marker is written). A folder made by
    an earlier version (the cache layout, no marker) gets the marker. Anything else is refused with a
    ConfigError (exit 2): the cache commands delete folders, and must never delete a user's.
    """
    if root.exists() and not root.is_dir():
        raise _refuse(root, "is a file, not a folder", "point --cache-dir at a folder (or leave it out for the default)")
    if root.is_dir() and has_marker(root):
        return True
    empty = not root.exists() or not any(root.iterdir())
    if empty:
        if create:
            write_marker(root)
        return create
    if looks_like_old_cache(root):
        write_marker(root)
        return True
    raise _refuse(root, f"is not a pipeline cache (it has no {MARKER} and holds other files)",
                  "pass --cache-dir a new or empty folder, or the folder of an existing cache")


def _refuse(root: Path, what: str, hint: str) -> ConfigError:
    return ConfigError([Issue(f"the cache folder {root} {what}: refusing to use it", (), "--cache-dir", hint=hint)])
