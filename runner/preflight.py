"""The folders a run writes to, checked before anything runs: a bad one is an exit-2 error, not a traceback.

`--output` naming a file, a folder under a file, or a read-only place, and a cache folder (`--cache-dir`
or `PIPELINE_CACHE_DIR`) that is a file, each used to fail late with an `OSError` traceback (or after
every step had failed). Each is now one `ConfigError` that names the flag, the path, and what to do.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from schemas.errors import ConfigError, Issue


def prepare_output_dir(path: Path, flag: str = "--output") -> Path:
    """Create the output folder if needed; ConfigError when it is a file, under a file, or not writable."""
    where = f"{flag} {path}"
    try:
        if path.exists() and not path.is_dir():
            raise _error(where, "this is a file, not a folder", "name a folder (it is created if missing)")
        path.mkdir(parents=True, exist_ok=True)
    except ConfigError:
        raise
    except (FileExistsError, NotADirectoryError):
        raise _error(where, "a part of this path is a file, so the folder cannot be created",
                     "name a folder that is not inside a file") from None
    except (OSError, ValueError) as exc:  # read-only, permissions, a symlink loop, a NUL in the name
        raise _error(where, f"cannot create the output folder: {_reason(exc)}", "choose a writable folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise _error(where, "the output folder is not writable (read-only or no permission)", "choose a writable folder")
    return path


def check_cache_dir(root: Path, given: bool) -> None:
    """The cache folder must be a folder, or creatable; it is not created here (the cache does that)."""
    where = f"--cache-dir {root}" if given else f"the cache folder {root} (PIPELINE_CACHE_DIR or XDG_CACHE_HOME)"
    hint = "name a folder for the cache (it is created if missing), e.g. --cache-dir ~/.cache/pipeline"
    try:
        if root.exists() and not root.is_dir():
            raise _error(where, "this is a file, not a folder", hint)
        existing = root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise _error(where, f"{existing} is a file, so the cache folder cannot be created under it", hint)
    except OSError as exc:  # a symlink loop, a name too long
        raise _error(where, f"cannot use this folder: {_reason(exc)}", hint) from None
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _error(where, f"{existing} is not writable (read-only or no permission)", hint)


def _error(where: str, message: str, hint: str) -> ConfigError:
    return ConfigError([Issue(message, (), where, hint=hint)])


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return "read-only file system"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
