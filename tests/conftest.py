"""Fixtures for the threadloom test suite.

The store fixtures are parametrized over the two backends: `lmdb` (a directory) and `postgres`
(a fresh schema in the server that THREADLOOM_TEST_POSTGRES_URL names; skipped when unset).
Tests that exercise what only LMDB has (its files, map size, on-disk layout) build
`threadloom.Store` themselves and carry the `lmdb_only` marker.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import threadloom
from support import BACKENDS, POSTGRES_URL, MakeStore, create_pg_schema, drop_pg_schema
from threadloom.storage import close_store, open_store


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lmdb_only: tests LMDB specifics (files, map size, layout); no PostgreSQL run"
    )


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_spec(backend: str, store_path: Path) -> Iterator[str]:
    """Where the backend under test keeps this test's store: the LMDB directory, or the URL of
    a new PostgreSQL schema (dropped afterwards)."""
    if backend == "lmdb":
        yield str(store_path)
        return
    assert POSTGRES_URL is not None
    schema, url = create_pg_schema(POSTGRES_URL)
    try:
        yield url
    finally:
        drop_pg_schema(POSTGRES_URL, schema)


@pytest.fixture
def make_store(store_spec: str) -> Iterator[MakeStore]:
    """Opens (or reopens) this test's store; keyword arguments go to the store (retention, and
    for LMDB map sizes). Stores still open at the end are closed."""
    opened: list[Any] = []

    def make(**kwargs: Any) -> threadloom.Store:
        s = open_store(store_spec, **kwargs)
        # An LMDB store closes when the test drops it (tests reopen the path after `del`);
        # a PostgreSQL store holds a connection pool until closed.
        if not isinstance(s, threadloom.Store):
            opened.append(s)
        return s

    yield make
    for s in opened:
        close_store(s)
    opened.clear()
    gc.collect()


@pytest.fixture
def store(make_store: MakeStore) -> threadloom.Store:
    """A fresh store with default settings, of the backend under test."""
    return make_store()
