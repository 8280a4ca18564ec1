"""Small helpers that show things to people: sizes, ages, durations, and rich consoles made on first use.

Nothing here imports rich at module level: the CLI imports this module for every command, and `--help`
must answer without it.
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any


class LazyConsole:
    """A rich Console made on first use, so that `--help` and argument errors never import rich."""

    def __init__(self, **options: Any):
        self._options, self._console = options, None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


def table(**options: Any) -> Any:
    """A rich Table (rich is imported only by the commands that draw one)."""
    from rich.table import Table

    return Table(**options)


def format_size(n: float) -> str:
    """A byte count as people read it: `512 B`, `86.7 MB` (steps of 1024, as `du -h` and file managers)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_age(ts: float) -> str:
    """How long ago a timestamp was: `3d ago`, `5h ago`, `12s ago`."""
    s = max(0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def duration_seconds(text: str) -> float:
    """`30d`, `12h`, `15m`, `0s`, `2w` (a bare number is days) in seconds; a bad one is an argument error."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 30d, 12h, 0s)")
    return float(match.group(1)) * {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
