"""What a run shows: one line per step as it starts and ends, progress bars, and the run log file.

On a terminal, long work gets a rich progress bar; elsewhere (CI logs, pipes) it prints a line at
every tenth of the way, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunConsole:
    """The run's output: console (stderr) and an optional log file with the same lines."""

    def __init__(self, log_file: Path | None = None, quiet: bool = False, stream: TextIO | None = None):
        self.console = Console(file=stream or sys.stderr, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self._log: TextIO | None = None
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_file, "a", encoding="utf-8")

    def write_log(self, text: str) -> None:
        """Append to the log file only."""
        if self._log:
            self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            self._log.flush()

    def line(self, text: str, style: str | None = None) -> None:
        """A line on the console and in the log."""
        self.write_log(text)
        if not self.quiet:
            self.console.print(text, style=style, markup=False)

    def progress(self, total: float | None, description: str) -> "BarHandle":
        """A progress handle: a live bar on a terminal, periodic lines elsewhere."""
        return BarHandle(self, total, description)

    def close(self) -> None:
        """Close the log file."""
        if self._log:
            self._log.close()
            self._log = None


class BarHandle:
    """A progress bar for one piece of long work (implements passes.base.Progress)."""

    def __init__(self, owner: RunConsole, total: float | None, description: str):
        self.owner, self.total, self.description = owner, total, description
        self.completed = 0.0
        self.fields: dict[str, Any] = {}
        self._bar: Progress | None = None
        self._task = None
        self._next_report = 1  # in tenths of the total
        self._started = time.monotonic()

    def __enter__(self) -> "BarHandle":
        if self.owner.console.is_terminal and not self.owner.quiet:
            self._bar = Progress(
                TextColumn("      {task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.owner.console, transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, info="")
        return self

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
            self.owner.line(f"      {self.description}: {pct}% ({self.completed:g}/{self.total:g}) {self._info()}".rstrip())
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
        self.owner.write_log(f"      {self.description}: done {self.completed:g} in {elapsed:.1f} s {self._info()}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
