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


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the tiny models gain nothing from more, a busy machine makes OpenMP threads
    wait on each other, and one thread sums in one order (as the subprocesses get it, OMP_NUM_THREADS=1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
