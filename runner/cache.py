"""The content-addressed artifact cache.

Layout under the cache root (default `$XDG_CACHE_HOME/pipeline`, or `PIPELINE_CACHE_DIR`):

    pipeline-cache.json, CACHEDIR.TAG   the marker: `cache` commands act only on a folder that has it
    artifacts/<key>/artifact.json   the manifest: kind, step, meta, files and their SHA-256, digest
    artifacts/<key>/data/...        the artifact's files
    tmp/<key>.<pid>.<random>/       work in progress; moved into `artifacts/` by one rename when complete
    checkpoints/<key>/              a training step's checkpoints: kept across killed runs (the next run of the
                                    key resumes from them), removed when the key is committed or by `gc`
    quarantine/<key>.<time>.../     damaged entries moved aside (never deleted by a run; `clear` empties it)
    locks/<key>.lock                one lock per key: concurrent runs build a step once
    history/<workflow>.json         the last key parts of each step, so `plan` can say what changed
    fingerprints.sqlite             file digests memoised by path, size and mtime

A crash or Ctrl-C leaves at most a folder under `tmp/`, which no lookup ever reads and which the next
run that builds the same key (or `gc`) removes once its process is gone; failures are never committed.
Every lookup checks the entry against its manifest (see `cache_check`): a damaged entry is moved to
`quarantine/` and treated as a miss. The manifest's mtime records when the artifact was last used (for `gc`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
from filelock import FileLock, Timeout

from passes.base import Artifact

from .cache_check import (DATA, MANIFEST, DamagedEntry, artifact_digest, check_entry, check_files, claim_root,
                          quarantine_name, read_manifest)
from .fingerprint import Fingerprinter, iter_files, sha256_file
from .keys import canonical_json

__all__ = ["Cache", "Entry", "Stale", "MANIFEST", "DATA", "artifact_digest", "default_cache_dir", "tree_size"]


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


@dataclass(frozen=True)
class Stale:
    """A temporary folder whose process is gone (a killed or crashed run's work)."""

    path: Path
    size: int


#: Called with a damaged entry's key, its step (if known), its problems and where it was moved.
DamageReport = Callable[[str, str, list[str], Path], None]


class Cache:
    """Look up (checked), build under a lock, commit atomically, verify, quarantine and collect artifacts."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self.artifacts = self.root / "artifacts"
        self.tmp = self.root / "tmp"
        self.checkpoints = self.root / "checkpoints"
        self.locks = self.root / "locks"
        self.quarantine_dir = self.root / "quarantine"
        self.history_dir = self.root / "history"
        self.fingerprints = Fingerprinter(self.root / "fingerprints.sqlite")

    def claim(self, create: bool = True) -> bool:
        """Check that the root is a cache (see `cache_check.claim_root`); False when there is none yet."""
        return claim_root(self.root, create)

    # --- lookup and commit ---------------------------------------------------------------------

    def lookup(self, key: str, touch: bool = True, *, full: bool = False, on_damage: DamageReport | None = None,
               locked: bool = False) -> Artifact | None:
        """The intact committed artifact for `key`, or None.

        Sizes are always checked, SHA-256 too with `full`. A damaged entry is quarantined when
        `on_damage` is given (under the key's lock, unless the caller holds it: `locked`), and is a miss
        either way. Touching an artifact records its use for `gc`.
        """
        folder = self.artifacts / key
        if not os.path.lexists(folder):
            return None
        try:
            manifest = check_entry(folder, self.fingerprints.file_digest if full else None)
        except DamagedEntry as damage:
            if on_damage is None:
                return None
            if not locked:
                with self.lock(key):  # another run may have quarantined and rebuilt it meanwhile: look again
                    return self.lookup(key, touch, full=full, on_damage=on_damage, locked=True)
            step = _step_of(folder)
            on_damage(key, step, damage.problems, self.quarantine(key, damage.problems))
            return None
        if touch:
            with contextlib.suppress(OSError):
                os.utime(folder / MANIFEST)
        return Artifact(manifest["kind"], folder / DATA, manifest["meta"], manifest["digest"], manifest["step"])

    def check(self, artifact: Artifact) -> list[str]:
        """Full check of an artifact in hand (its folder against its manifest); the problems, or []."""
        folder = artifact.path.parent
        try:
            manifest = read_manifest(folder)
        except DamagedEntry as damage:
            return damage.problems
        if manifest["digest"] != artifact.digest:
            return ["replaced by another artifact since it was looked up"]
        return check_files(folder, manifest, self.fingerprints.file_digest)

    @contextlib.contextmanager
    def lock(self, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the lock of `key`; `on_wait` is called once if another process holds it."""
        self.locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.locks / f"{key}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait:
                on_wait()
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def workdir(self, key: str) -> Iterator[Path]:
        """A fresh temporary folder for building `key` (call it holding the key's lock); removed on exit
        unless it was committed. Work on the same key left by dead processes is removed first."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        for stale in self.stale_work(key):
            shutil.rmtree(stale.path, ignore_errors=True)
        work = self.tmp / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        (work / DATA).mkdir(parents=True)
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def commit(self, key: str, work: Path, *, kind: str, step: str, pass_type: str, meta: dict[str, Any],
               key_parts: dict, on_damage: DamageReport | None = None) -> Artifact:
        """Write the manifest and move `work` into place with one rename (call it holding the key's lock).

        A folder already at the key that is not an intact artifact (left by an older version or damaged)
        is quarantined first; an intact one wins and ours is dropped.
        """
        hashed = {rel: (full, sha256_file(full)) for rel, full in iter_files(work / DATA)}
        files = {rel: {"sha256": sha, "size": full.stat().st_size} for rel, (full, sha) in hashed.items()}
        meta = json.loads(canonical_json(meta))  # must be JSON: fail here, not in a later run
        digest = artifact_digest(files, meta)
        manifest = {
            "format": 1, "key": key, "kind": kind, "step": step, "pass": pass_type, "created": time.time(),
            "meta": meta, "files": files, "digest": digest, "key_parts": key_parts,
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        final = self.artifacts / key
        self.artifacts.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(final):
            found = self.lookup(key, on_damage=on_damage or _ignore, locked=True)
            if found is not None:
                return found  # committed by a run that did not hold our lock (an older version): theirs wins
        os.rename(work, final)
        # the files were just hashed: remember their digests at their final path so that the full check of a
        # fresh artifact (as the next step's input) does not hash it all again
        for rel, (_, sha) in hashed.items():
            self.fingerprints.remember(final / DATA / rel, sha)
        found = self.lookup(key, locked=True)
        if found is None:
            raise OSError(f"the cache entry {final} was damaged while it was committed")
        return found

    def quarantine(self, key: str, problems: list[str]) -> Path:
        """Move a damaged entry aside to `quarantine/` (never deleted here) with a note of what was wrong."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        dest = self.quarantine_dir / quarantine_name(key)
        os.rename(self.artifacts / key, dest)
        if dest.is_dir():
            with contextlib.suppress(OSError):
                (dest / "QUARANTINED.txt").write_text(
                    f"moved here {time.strftime('%Y-%m-%d %H:%M:%S')} because:\n" + "\n".join(problems) + "\n")
        return dest

    # --- history (for plan's reasons) -------------------------------------------------------------

    def _history_file(self, workflow_id: str) -> Path:
        return self.history_dir / f"{hashlib.sha256(workflow_id.encode()).hexdigest()[:24]}.json"

    def history(self, workflow_id: str) -> dict[str, dict]:
        """The last key parts recorded for each step of a workflow file."""
        try:
            data = json.loads(self._history_file(workflow_id).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

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

    def keys(self) -> list[str]:
        """The names under `artifacts/`, sound or not."""
        return sorted(p.name for p in self.artifacts.iterdir()) if self.artifacts.is_dir() else []

    def entries(self) -> list[Entry]:
        """Every committed artifact whose manifest is sound, newest first (see `damaged` for the others)."""
        out = []
        for key in self.keys():
            folder = self.artifacts / key
            try:
                manifest = read_manifest(folder)
                last_used = (folder / MANIFEST).stat().st_mtime
            except (DamagedEntry, OSError):
                continue
            size = sum(f["size"] for f in manifest["files"].values())
            out.append(Entry(key, manifest["kind"], manifest["step"], str(manifest.get("pass", "?")), size,
                             manifest["created"], last_used))
        return sorted(out, key=lambda e: e.created, reverse=True)

    def damaged(self, full: bool = True) -> dict[str, list[str]]:
        """Every entry that must not be served, with its problems (a full check unless `full=False`)."""
        out = {}
        for key in self.keys():
            try:
                check_entry(self.artifacts / key, self.fingerprints.file_digest if full else None)
            except DamagedEntry as damage:
                out[key] = damage.problems
        return out

    def verify(self, key: str) -> list[str]:
        """Problems with one artifact: a bad manifest, missing, changed or extra files (empty when intact)."""
        try:
            check_entry(self.artifacts / key, sha256_file)  # not memoised: verify reads every byte
        except DamagedEntry as damage:
            return damage.problems
        return []

    def repair(self, key: str) -> Path | None:
        """Quarantine `key` if it is still damaged (under its lock); where it went, or None."""
        with self.lock(key):
            problems = self.verify(key) if os.path.lexists(self.artifacts / key) else []
            return self.quarantine(key, problems) if problems else None

    def remove(self, key: str) -> None:
        """Delete one artifact (renamed away first, so no reader sees a half-deleted folder)."""
        folder = self.artifacts / key
        if not os.path.lexists(folder):
            return
        self.tmp.mkdir(parents=True, exist_ok=True)
        doomed = self.tmp / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.deleting"
        os.rename(folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def drop_checkpoints(self, key: str) -> None:
        """Remove the checkpoints of `key` (once it is committed they can only be stale)."""
        shutil.rmtree(self.checkpoints / key, ignore_errors=True)

    def abandoned_checkpoints(self, older_than_seconds: float) -> list[Stale]:
        """Checkpoint folders no run will resume: their key is committed, or they were not written for
        `older_than_seconds`; those of a key being built (its lock held) are never listed."""
        if not self.checkpoints.is_dir():
            return []
        now, found = time.time(), []
        for folder in sorted(p for p in self.checkpoints.iterdir() if p.is_dir()):
            newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
            if not (os.path.lexists(self.artifacts / folder.name) or now - newest > older_than_seconds):
                continue
            lock = FileLock(str(self.locks / f"{folder.name}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # a run is training this key right now
            lock.release()
            found.append(Stale(folder, tree_size(folder)))
        return found

    def stale_work(self, key: str | None = None) -> list[Stale]:
        """Temporary folders (of `key`, or all) whose owning process is gone."""
        if not self.tmp.is_dir():
            return []
        found = [p for p in self.tmp.iterdir() if key is None or p.name.startswith(f"{key}.")]
        return [Stale(p, tree_size(p)) for p in sorted(found) if not _owner_alive(p.name)]

    def gc(self, older_than_seconds: float, dry_run: bool = False) -> tuple[list[Entry], int, list[Stale]]:
        """Drop artifacts not used for `older_than_seconds`, stale temporary folders and abandoned checkpoints.

        Returns (artifacts removed, their bytes, temporary and checkpoint folders removed); with `dry_run`, what
        would be.
        """
        now = time.time()
        removed = [e for e in self.entries() if now - e.last_used > older_than_seconds]
        stale = self.stale_work() + self.abandoned_checkpoints(older_than_seconds)
        if not dry_run:
            for entry in removed:
                with self.lock(entry.key):
                    self.remove(entry.key)
            for s in stale:
                shutil.rmtree(s.path, ignore_errors=True)
        return removed, sum(e.size for e in removed), stale

    def clear(self) -> None:
        """Remove every artifact and everything else the cache keeps (the marker stays)."""
        for sub in (self.artifacts, self.tmp, self.checkpoints, self.history_dir, self.locks, self.quarantine_dir):
            shutil.rmtree(sub, ignore_errors=True)
        self.fingerprints.close()
        with contextlib.suppress(FileNotFoundError):
            (self.root / "fingerprints.sqlite").unlink()


def _ignore(*_: Any) -> None:
    """A damage report that says nothing (the caller reports it its own way)."""


def _step_of(folder: Path) -> str:
    """The step named in a (possibly damaged) manifest, for messages; '?' when it cannot be read."""
    try:
        step = json.loads((folder / MANIFEST).read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return "?"
    return step if isinstance(step, str) else "?"


def tree_size(path: Path) -> int:
    """Bytes under a folder (or of a file), counting what can be read."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _owner_alive(tmp_name: str) -> bool:
    """Whether the process that created a `tmp/<key>.<pid>.<rand>` folder still runs (unknown owner: no)."""
    parts = tmp_name.split(".")
    if len(parts) < 3 or not parts[1].isdigit():
        return False
    try:
        return psutil.pid_exists(int(parts[1])) and psutil.Process(int(parts[1])).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
