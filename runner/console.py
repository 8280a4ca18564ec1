"""What a run shows: one line per step as it starts and ends, progress bars, and the run log file.

On a terminal, long work gets a rich progress bar; elsewhere (CI logs, pipes) it prints a line at
every tenth of the way, so logs stay readable. Amounts are written as people read them: byte counts
(`unit="B"`) as `86.7 MB / 87.4 MB`, whole counts as `120/300`, never `9.09188e+07`.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from .render import format_size

#: The unit a progress total counts in when it is bytes (downloads, copies).
BYTES = "B"


class RunConsole:
    """The run's output: console (stderr) and an optional log file with the same lines."""

    def __init__(self, log_file: Path | None = None, quiet: bool = False, stream: TextIO | None = None):
        self.console = Console(file=stream or sys.stderr, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self._lock = threading.RLock()  # with --jobs, several steps' threads write lines at once
        self._log: TextIO | None = None
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_file, "a", encoding="utf-8")

    def write_log(self, text: str) -> None:
        """Append to the log file only."""
        with self._lock:
            self._write_log(text)

    def _write_log(self, text: str) -> None:
        if self._log:
            try:
                self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
                self._log.flush()
            except OSError as exc:  # a full disk must not turn every later line into a traceback
                log, self._log = self._log, None
                with contextlib.suppress(OSError):
                    log.close()
                self.console.print(f"the run log stopped: {exc.strerror or exc}", style="red", markup=False)

    def line(self, text: str, style: str | None = None) -> None:
        """A line on the console and in the log."""
        with self._lock:
            self.write_log(text)
            if not self.quiet:
                self.console.print(text, style=style, markup=False)

    def progress(self, total: float | None, description: str, unit: str | None = None) -> "BarHandle":
        """A progress handle: a live bar on a terminal, periodic lines elsewhere; `unit="B"` for byte counts."""
        return BarHandle(self, total, description, unit)

    def close(self) -> None:
        """Close the log file."""
        if self._log:
            with contextlib.suppress(OSError):  # flushing the last lines on a full disk
                self._log.close()
            self._log = None


class BarHandle:
    """A progress bar for one piece of long work (implements passes.base.Progress)."""

    def __init__(self, owner: RunConsole, total: float | None, description: str, unit: str | None = None):
        self.owner, self.total, self.description, self.unit = owner, total, description, unit
        self.completed = 0.0
        self.fields: dict[str, Any] = {}
        self._bar: Progress | None = None
        self._task = None
        self._next_report = 1  # in tenths of the total
        self._started = time.monotonic()

    def __enter__(self) -> "BarHandle":
        if self.owner.console.is_terminal and not self.owner.quiet:
            self._bar = Progress(
                TextColumn("      {task.description}"), BarColumn(),
                DownloadColumn(binary_units=True) if self.unit == BYTES else MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.owner.console, transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, info="")
        return self

    def _done_of_total(self) -> str:
        """`120/300`, or `86.7 MB / 87.4 MB` for bytes (spaces around the slash: the sizes have their own)."""
        done, total = _amount(self.completed, self.unit), _amount(self.total or 0, self.unit)
        return f"{done} / {total}" if self.unit == BYTES else f"{done}/{total}"

    def _info(self) -> str:
        return " ".join(f"{k}={_fmt(v)}" for k, v in self.fields.items())

    def advance(self, n: float = 1, **fields: Any) -> None:
        """Move on by `n`; keyword fields (loss=0.31) are shown beside the bar."""
        self.completed += n
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.update(self._task, advance=n, info=self._info())
        elif self.total and int(10 * self.completed / self.total) >= self._next_report:
            pct = int(100 * self.completed / self.total)
            self.owner.line(f"      {self.description}: {pct}% ({self._done_of_total()}) {self._info()}".rstrip())
            self._next_report = int(10 * self.completed / self.total) + 1

    def update(self, *, total: float | None = None, description: str | None = None, **fields: Any) -> None:
        """Change the total, the description or the shown fields."""
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.update(self._task, total=self.total, description=self.description, info=self._info())

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
        elapsed = time.monotonic() - self._started
        self.owner.write_log(f"      {self.description}: done {_amount(self.completed, self.unit)} in {elapsed:.1f} s {self._info()}")


def _amount(value: float, unit: str | None) -> str:
    """A progress amount: a size for bytes, a whole number without an exponent, else 4 significant digits."""
    if unit == BYTES:
        return format_size(value)
    return f"{int(value)}" if float(value).is_integer() else f"{value:.4g}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
