"""Shared fixtures: the repository root and the library files."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_cpu_thread():
    """Tiny networks gain nothing from threads, and oversubscribed cores (parallel test runs)
    slow multi-threaded torch down many times."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def schedule_library() -> dict:
    from diffobj.objectives import schedules

    return schedules.load_library(ROOT / "config" / "schedules.yaml")


@pytest.fixture
def weighting_library() -> dict:
    from diffobj.objectives import weightings

    return weightings.load_library(ROOT / "config" / "weightings.yaml")
