"""Shared pytest helpers for the fastdiffeq test suite (CPU only)."""

from __future__ import annotations

import contextlib

import pytest
import torch


@contextlib.contextmanager
def num_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def single_thread():
    """Run a test with one intra-op thread.

    The vector fields in the F1 suite are tiny: intra-op threads only add spin and contention (on a loaded
    2-core machine a 256x64 MLP evaluation went from ~0.5 ms to ~45 ms with 2 threads). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``; tests of the kernels' parallel paths set
    2 threads themselves.
    """
    with num_threads(1):
        yield
