"""Fixtures of the training tests."""

from __future__ import annotations

import signal

import pytest


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler for the test, whatever this process inherited: pytest started as a background
    job (`cmd &` in a shell without job control) ignores SIGINT, and Python then installs no handler that raises."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
