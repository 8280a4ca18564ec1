"""SIGTERM handled like Ctrl-C: what Docker, Kubernetes, Azure ML and CI send first gets a clean stop.

The handler raises `Terminated`, a KeyboardInterrupt, so every `except KeyboardInterrupt` that cleans
up after Ctrl-C (temporary folders, `run.json` with status `interrupted`) does the same for SIGTERM;
the command then exits 143 (128 + 15) instead of 130.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

#: Exit codes of a run stopped by a signal: 128 + the signal's number, as shells report it.
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _on_sigterm(signum, frame) -> None:
    # the clean stop runs once: a second SIGTERM must not cut the cleanup of the first one short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (only the main thread can install a handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code_for(exc: BaseException) -> int:
    """143 for SIGTERM, 130 for Ctrl-C."""
    return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT
