"""How a path written in a workflow becomes a real path: relative to the workflow file, or `pkg://`.

`pkg://NAME/sub/path` names a folder inside an installed Python package, found with
`importlib.util.find_spec` on the top-level package, which locates it without importing it (models
shipped as wheels must not run their package's code, and importing may be slow).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from .errors import PipelineError

PKG_PREFIX = "pkg://"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
#: Extensions of local files a workflow points at (data files, with their compressed forms, and single-file
#: models): a value ending in one is a local path even when it has the `org/name` shape.
LOCAL_FILE_SUFFIXES = frozenset({
    ".csv", ".tsv", ".tab", ".json", ".jsonl", ".ndjson", ".parquet", ".pq", ".arrow", ".txt", ".text",
    ".gz", ".bz2", ".xz", ".zst", ".zip", ".gguf", ".onnx", ".safetensors", ".bin",
})


class PathResolutionError(PipelineError):
    """A path in the workflow cannot be resolved; the message says why and how to fix it."""


def is_package_uri(value: str) -> bool:
    """True for `pkg://package/sub/path`."""
    return value.startswith(PKG_PREFIX)


def looks_like_hub_id(value: str, base: Path) -> bool:
    """True when a workflow value names a Hugging Face hub repository (`org/name`), not a local path.

    The one test every layer uses (validation, cache keys, the source passes, Azure ML specs): the value
    has the `org/name` shape, is no `pkg://` URI, does not start with `.`, does not exist relative to
    `base` (the workflow's folder), and does not end in a file extension of a local data or model file:
    `data/train.csv` and `models/tiny.gguf` have the hub shape too, but a missing one is a typo of a
    local path ("no such file"), not a hub repository to download.
    """
    if is_package_uri(value) or value.startswith(".") or not _HUB_ID.match(value):
        return False
    if Path(value).suffix.lower() in LOCAL_FILE_SUFFIXES:
        return False
    return not (base / value).exists()


def package_folder(package: str) -> Path:
    """The folder of an installed top-level package, without importing it."""
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", package):
        raise PathResolutionError(f"{package!r} is not a Python package name")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise PathResolutionError(f"package {package!r} is not installed (try: pip install {dist})")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_local_path(value: str, base: Path) -> Path:
    """Resolve a local path or `pkg://` URI; relative paths are relative to `base` (the workflow's folder)."""
    if is_package_uri(value):
        rest = value[len(PKG_PREFIX):]
        package, _, sub = rest.partition("/")
        folder = package_folder(package)
        try:
            return (folder / sub).resolve() if sub else folder.resolve()
        except (RuntimeError, OSError, ValueError) as exc:  # a symlink loop inside the package
            raise PathResolutionError(f"{value!r} cannot be resolved: {exc}") from None
    try:
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = base / path
        return path.resolve()
    except RuntimeError as exc:  # Python < 3.13 reports a symlink loop as a RuntimeError
        raise PathResolutionError(f"{value!r} is a symlink loop ({exc}); point it at a real file or folder") from None
    except (OSError, ValueError) as exc:  # a loop (3.13+), a name too long, a NUL byte, no HOME for `~`
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PathResolutionError(f"{value!r} cannot be resolved: {reason}") from None
