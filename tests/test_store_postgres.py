"""What only the PostgreSQL store has (schema migrations, the database going away, choosing a
backend by URL) and the Python mirror of the core's checks, held to the core itself.

The shared behaviour of both backends is tested by the parametrized store tests
(test_store_api.py, test_store_model.py, test_store_concurrency.py, test_store_crash.py).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from support import POSTGRES_URL, create_pg_schema, drop_pg_schema
from threadloom import Store
from threadloom.errors import InvalidInput, LimitExceeded, StoreFormatError, StoreUnavailable
from threadloom.storage import describe, is_postgres_url, open_store

pytest.importorskip("psycopg")
from threadloom import _core
from threadloom.pgstore import PostgresStore
from threadloom.pgstore.schema import LATEST

needs_postgres = pytest.mark.skipif(
    POSTGRES_URL is None, reason="THREADLOOM_TEST_POSTGRES_URL is not set"
)


@pytest.fixture
def schema_url() -> Iterator[str]:
    assert POSTGRES_URL is not None
    schema, url = create_pg_schema(POSTGRES_URL)
    yield url
    drop_pg_schema(POSTGRES_URL, schema)


# ---- choosing the backend ----------------------------------------------------------------------


def test_open_store_picks_the_backend_by_spec(tmp_path: Path) -> None:
    lmdb = open_store(tmp_path / "store")
    assert isinstance(lmdb, Store)
    assert open_store(lmdb) is lmdb
    assert is_postgres_url("postgresql://h/db") and is_postgres_url("postgres://h/db")
    assert not is_postgres_url("./postgresql") and not is_postgres_url(tmp_path)
    with pytest.raises(InvalidInput, match="LMDB stores only"):
        open_store("postgresql://127.0.0.1:1/db", map_size=1 << 20)


def test_urls_are_logged_without_password() -> None:
    assert describe("postgresql://app:s3cret@db.internal:5432/threadloom") == (
        "postgresql://app:***@db.internal:5432/threadloom"
    )
    assert describe("postgresql://app@db/x") == "postgresql://app@db/x"
    assert describe("./data") == "./data"


def test_unreachable_database_is_unavailable_not_a_hang() -> None:
    began = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unavailable"):
        PostgresStore("postgresql://nobody@127.0.0.1:1/db?pool_timeout=1")
    assert time.monotonic() - began < 10


@needs_postgres
def test_store_url_options(schema_url: str) -> None:
    with PostgresStore(f"{schema_url}&pool_size=2&pool_timeout=0.5") as s:
        assert s.stats()["threads"] == 0
    with pytest.raises(InvalidInput, match="pool_size"):
        PostgresStore(f"{schema_url}&pool_size=many")


def test_an_unavailable_store_is_a_503() -> None:
    from threadloom.server.middleware import to_api_error

    error = to_api_error(StoreUnavailable("the PostgreSQL store at postgresql://db is unavailable"))
    assert (error.status, error.code, error.type) == (503, "store_unavailable", "server_error")
    assert error.headers == {"Retry-After": "1"}
    assert "db" not in error.message  # where the database is stays in the log


# ---- schema migrations -------------------------------------------------------------------------


@needs_postgres
def test_schema_is_versioned_and_a_newer_one_refused(schema_url: str) -> None:
    import psycopg

    with PostgresStore(schema_url) as s:
        assert s.format_version == 7
        s.create_thread("t")
    with psycopg.connect(schema_url, autocommit=True) as conn:
        rows = conn.execute("SELECT version, description FROM threadloom_schema").fetchall()
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
        conn.execute("INSERT INTO threadloom_schema (version, description) VALUES (8, 'future')")
    with pytest.raises(StoreFormatError, match=r"schema version 8.*up to 7"):
        PostgresStore(schema_url)
    with psycopg.connect(schema_url, autocommit=True) as conn:
        conn.execute("DELETE FROM threadloom_schema WHERE version = 8")
    # The refused open changed nothing.
    with PostgresStore(schema_url) as s:
        assert [t.id for t in s.list_threads().threads] == ["t"]


@needs_postgres
def test_servers_starting_together_migrate_once(schema_url: str) -> None:
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        barrier.wait()
        try:
            opened.append(PostgresStore(schema_url))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    try:
        assert {s.format_version for s in opened} == {LATEST}
        opened[0].create_thread("shared")
        assert opened[-1].get_thread("shared").id == "shared"
    finally:
        for s in opened:
            s.close()


@needs_postgres
def test_servers_recording_branches_of_one_thread_lose_none(schema_url: str) -> None:
    """Two servers (two stores on one database) record branches of one thread at once, each
    replacing its own earlier record: every live branch is kept, none overwritten."""
    servers = [PostgresStore(schema_url), PostgresStore(schema_url)]
    try:
        servers[0].create_thread("t")
        kept: list[list[str]] = [[], []]

        def record(i: int) -> None:
            previous: list[str] = []
            for _ in range(15):
                rid = _core.new_response_id()
                servers[i].add_branch("t", rid, replaces=previous)
                previous = [rid]
            kept[i] = previous

        threads = [threading.Thread(target=record, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(servers[1].branches("t")) == sorted((r, None) for r in kept[0] + kept[1])
    finally:
        for s in servers:
            s.close()


@needs_postgres
def test_closed_store_says_so(schema_url: str) -> None:
    s = PostgresStore(schema_url)
    s.close()
    with pytest.raises(Exception, match="closed"):
        s.create_thread("t")


# ---- the Python checks agree with the core's ---------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e16, 1e15, 1.5e-7, 1e-5, 0.0001, -0.0, 123456789.0, 1e300, 5e-324])
    | st.text(max_size=8)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)
metadata_texts = (
    st.dictionaries(st.text(max_size=6), json_value, max_size=4).map(json.dumps)
    | st.sampled_from(
        [
            "{}",
            ' { "a" : 1 , "a" : 2 } ',
            '{"z": 1, "a": 2}',
            '{"x": 1e400}',
            '{"x": NaN}',
            '{"x": 1} trailing',
            '{"s": "\\ud800"}',
            '{"s": "\\u0000\\u001f\\u007f\\u2028"}',
            '{"n": -0, "m": 1E2, "k": 10000000000000000000000}',
            "[1]",
            "",
            "{",
            '{"deep": ' + "[" * 126 + "]" * 126 + "}",
            '{"deep": ' + "[" * 127 + "]" * 127 + "}",
            '{"n": 12345678901234567.0, "m": 0.1e-400, "k": 1e-400, "j": 0e99999999999}',
            '{"n": 123456789012345678901234567890.123, "m": -18446744073709551616}',
            '{"n": 1.00000000000000000000000000001, "m": -9223372036854775808}',
        ]
    )
    | st.text(max_size=12)
)


@pytest.fixture(scope="module")
def core_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("core") / "store")


_names = (f"t{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def pg(core_store: Store) -> Iterator[PostgresStore]:
    if POSTGRES_URL is None:
        pytest.skip("THREADLOOM_TEST_POSTGRES_URL is not set")
    schema, url = create_pg_schema(POSTGRES_URL)
    with PostgresStore(url) as store:
        yield store
    drop_pg_schema(POSTGRES_URL, schema)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=metadata_texts)
def test_metadata_is_stored_as_the_core_stores_it(
    core_store: Store, pg: PostgresStore, text: str
) -> None:
    """The same text comes back the same (or is refused the same way) from both stores."""
    results: list[Any] = []
    for store in (core_store, pg):
        try:
            results.append(store.create_thread(next(_names), metadata=text).metadata_json)
        except (InvalidInput, LimitExceeded) as e:
            results.append(type(e))
    assert results[0] == results[1]


@given(bits=st.binary(min_size=16, max_size=16))
def test_turn_ids_round_trip(bits: bytes) -> None:
    turn_id = _core.turn_id_string(bits)
    assert _core.parse_turn_id(turn_id) == bits
    assert _core.parse_turn_id(turn_id.upper().replace("MSG_", "msg_")) == bits


def test_turn_keys_grow_along_a_conversation() -> None:
    parent = _core.new_turn_key(1_000, None)
    child = _core.new_turn_key(999, parent)  # a clock behind the parent's still sorts after it
    assert child > parent
    assert int.from_bytes(child, "big") >> 80 == 1_001
