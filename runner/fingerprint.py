"""Content digests of files and folders, remembered per (path, size, mtime) so large models hash once."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
from pathlib import Path

from schemas.errors import PipelineError

_CHUNK = 1 << 20
_SKIP_DIRS = {"__pycache__", ".git"}


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Fingerprinter:
    """Hash local inputs by content; a small SQLite table memoises file digests by path, size and mtime.

    SQLite (not a JSON file) because several runs may share one cache at the same time.
    """

    def __init__(self, db_path: Path | None):
        self._db_path = db_path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection | None:
        if self._db_path is None:
            return None
        if self._conn is None:
            self._db_path.parent.mkdir(parents=True, exist_ok=True)
            # used from the threads of `--jobs` too, always under self._lock
            self._conn = sqlite3.connect(self._db_path, timeout=30, isolation_level=None, check_same_thread=False)
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT)"
            )
        return self._conn

    def file_digest(self, path: Path) -> str:
        """The file's SHA-256, from the memo when its size and mtime are unchanged."""
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device in a data folder would block or never end
            raise PipelineError(f"{path} is not a regular file (a named pipe or a device?); remove it from the folder")
        key = str(path.resolve())
        with self._lock:
            db = self._db()
            if db is not None:
                row = db.execute("SELECT size, mtime_ns, sha256 FROM files WHERE path = ?", (key,)).fetchone()
                if row and row[0] == st.st_size and row[1] == st.st_mtime_ns:
                    return row[2]
        digest = sha256_file(path)
        with self._lock:
            db = self._db()
            if db is not None:
                db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (key, st.st_size, st.st_mtime_ns, digest))
        return digest

    def remember(self, path: Path, digest: str) -> None:
        """Record a digest just computed elsewhere (the file's bytes were hashed before it was moved here)."""
        st = path.stat()
        with self._lock:
            db = self._db()
            if db is not None:
                db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                           (str(path.resolve()), st.st_size, st.st_mtime_ns, digest))

    def digest(self, path: Path) -> str:
        """A file's digest, or a folder's: the SHA-256 of its sorted (relative path, file digest) list."""
        path = Path(path)
        if path.is_file():
            return self.file_digest(path)
        h = hashlib.sha256()
        for rel, full in iter_files(path):
            h.update(f"{rel}\0{self.file_digest(full)}\n".encode())
        return h.hexdigest()

    def close(self) -> None:
        """Close the memo database."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def iter_files(root: Path):
    """(relative posix path, full path) for every file under `root`, sorted, skipping VCS/bytecode folders."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in filenames:
            full = Path(dirpath) / name
            out.append((full.relative_to(root).as_posix(), full))
    return sorted(out)
