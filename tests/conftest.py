"""Fixtures for the threadloom test suite."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
import threadloom


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_path: Path) -> Iterator[threadloom.Store]:
    """A fresh store with default settings. It closes when the last reference goes away."""
    s = threadloom.Store(store_path)
    yield s
    del s
    gc.collect()
