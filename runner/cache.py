"""The content-addressed artifact cache.

Layout under the cache root (default `$XDG_CACHE_HOME/pipeline`, or `PIPELINE_CACHE_DIR`):

    artifacts/<key>/artifact.json   the manifest: kind, step, meta, files and their SHA-256, digest
    artifacts/<key>/data/...        the artifact's files
    tmp/<key>.<pid>.<random>/       work in progress; moved into `artifacts/` by one rename when complete
    locks/<key>.lock                one lock per key: concurrent runs build a step once
    history/<workflow>.json         the last key parts of each step, so `plan` can say what changed
    fingerprints.sqlite             file digests memoised by path, size and mtime

A crash or Ctrl-C leaves at most a folder under `tmp/`, which no lookup ever reads; failures are
never committed. The manifest's mtime records when the artifact was last used (for `gc`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from passes.base import Artifact

from .fingerprint import Fingerprinter, iter_files, sha256_file
from .keys import canonical_json

MANIFEST = "artifact.json"
DATA = "data"


def default_cache_dir() -> Path:
    """`PIPELINE_CACHE_DIR`, else `$XDG_CACHE_HOME/pipeline`, else `~/.cache/pipeline`."""
    if os.environ.get("PIPELINE_CACHE_DIR"):
        return Path(os.environ["PIPELINE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "pipeline"


@dataclass(frozen=True)
class Entry:
    """One cached artifact, as `cache ls` shows it."""

    key: str
    kind: str
    step: str
    pass_type: str
    size: int
    created: float
    last_used: float


class Cache:
    """Look up, build under a lock, commit atomically, verify and collect artifacts."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self.artifacts = self.root / "artifacts"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.history_dir = self.root / "history"
        self.fingerprints = Fingerprinter(self.root / "fingerprints.sqlite")

    # --- lookup and commit ---------------------------------------------------------------------

    def lookup(self, key: str, touch: bool = True) -> Artifact | None:
        """The committed artifact for `key`, or None. Touching it records its use for `gc`."""
        manifest_path = self.artifacts / key / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if touch:
            with contextlib.suppress(OSError):
                os.utime(manifest_path)
        return Artifact(manifest["kind"], self.artifacts / key / DATA, manifest["meta"], manifest["digest"], manifest["step"])

    @contextlib.contextmanager
    def lock(self, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the lock of `key`; `on_wait` is called once if another process holds it."""
        self.locks.mkdir(parents=True, exist_ok=True)
        with open(self.locks / f"{key}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait:
                    on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def workdir(self, key: str) -> Iterator[Path]:
        """A fresh temporary folder for building `key`; removed on exit unless it was committed."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        work = self.tmp / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        (work / DATA).mkdir(parents=True)
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def commit(self, key: str, work: Path, *, kind: str, step: str, pass_type: str, meta: dict[str, Any],
               key_parts: dict) -> Artifact:
        """Write the manifest and move `work` into place with one rename."""
        files = {rel: {"sha256": sha256_file(full), "size": full.stat().st_size} for rel, full in iter_files(work / DATA)}
        meta = json.loads(canonical_json(meta))  # must be JSON: fail here, not in a later run
        digest = artifact_digest(files, meta)
        manifest = {
            "format": 1, "key": key, "kind": kind, "step": step, "pass": pass_type, "created": time.time(),
            "meta": meta, "files": files, "digest": digest, "key_parts": key_parts,
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        final = self.artifacts / key
        self.artifacts.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(work, final)
        except OSError:
            if not (final / MANIFEST).exists():
                raise
            # someone committed the same key first (no lock held by them?): theirs wins, ours is dropped
        found = self.lookup(key)
        assert found is not None
        return found

    # --- history (for plan's reasons) -------------------------------------------------------------

    def _history_file(self, workflow_id: str) -> Path:
        return self.history_dir / f"{hashlib.sha256(workflow_id.encode()).hexdigest()[:24]}.json"

    def history(self, workflow_id: str) -> dict[str, dict]:
        """The last key parts recorded for each step of a workflow file."""
        try:
            return json.loads(self._history_file(workflow_id).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def record(self, workflow_id: str, step: str, parts: dict) -> None:
        """Remember a step's key parts after it ran or hit the cache (atomic replace)."""
        self.history_dir.mkdir(parents=True, exist_ok=True)
        path = self._history_file(workflow_id)
        with self.lock(f"history-{path.stem}"):
            data = self.history(workflow_id)
            data[step] = parts
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, sort_keys=True))
            os.replace(tmp, path)

    # --- maintenance ----------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every committed artifact, newest first."""
        out = []
        for folder in self.artifacts.glob("*") if self.artifacts.exists() else []:
            manifest_path = folder / MANIFEST
            try:
                manifest = json.loads(manifest_path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            size = sum(f["size"] for f in manifest["files"].values())
            out.append(Entry(folder.name, manifest["kind"], manifest["step"], manifest.get("pass", "?"), size,
                             manifest["created"], manifest_path.stat().st_mtime))
        return sorted(out, key=lambda e: e.created, reverse=True)

    def verify(self, key: str) -> list[str]:
        """Problems with one artifact: missing, changed or extra files (empty when it is intact)."""
        folder = self.artifacts / key
        manifest = json.loads((folder / MANIFEST).read_text())
        problems = []
        actual = dict(iter_files(folder / DATA))
        for rel, info in manifest["files"].items():
            if rel not in actual:
                problems.append(f"missing {rel}")
            elif actual[rel].stat().st_size != info["size"] or sha256_file(actual[rel]) != info["sha256"]:
                problems.append(f"changed {rel}")
        problems += [f"unexpected {rel}" for rel in sorted(set(actual) - set(manifest["files"]))]
        if artifact_digest(manifest["files"], manifest["meta"]) != manifest["digest"]:
            problems.append("manifest digest mismatch")
        return problems

    def remove(self, key: str) -> None:
        """Delete one artifact (renamed away first, so no reader sees a half-deleted folder)."""
        folder = self.artifacts / key
        if not folder.exists():
            return
        self.tmp.mkdir(parents=True, exist_ok=True)
        doomed = self.tmp / f"deleting.{key}.{uuid.uuid4().hex[:8]}"
        os.rename(folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def gc(self, older_than_seconds: float, dry_run: bool = False) -> tuple[list[Entry], int]:
        """Drop artifacts not used for `older_than_seconds` and stale temporary folders; (removed, bytes)."""
        now = time.time()
        removed = [e for e in self.entries() if now - e.last_used > older_than_seconds]
        if not dry_run:
            for entry in removed:
                with self.lock(entry.key):
                    self.remove(entry.key)
            for stale in self.tmp.glob("*") if self.tmp.exists() else []:
                if not _owner_alive(stale.name):
                    shutil.rmtree(stale, ignore_errors=True)
        return removed, sum(e.size for e in removed)

    def clear(self) -> None:
        """Remove the whole cache."""
        for sub in (self.artifacts, self.tmp, self.history_dir, self.locks):
            shutil.rmtree(sub, ignore_errors=True)
        self.fingerprints.close()
        with contextlib.suppress(FileNotFoundError):
            (self.root / "fingerprints.sqlite").unlink()


def artifact_digest(files: dict, meta: dict) -> str:
    """The artifact's content digest: its files' digests and its metadata, canonically."""
    return hashlib.sha256(canonical_json({"files": files, "meta": meta}).encode()).hexdigest()


def _owner_alive(tmp_name: str) -> bool:
    """Whether the process that created a `tmp/<key>.<pid>.<rand>` folder still runs."""
    parts = tmp_name.split(".")
    if len(parts) < 3 or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
