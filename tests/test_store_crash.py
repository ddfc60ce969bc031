"""Crash safety and the documented on-disk layout.

A child process appends turns and prints each acknowledged append; the test SIGKILLs it mid-run.
Every acknowledged turn must then be in the store, the store must be consistent, and an
independent reader (the `lmdb` package, in another process, written from docs/storage.md only)
must find exactly the documented layout.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
from support import (
    BACKENDS,
    POSTGRES_URL,
    MakeStore,
    child_env,
    create_pg_schema,
    drop_pg_schema,
    helper_command,
    msgs,
    run_helper,
)
from threadloom import ResponseInfo, Store
from threadloom.errors import StoreFormatError
from threadloom.storage import close_store, open_store

ACKS_BEFORE_KILL = 200


def run_and_kill(path: Path | str, acks_wanted: int, *args: str) -> list[dict[str, Any]]:
    """Starts the child, reads `acks_wanted` acknowledgements, SIGKILLs it, returns the acks."""
    child = subprocess.Popen(
        helper_command("crash_child.py", str(path), *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    acks: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    try:
        assert child.stdout is not None
        while len(acks) < acks_wanted:
            line = child.stdout.readline()
            if not line:
                stderr = child.stderr.read() if child.stderr else ""
                raise AssertionError(f"child exited early ({child.wait()}): {stderr}")
            acks.append(json.loads(line))
            assert time.monotonic() < deadline, "child too slow"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdout:
            child.stdout.close()
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return acks


@pytest.fixture(scope="module", params=BACKENDS)
def killed_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A store (LMDB path or PostgreSQL URL) whose writer was SIGKILLed, and its acks."""
    if request.param == "lmdb":
        # The very store the layout test reads (which runs first, before this one appends).
        yield request.getfixturevalue("killed_lmdb")
        return
    assert POSTGRES_URL is not None
    schema, url = create_pg_schema(POSTGRES_URL)
    try:
        yield url, run_and_kill(url, ACKS_BEFORE_KILL)
    finally:
        drop_pg_schema(POSTGRES_URL, schema)


@pytest.fixture(scope="module")
def killed_lmdb(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict[str, Any]]]:
    path = tmp_path_factory.mktemp("crash") / "store"
    return str(path), run_and_kill(path, ACKS_BEFORE_KILL)


@pytest.mark.lmdb_only
def test_independent_reader_sees_the_documented_layout(
    killed_lmdb: tuple[str, list[dict[str, Any]]],
) -> None:
    # Runs first, on the store exactly as the killed child left it.
    path, acks = killed_lmdb
    dump = json.loads(run_helper("read_layout.py", str(path)).stdout)

    assert dump["meta"] == {
        "format": "threadloom-store",
        "version": 1,
        "version_bytes": (1).to_bytes(4, "little").hex(),
    }
    for name in (
        "meta",
        "turns",
        "turn_refs",
        "threads",
        "thread_activity",
        "responses",
        "token_counts",
    ):
        assert name in dump["databases"]

    turns = {t["id"]: t for t in dump["turns"]}
    # Every acknowledged turn is there with the documented fields.
    for ack in acks:
        for want in ack["turns"]:
            got = turns[want["id"]]
            for field in ("parent", "owner", "role", "content", "reasoning", "tool"):
                assert got[field] == want.get(field), (field, got, want)
    # Depths follow parents; roots have depth 1.
    for t in turns.values():
        if t["parent"] is None:
            assert t["depth"] == 1
        else:
            assert t["depth"] == turns[t["parent"]]["depth"] + 1
        assert t["created_ms"] > 1_600_000_000_000

    # Threads are JSON records keyed owner NUL id, with the documented fields.
    threads = {(t["owner"], t["id"]): t for t in dump["threads"]}
    assert set(threads) == {("default", "crash"), ("tenant-b", "other-tenant")}
    for t in threads.values():
        assert set(t) == {
            "id",
            "owner",
            "head",
            "metadata",
            "state",
            "visible",
            "created_ms",
            "last_activity_ms",
            "message_count",
        }
        assert t["state"] == "open" and t["visible"] is True and json.loads(t["metadata"]) == {}
        assert turns[t["head"]]["depth"] == t["message_count"]
    last_ack_of = {ack["owner"]: ack for ack in acks if ack["thread"]}
    for owner, ack in last_ack_of.items():
        head = threads[(owner, ack["thread"])]["head"]
        # The head is the last acknowledged turn or a later one the child did not get to print.
        chain = []
        while head is not None:
            chain.append(head)
            head = turns[head]["parent"]
        assert ack["turns"][-1]["id"] in chain

    # The activity index has one entry per thread, matching its record.
    assert sorted(
        (a["owner"], a["id"], a["visible"], a["last_activity_ms"]) for a in dump["thread_activity"]
    ) == sorted(
        (t["owner"], t["id"], t["visible"], t["last_activity_ms"]) for t in threads.values()
    )

    # Responses are JSON keyed by id; every acknowledged one is there.
    responses = {r["id"]: r for r in dump["responses"]}
    for ack in acks:
        r = responses[ack["response"]]
        assert r["last_turn"] == ack["turns"][-1]["id"]
        assert r["owner"] == ack["owner"]
        assert set(r["usage"]) == {"prompt_tokens", "completion_tokens", "cached_tokens"}

    # Reference counts: children plus threads and responses pointing at a turn.
    expected: dict[str, int] = dict.fromkeys(turns, 0)
    for t in turns.values():
        if t["parent"] is not None:
            expected[t["parent"]] += 1
    for t in threads.values():
        expected[t["head"]] += 1
    for r in responses.values():
        expected[r["last_turn"]] += 1
    assert all(n > 0 for n in expected.values()), "unreachable turns"
    assert dump["turn_refs"] == expected
    assert dump["token_counts"] == 0


def test_acknowledged_turns_survive_sigkill(
    killed_store: tuple[str, list[dict[str, Any]]],
) -> None:
    spec, acks = killed_store
    store = open_store(spec)
    store.verify()
    thread_history = {t.id: t for t in store.history(thread="crash")}
    other_history = {t.id: t for t in store.history(owner="tenant-b", thread="other-tenant")}
    for ack in acks:
        response = store.get_response(ack["response"], owner=ack["owner"])
        assert response.last_turn == ack["turns"][-1]["id"]
        history = store.history(owner=ack["owner"], turn=ack["turns"][-1]["id"])
        by_id = {t.id: t for t in history}
        for want in ack["turns"]:
            got = by_id[want["id"]]
            assert (got.parent_id, got.role, got.content, got.reasoning) == (
                want["parent"],
                want["role"],
                want["content"],
                want["reasoning"],
            )
        if ack["thread"] == "crash":
            assert all(t["id"] in thread_history for t in ack["turns"])
        elif ack["thread"] == "other-tenant":
            assert all(t["id"] in other_history for t in ack["turns"])
    # The store keeps working after the crash.
    store.append(msgs("after the crash"), thread="crash")
    store.verify()
    close_store(store)
    del store
    gc.collect()


def test_kill_twice_then_continue(store_spec: str, make_store: MakeStore) -> None:
    first = run_and_kill(store_spec, 20)
    second = run_and_kill(store_spec, 20)
    store = make_store()
    store.verify()
    ids = {t.id for t in store.history(thread="crash")}
    for ack in first + second:
        if ack["thread"] == "crash":
            assert {t["id"] for t in ack["turns"]} <= ids


@pytest.mark.lmdb_only
def test_sigkill_during_group_commits(tmp_path: Path) -> None:
    """Several writer threads share commits; every acknowledged write survives a SIGKILL."""
    path = tmp_path / "store"
    acks = run_and_kill(path, ACKS_BEFORE_KILL, "4")
    assert len({ack["thread"] for ack in acks}) == 4
    store = Store(path)
    store.verify()
    histories = {
        name: {t.id: t for t in store.history(thread=name)} for name in {a["thread"] for a in acks}
    }
    for ack in acks:
        history = histories[ack["thread"]]
        for want in ack["turns"]:
            got = history[want["id"]]
            assert (got.parent_id, got.content) == (want["parent"], want["content"])
        assert store.get_response(ack["response"]).last_turn == ack["turns"][-1]["id"]
    for name, history in histories.items():
        assert store.get_thread(name).message_count == len(history)
    del store
    gc.collect()
    dump = json.loads(run_helper("read_layout.py", str(path)).stdout)
    turns = {t["id"] for t in dump["turns"]}
    assert all(t["id"] in turns for ack in acks for t in ack["turns"])


# ---- format version -----------------------------------------------------------------------------


def make_store(path: Path) -> None:
    s = Store(path)
    s.create_thread("t")
    s.append(msgs("q", "a"), thread="t", response=ResponseInfo("m"))
    del s
    gc.collect()


def set_meta(path: Path, key: bytes, value: bytes | None) -> None:
    env = lmdb.open(str(path), max_dbs=16)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin(write=True, db=meta) as txn:
            if value is None:
                txn.delete(key)
            else:
                txn.put(key, value)
    finally:
        env.close()


@pytest.mark.lmdb_only
@pytest.mark.parametrize("version", [0, 2, 99])
def test_unknown_format_version_is_refused(tmp_path: Path, version: int) -> None:
    path = tmp_path / "store"
    make_store(path)
    set_meta(path, b"version", version.to_bytes(4, "little"))
    with pytest.raises(StoreFormatError, match=f"format version {version}.*reads version 1"):
        Store(path)
    # Nothing was changed by the refused open.
    set_meta(path, b"version", (1).to_bytes(4, "little"))
    s = Store(path)
    assert s.format_version == 1
    assert len(s.history(thread="t")) == 2


@pytest.mark.lmdb_only
@pytest.mark.parametrize("value", [None, b"\x01\x00", b"\x01\x00\x00\x00\x00"])
def test_missing_or_malformed_version_is_refused(tmp_path: Path, value: bytes | None) -> None:
    path = tmp_path / "store"
    make_store(path)
    set_meta(path, b"version", value)
    with pytest.raises(StoreFormatError, match="format version unknown"):
        Store(path)


@pytest.mark.lmdb_only
def test_foreign_lmdb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store"
    make_store(path)
    set_meta(path, b"format", b"someone-elses-store")
    with pytest.raises(StoreFormatError, match="not a threadloom store"):
        Store(path)
