"""`pipeline cache ls / verify / gc / clear`: looking after the artifact cache from the command line.

Every action first makes sure the folder is a cache (its marker file, see `cache_check.claim_root`):
these commands delete folders, and must never delete a user's. An absent or empty folder has nothing
to do; any other folder is refused with exit 2. No action shows a traceback on a malformed entry.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .cache import Cache
from .render import format_age, format_size, table

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def run_cache_command(args: argparse.Namespace, out: Any, err: Any) -> int:
    """Run `pipeline cache ACTION`, printing to the `out` and `err` consoles; the exit code."""
    cache = Cache(args.cache_dir)
    if not cache.claim(create=False):
        out.print(f"no cache at {cache.root}: nothing to do", markup=False)
        return EXIT_OK
    action = {"ls": _cache_ls, "verify": _cache_verify, "gc": _cache_gc, "clear": _cache_clear}[args.cache_command]
    try:
        return action(cache, args, out, err)
    finally:
        cache.fingerprints.close()


def _cache_ls(cache: Cache, args: argparse.Namespace, out: Any, err: Any) -> int:
    entries = cache.entries()
    tbl = table(title=f"cache {cache.root}", title_justify="left")
    for col in ("key", "step", "type", "kind", "size", "created", "last used"):
        tbl.add_column(col)
    for e in entries:
        tbl.add_row(e.key[:12], e.step, e.pass_type, e.kind, format_size(e.size), format_age(e.created), format_age(e.last_used))
    out.print(tbl)
    out.print(f"{len(entries)} artifacts, {format_size(sum(e.size for e in entries))}", markup=False)
    broken = cache.damaged(full=False)
    if broken:
        out.print(f"{len(broken)} damaged entries (not listed, never served): `pipeline cache verify --repair` "
                  "moves them to quarantine/", style="yellow", markup=False)
    return EXIT_OK


def _cache_verify(cache: Cache, args: argparse.Namespace, out: Any, err: Any) -> int:
    keys = cache.keys()
    steps = {e.key: e.step for e in cache.entries()}
    bad = 0
    for key in keys:
        problems = cache.verify(key)
        if not problems:
            continue
        bad += 1
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        out.print(f"{key[:12]} {steps.get(key, '?')}: DAMAGED: {'; '.join(problems[:5])}{more}", style="red", markup=False)
        if args.repair:
            where = cache.repair(key)
            if where:
                out.print(f"  moved to {where}: the next run rebuilds it", markup=False)
    out.print(f"{len(keys)} artifacts checked, {bad} damaged", markup=False)
    if bad and not args.repair:
        out.print("run `pipeline cache verify --repair` to move them to quarantine/ (the next run rebuilds them)",
                  markup=False)
    return EXIT_FAILED if bad and not args.repair else EXIT_OK


def _cache_gc(cache: Cache, args: argparse.Namespace, out: Any, err: Any) -> int:
    removed, size, stale = cache.gc(args.older_than, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    checkpoints = [s for s in stale if s.path.parent == cache.checkpoints]
    work = [s for s in stale if s.path.parent != cache.checkpoints]
    for e in removed:
        out.print(f"{verb} {e.key[:12]} {e.step} ({format_size(e.size)}, last used {format_age(e.last_used)})", markup=False)
    for s in work:
        out.print(f"{verb} {s.path} ({format_size(s.size)}, work of a run that is gone)", markup=False)
    for s in checkpoints:
        out.print(f"{verb} {s.path} ({format_size(s.size)}, training checkpoints no run will resume)", markup=False)
    out.print(f"{verb} {len(removed)} artifacts, {format_size(size)}; {len(work)} abandoned temporary folders, "
              f"{format_size(sum(s.size for s in work))}"
              + (f"; {len(checkpoints)} abandoned checkpoint folders, {format_size(sum(s.size for s in checkpoints))}"
                 if checkpoints else ""), markup=False)
    return EXIT_OK


def _cache_clear(cache: Cache, args: argparse.Namespace, out: Any, err: Any) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            err.print("refusing to empty the cache without --yes", markup=False)
            return EXIT_INVALID
        if input(f"empty the cache at {cache.root}? [y/N] ").strip().lower() != "y":
            return EXIT_OK
    cache.clear()
    out.print(f"emptied {cache.root}", markup=False)
    return EXIT_OK
