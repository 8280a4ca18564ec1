"""Counts what the reliability tests tried and prints the totals at the end of the session."""

from __future__ import annotations

from tests.reliability.common import TALLY


def pytest_terminal_summary(terminalreporter):
    """One line: kills tried, corrupt entries tried, damaged entries served (must be 0)."""
    if TALLY:
        terminalreporter.write_line(
            f"reliability: {TALLY['kills']} kills tried, {TALLY['corrupt']} corrupt entries tried, "
            f"{TALLY['served']} damaged entries served, {TALLY['signals']} SIGINT/SIGTERM stops")
