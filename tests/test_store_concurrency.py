"""Concurrent writers: Python threads (the store releases the GIL) and separate processes.

No acknowledged turn may be lost or duplicated, message counts must equal what was written, the
10,000-message limit must hold under a race, and the store must verify afterwards.
"""

from __future__ import annotations

import gc
import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support import MakeStore, child_env, helper_command, msg
from threadloom import ResponseInfo, Store
from threadloom.errors import LimitExceeded, NotFound, StateConflict, StoreFull

MAX_MESSAGES = 10_000
WORKERS = 4


def run_threads(n: int, work: Callable[[int, threading.Barrier], list[str]]) -> list[list[str]]:
    """Runs `work(i, barrier)` on n threads that start together; returns their results."""
    barrier = threading.Barrier(n)
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(work, i, barrier) for i in range(n)]
        return [f.result(timeout=120) for f in futures]


def assert_order_kept(history_ids: list[str], written: list[str]) -> None:
    """One writer's turns appear in the history in the order it wrote them."""
    position = {turn_id: i for i, turn_id in enumerate(history_ids)}
    positions = [position[t] for t in written]
    assert positions == sorted(positions)


# ---- threads ------------------------------------------------------------------------------------


def test_threads_append_to_different_threads(store: Store) -> None:
    for i in range(WORKERS):
        store.create_thread(f"t{i}")

    def work(i: int, barrier: threading.Barrier) -> list[str]:
        barrier.wait()
        ids: list[str] = []
        for k in range(30):
            a = store.append([msg(f"{i}-{k}-q"), msg(f"{i}-{k}-a", "assistant")], thread=f"t{i}")
            ids.extend(a.turn_ids)
        return ids

    results = run_threads(WORKERS, work)
    for i, written in enumerate(results):
        history = store.history(thread=f"t{i}")
        assert [t.id for t in history] == written
        assert [t.content for t in history] == [
            f"{i}-{k}-{x}" for k in range(30) for x in ("q", "a")
        ]
        assert store.get_thread(f"t{i}").message_count == 60
    assert store.stats()["turns"] == WORKERS * 60
    store.verify()


def test_threads_append_to_the_same_thread(store: Store) -> None:
    store.create_thread("shared")

    def work(i: int, barrier: threading.Barrier) -> list[str]:
        barrier.wait()
        ids: list[str] = []
        for k in range(40):
            turns = [msg(f"{i}-{k}-{j}") for j in range(1 + k % 3)]
            ids.extend(store.append(turns, thread="shared").turn_ids)
        return ids

    results = run_threads(WORKERS, work)
    written = [t for ids in results for t in ids]
    assert len(written) == len(set(written))
    history = store.history(thread="shared")
    history_ids = [t.id for t in history]
    assert Counter(history_ids) == Counter(written)  # none lost, none duplicated
    assert store.get_thread("shared").message_count == len(written)
    assert [t.depth for t in history] == list(range(1, len(written) + 1))
    for ids in results:
        assert_order_kept(history_ids, ids)
    # Each append's turns stay together: the batch is one transaction.
    contents = [t.content for t in history]
    for i in range(WORKERS):
        for k in range(40):
            n = 1 + k % 3
            start = contents.index(f"{i}-{k}-0")
            assert contents[start : start + n] == [f"{i}-{k}-{j}" for j in range(n)]
    store.verify()


def test_threads_branch_read_and_delete_concurrently(store: Store) -> None:
    store.create_thread("trunk")
    base = store.append([msg("root")], thread="trunk", response=ResponseInfo("m", output_count=0))
    assert base.response is not None
    anchor = base.response.id
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                h = store.history(thread="trunk")
                assert [t.depth for t in h] == list(range(1, len(h) + 1))
                store.list_threads()
                store.stats()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def work(i: int, barrier: threading.Barrier) -> list[str]:
        barrier.wait()
        mine: list[str] = []
        for k in range(15):
            if i % 2 == 0:
                a = store.append([msg(f"{i}-{k}")], thread="trunk", response=ResponseInfo("m"))
            else:
                a = store.append(
                    [msg(f"{i}-{k}"), msg("reply", "assistant")],
                    previous_response_id=anchor,
                    response=ResponseInfo("m"),
                )
            assert a.response is not None
            mine.append(a.response.id)
            if k % 3 == 0:
                store.delete_response(mine.pop(0))
        return mine

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for r in readers:
        r.start()
    try:
        results = run_threads(WORKERS, work)
    finally:
        stop.set()
        for r in readers:
            r.join()
    assert not errors, errors
    live = [rid for ids in results for rid in ids]
    assert store.stats()["responses"] == len(live) + 1
    for rid in live:
        assert store.history(response=rid)[0].content == "root"
    assert store.get_thread("trunk").message_count == 1 + 15 * (WORKERS // 2)
    store.verify()


def test_gil_is_released_during_writes(store: Store) -> None:
    """While one thread is inside a long write, Python code in another thread keeps running.

    The main thread records a timestamp on every turn of its loop; the writer records when each
    append started and returned. Were the GIL held through the write, at most about one
    main-thread timestamp would fall inside each append (where the writer's bytecode yields the
    GIL just before the call); released, the main thread keeps running throughout.
    """
    appends = 5
    batch = [msg("x" * 100) for _ in range(3_000)]
    intervals: list[tuple[float, float]] = []
    stamps: list[float] = []
    done = threading.Event()

    def writer() -> None:
        for _ in range(appends):
            start = time.perf_counter()
            store.append(batch, response=ResponseInfo("m"))
            intervals.append((start, time.perf_counter()))
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    while not done.is_set():
        stamps.append(time.perf_counter())
        time.sleep(0)
    t.join()
    inside = [sum(a < s < b for s in stamps) for a, b in intervals]
    assert sum(inside) > 5 * appends, inside
    assert store.stats()["turns"] == appends * len(batch)


def test_threads_race_to_the_message_limit(store: Store) -> None:
    store.create_thread("full")
    store.append([msg(f"p{i}") for i in range(MAX_MESSAGES - 10)], thread="full")

    def work(i: int, barrier: threading.Barrier) -> list[str]:
        barrier.wait()
        ids: list[str] = []
        k = 0
        size = 3
        while True:
            try:
                ids.extend(
                    store.append([msg(f"{i}-{k}-{j}") for j in range(size)], thread="full").turn_ids
                )
            except LimitExceeded:
                if size == 1:
                    return ids
                size -= 1
            k += 1

    results = run_threads(6, work)
    written = [t for ids in results for t in ids]
    assert len(written) == 10
    assert store.get_thread("full").message_count == MAX_MESSAGES
    history = store.history(thread="full")
    assert len(history) == MAX_MESSAGES
    assert Counter(t.id for t in history[-10:]) == Counter(written)
    with pytest.raises(LimitExceeded):
        store.append([msg("over")], thread="full")
    store.verify()


@pytest.mark.lmdb_only
def test_threads_grow_the_map_together(store_path: Path) -> None:
    store = Store(store_path, map_size=64 * 1024)
    for i in range(WORKERS):
        store.create_thread(f"t{i}")

    def work(i: int, barrier: threading.Barrier) -> list[str]:
        barrier.wait()
        ids: list[str] = []
        for k in range(25):
            ids.extend(store.append([msg(f"{i}-{k}:" + "y" * 20_000)], thread=f"t{i}").turn_ids)
            store.history(thread=f"t{i}")
        return ids

    results = run_threads(WORKERS, work)
    for i, ids in enumerate(results):
        assert [t.id for t in store.history(thread=f"t{i}")] == ids
    assert store.stats()["map_bytes"] > 2 * 1024 * 1024
    store.verify()


def test_threads_create_the_same_thread(store: Store) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def work(i: int, barrier: threading.Barrier) -> list[str]:
        barrier.wait()
        try:
            store.create_thread("same", metadata={"by": i})
            result = "created"
        except StateConflict:
            result = "conflict"
        with lock:
            outcomes.append(result)
        same = store.create_thread("same", exist_ok=True)
        return [json.dumps(same.metadata), str(same.created_ms)]

    results = run_threads(8, work)
    assert sorted(outcomes) == ["conflict"] * 7 + ["created"]
    assert len({tuple(r) for r in results}) == 1  # everyone sees the one winner
    assert store.stats()["threads"] == 1
    store.verify()


def test_threads_compete_with_expected_head(store: Store) -> None:
    """Optimistic appends: each writer retries until its expected head is still the head."""
    store.create_thread("t")
    conflicts = Counter[int]()

    def work(i: int, barrier: threading.Barrier) -> list[str]:
        barrier.wait()
        ids: list[str] = []
        for k in range(10):
            while True:
                head = store.get_thread("t").head or ""
                try:
                    a = store.append([msg(f"{i}-{k}")], thread="t", expected_head=head)
                except StateConflict:
                    conflicts[i] += 1
                    continue
                assert a.turn_ids[0] and store.history(turn=a.turn_ids[0])[-1].parent_id == (
                    head or None
                )
                ids.extend(a.turn_ids)
                break
        return ids

    results = run_threads(WORKERS, work)
    written = [t for ids in results for t in ids]
    history = store.history(thread="t")
    assert Counter(t.id for t in history) == Counter(written)
    assert len(history) == WORKERS * 10
    store.verify()


def test_threads_append_while_another_deletes(store: Store) -> None:
    for round_ in range(5):
        name = f"doomed{round_}"
        store.create_thread(name)
        deleted = threading.Event()

        def work(
            i: int, barrier: threading.Barrier, name: str = name, deleted: threading.Event = deleted
        ) -> list[str]:
            barrier.wait()
            if i == 0:
                time.sleep(0.005)
                store.delete_thread(name)
                deleted.set()
                return []
            done: list[str] = []
            while True:
                try:
                    done.extend(store.append([msg("x")], thread=name).turn_ids)
                except NotFound:
                    assert deleted.is_set() or not store_has(store, name)
                    return done

        run_threads(WORKERS, work)
        with pytest.raises(NotFound):
            store.get_thread(name)
    assert store.stats()["turns"] == 0
    assert store.stats()["threads"] == 0
    store.verify()


def test_threads_append_while_another_locks(store: Store) -> None:
    """A lock or archive lands between appends, never inside one: once it returns, the thread
    does not grow, and every append that returned is in the thread."""
    for round_, state in enumerate(("locked", "archived")):
        name = f"closing{round_}"
        store.create_thread(name)
        closed_at: list[int] = []

        def work(
            i: int,
            barrier: threading.Barrier,
            name: str = name,
            state: str = state,
            closed_at: list[int] = closed_at,
        ) -> list[str]:
            barrier.wait()
            if i == 0:
                time.sleep(0.01)
                closed_at.append(store.update_thread(name, state=state).message_count)
                return []
            done: list[str] = []
            while True:
                try:
                    done.extend(store.append([msg(f"{i}")], thread=name).turn_ids)
                except StateConflict:
                    return done

        results = run_threads(WORKERS, work)
        written = [t for ids in results for t in ids]
        t = store.get_thread(name)
        assert t.state == state
        assert t.message_count == closed_at[0] == len(written)
        assert Counter(x.id for x in store.history(thread=name)) == Counter(written)
    store.verify()


def store_has(store: Store, name: str) -> bool:
    try:
        store.get_thread(name)
    except NotFound:
        return False
    return True


@pytest.mark.lmdb_only
def test_threads_fill_the_store(store_path: Path) -> None:
    """At the maximum map size, concurrent writes fail with StoreFull alone: every write that
    returned is stored, every write that failed left nothing, and small writes still fit."""
    store = Store(store_path, map_size=64 * 1024, max_map_size=1024 * 1024)
    for i in range(WORKERS):
        store.create_thread(f"t{i}")

    small_after_full: list[bool] = []

    def work(i: int, barrier: threading.Barrier) -> list[str]:
        barrier.wait()
        ids: list[str] = []
        big_failed = False
        for k in range(200):
            size = 40_000 if k % 2 == 0 else 10
            try:
                ids.extend(store.append([msg(f"{i}-{k}:" + "z" * size)], thread=f"t{i}").turn_ids)
            except StoreFull:
                big_failed = big_failed or size > 10
                continue
            if big_failed and size == 10:
                small_after_full.append(True)
        return ids

    results = run_threads(WORKERS, work)
    for i, ids in enumerate(results):
        assert [t.id for t in store.history(thread=f"t{i}")] == ids
        assert store.get_thread(f"t{i}").message_count == len(ids)
    assert store.stats()["turns"] == sum(len(ids) for ids in results)
    assert store.stats()["map_bytes"] == 1024 * 1024
    # Small writes still landed after a big one no longer fitted.
    assert small_after_full
    store.verify()


# ---- processes ----------------------------------------------------------------------------------


def run_children(
    path: Path | str,
    tmp_path: Path,
    specs: list[tuple[str, str, int]],
    map_size: int | None = None,
) -> list[list[dict[str, Any]]]:
    """Starts one appender.py per (mode, tag, count), releases them together, collects acks."""
    go = tmp_path / "go"
    extra = [str(map_size)] if map_size else []
    children = [
        subprocess.Popen(
            helper_command("appender.py", str(path), str(go), mode, tag, str(count), *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for mode, tag, count in specs
    ]
    time.sleep(0.3)  # let them import and open the store
    go.touch()
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[-1] == {"done": True}, err
        outputs.append(lines[:-1])
    return outputs


def test_two_processes_append_to_one_store(
    make_store: MakeStore, store_spec: str, tmp_path: Path
) -> None:
    store = make_store()
    store.create_thread("shared")
    store.create_thread("p1")
    store.create_thread("p2")
    count = 40
    acks = run_children(store_spec, tmp_path, [("append", "p1", count), ("append", "p2", count)])

    shared_written = [
        t for a in acks for ack in a if ack["thread"] == "shared" for t in ack["turns"]
    ]
    history_ids = [t.id for t in store.history(thread="shared")]
    assert Counter(history_ids) == Counter(shared_written)
    assert len(history_ids) == count * 3  # 1 + 2 turns per pair of appends, per process
    assert store.get_thread("shared").message_count == len(history_ids)
    for tag, child_acks in zip(("p1", "p2"), acks, strict=True):
        own = [t for ack in child_acks if ack["thread"] == tag for t in ack["turns"]]
        assert [t.id for t in store.history(thread=tag)] == own
        assert store.get_thread(tag).message_count == count
        assert_order_kept(
            history_ids,
            [t for ack in child_acks if ack["thread"] == "shared" for t in ack["turns"]],
        )
    assert store.stats()["turns"] == count * 3 + 2 * count
    store.verify()


def test_processes_and_threads_race_to_the_limit(
    make_store: MakeStore, store_spec: str, tmp_path: Path
) -> None:
    store = make_store()
    store.create_thread("shared")
    store.append([msg(f"p{i}") for i in range(MAX_MESSAGES - 25)], thread="shared")
    del store
    gc.collect()
    acks = run_children(store_spec, tmp_path, [("fill", "a", 0), ("fill", "b", 0)])
    written = [t for a in acks for ack in a for t in ack["turns"]]
    assert len(written) == 25
    store = make_store()
    history = store.history(thread="shared")
    assert len(history) == MAX_MESSAGES
    assert store.get_thread("shared").message_count == MAX_MESSAGES
    assert Counter(t.id for t in history[-25:]) == Counter(written)
    store.verify()


@pytest.mark.lmdb_only
def test_two_processes_grow_the_map(store_path: Path, tmp_path: Path) -> None:
    """Both processes start on a small map; each must adopt the other's growth.

    LMDB reports MDB_MAP_RESIZED to a process whose map is smaller than the data another process
    wrote; the store must then adopt the larger size (docs/storage.md: "adopting a larger size
    another process already grew to") instead of failing.
    """
    small = 64 * 1024
    store = Store(store_path, map_size=small)
    store.create_thread("shared")
    store.create_thread("g1")
    store.create_thread("g2")
    del store
    gc.collect()
    acks = run_children(store_path, tmp_path, [("grow", "g1", 20), ("grow", "g2", 20)], small)
    store = Store(store_path, map_size=small)
    shared_written = [
        t for a in acks for ack in a if ack["thread"] == "shared" for t in ack["turns"]
    ]
    assert Counter(t.id for t in store.history(thread="shared")) == Counter(shared_written)
    store.verify()


@pytest.mark.lmdb_only
def test_open_store_sees_growth_by_another_process(store_path: Path, tmp_path: Path) -> None:
    """A store kept open while another process grows the map past it keeps working."""
    small = 64 * 1024
    store = Store(store_path, map_size=small)
    store.create_thread("shared")
    store.create_thread("g1")
    store.append([msg("before")], thread="shared")
    acks = run_children(store_path, tmp_path, [("grow", "g1", 20)], small)
    written = [t for ack in acks[0] if ack["thread"] == "shared" for t in ack["turns"]]
    assert [t.id for t in store.history(thread="shared")][1:] == written
    store.append([msg("after")], thread="shared")
    assert store.get_thread("shared").message_count == 1 + len(written) + 1
    store.verify()
