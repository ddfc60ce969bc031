"""Servers on PostgreSQL: two server processes sharing one database, and a database outage.

Each server is tests/helpers/scripted_server.py: the app `threadloom serve` runs, with the
scripted echo backend (its reply lists every user message of the prompt, so a test sees which
history a server assembled). Requests go through the Freddy dialect, whose replies land in
threads. Skipped unless THREADLOOM_TEST_POSTGRES_URL is set; the outage test also needs the
PostgreSQL binaries, since it runs (and stops) a cluster of its own.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from server_support import ServerProcess, start_servers
from support import (
    POSTGRES_URL,
    create_pg_schema,
    drop_pg_schema,
    msg,
)
from threadloom import Store
from threadloom.storage import close_store, open_store

aiohttp = pytest.importorskip("aiohttp")

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(POSTGRES_URL is None, reason="THREADLOOM_TEST_POSTGRES_URL is not set"),
]

MAX_MESSAGES = 10_000


@pytest.fixture
def schema_url() -> Iterator[str]:
    assert POSTGRES_URL is not None
    schema, url = create_pg_schema(POSTGRES_URL)
    yield url
    drop_pg_schema(POSTGRES_URL, schema)


@pytest.fixture
def servers(schema_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    both = start_servers(schema_url, tmp_path, 2)
    yield both
    for s in both:
        s.stop()
    assert all(s.proc.returncode == 0 for s in both), [s.log.read_text() for s in both]


@pytest.fixture
def direct(schema_url: str) -> Iterator[Store]:
    """The same database opened by the test itself, to check what the servers stored."""
    store = open_store(schema_url)
    yield store
    close_store(store)


@pytest_asyncio.fixture
async def session() -> AsyncIterator[Any]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        yield s


async def respond(
    session: Any, server: ServerProcess, text: str, **body: Any
) -> tuple[int, dict[str, Any]]:
    body["inputs"] = [{"role": "user", "texts": [{"text": text}]}]
    async with session.post(f"{server.url}/v1/model/response", json=body) as r:
        return r.status, await r.json()


def reply(data: dict[str, Any]) -> str:
    [message] = data["output"]
    [part] = message["texts"]
    return str(part["text"])


# ---- two servers, one database ------------------------------------------------------------------


async def test_servers_see_each_others_turns(
    servers: list[ServerProcess], session: Any, direct: Store
) -> None:
    sent: list[str] = []
    for i in range(6):
        text = f"m{i}"
        sent.append(text)
        status, data = await respond(session, servers[i % 2], text, thread="alt")
        assert status == 200, data
        # The echo lists every user message the server assembled: the other server's too.
        assert reply(data) == "[" + " | ".join(sent) + "]"
        assert data["threadId"] == "alt"
    # A response continued on the other server.
    status, first = await respond(session, servers[0], "branch root")
    assert status == 200, first
    status, second = await respond(
        session, servers[1], "branch next", previousResponseId=first["id"]
    )
    assert status == 200, second
    assert reply(second) == "[branch root | branch next]"
    assert direct.get_thread("alt").message_count == 12
    direct.verify()


async def test_concurrent_appends_from_two_servers_lose_nothing(
    servers: list[ServerProcess], session: Any, direct: Store
) -> None:
    n = 24
    # Four requests in flight per server (each has two slots), so replies race to the thread.
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> tuple[int, dict[str, Any]]:
        async with gate:
            return await respond(session, servers[i % 2], f"race {i}", thread="race")

    results = await asyncio.gather(*(one(i) for i in range(n)))
    acked = [data for status, data in results if status == 200]
    assert len(acked) == n, [r for r in results if r[0] != 200]
    in_thread = [data for data in acked if data["threadId"] == "race"]
    assert in_thread, "no reply reached the thread"
    # Every acknowledged reply is stored with its input, in the thread or (when the thread
    # moved on while it was generated) as a branch from what its model saw.
    for data in acked:
        history = direct.history(response=data["id"])
        assert history[-1].content == reply(data)
        assert history[-2].content.startswith("race ")
    thread = direct.history(thread="race")
    assert direct.get_thread("race").message_count == len(thread) == 2 * len(in_thread)
    assert [t.depth for t in thread] == list(range(1, len(thread) + 1))
    want: set[str] = set()
    for data in in_thread:
        want.update(t.id for t in direct.history(response=data["id"])[-2:])
    assert {t.id for t in thread} == want
    assert direct.stats()["responses"] == n
    direct.verify()


async def test_two_servers_respect_the_message_limit(
    servers: list[ServerProcess], session: Any, direct: Store
) -> None:
    start = MAX_MESSAGES - 9
    direct.create_thread("full")
    roles = ("user", "assistant")
    direct.append([msg(f"p{i}", roles[i % 2]) for i in range(start)], thread="full")
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> tuple[int, dict[str, Any]]:
        async with gate:
            return await respond(session, servers[i % 2], f"late {i}", thread="full")

    results = await asyncio.gather(*(one(i) for i in range(12)))
    for status, data in results:
        assert status in (200, 400), data
        if status == 400:
            assert data["error"]["code"] == "limit_exceeded", data
    # Then one at a time until the limit refuses: the thread stops at 9,999, where a reply
    # (two messages) no longer fits.
    for i in range(5):
        status, data = await respond(session, servers[i % 2], f"after {i}", thread="full")
        results.append((status, data))
        if status == 400:
            assert data["error"]["code"] == "limit_exceeded", data
            break
        assert status == 200, data
    assert status == 400
    acked = [data for status, data in results if status == 200]
    in_thread = [data for data in acked if data["threadId"] == "full"]
    count = direct.get_thread("full").message_count
    assert count == start + 2 * len(in_thread) == MAX_MESSAGES - 1
    assert len(direct.history(thread="full")) == count
    for data in acked:
        assert len(direct.history(response=data["id"])) <= MAX_MESSAGES
    direct.verify()


# ---- a database outage ---------------------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A PostgreSQL cluster of this test's own, which it may stop and start."""
    import pgcluster

    if pgcluster.bin_dir() is None:
        pytest.skip("the PostgreSQL binaries are not installed")
    # Outside pytest's private tmp (mode 0700): a root run hands the cluster to `postgres`.
    root = tempfile.mkdtemp(prefix="threadloom-pg-")
    c = pgcluster.Cluster(root)
    c.start()
    yield c
    c.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


async def test_database_outage_gives_503_and_the_server_recovers(
    cluster: Any, tmp_path: Path, session: Any
) -> None:
    [server] = start_servers(cluster.url, tmp_path, 1, delay_s=0.002)
    acked: list[dict[str, Any]] = []
    outcomes: list[tuple[float, int, dict[str, Any], float]] = []
    stop = asyncio.Event()

    async def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            began = time.monotonic()
            status, data = await respond(session, server, f"w{worker} {i}", thread=f"f{worker}")
            outcomes.append((began, status, data, time.monotonic() - began))
            if status == 200:
                acked.append(data)
            else:
                await asyncio.sleep(0.05)
            i += 1

    async def until(condition: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.05)

    workers = [asyncio.create_task(load(w)) for w in range(4)]
    try:
        await until(lambda: len(acked) >= 20, 60)
        # Down hard, mid-load: in-flight transactions die with it.
        await asyncio.to_thread(cluster.stop, "immediate")
        down_at = time.monotonic()
        await until(lambda: sum(o[1] == 503 for o in outcomes if o[0] > down_at) >= 8, 60)
        assert server.alive()
        await asyncio.to_thread(cluster.start)
        up_at = time.monotonic()
        await until(lambda: sum(o[1] == 200 for o in outcomes if o[0] > up_at) >= 10, 60)
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
    assert server.alive()
    server.stop()

    # Shown with -s or on failure: how the outage looked from the client.
    back = min(o[0] + o[3] for o in outcomes if o[0] > up_at and o[1] == 200) - up_at
    slowest = max((o[3] for o in outcomes if o[1] == 503), default=0)
    print(
        f"acked {len(acked)}, 503s {sum(o[1] == 503 for o in outcomes)}, "
        f"slowest 503 {slowest:.2f} s, first 200 after restart {back:.2f} s"
    )
    statuses = {o[1] for o in outcomes}
    assert statuses <= {200, 503}, [o for o in outcomes if o[1] not in (200, 503)]
    for _, status, data, elapsed in outcomes:
        # Refused promptly (the pool's timeout), never left hanging.
        assert elapsed < 15, (status, elapsed)
        if status == 503:
            assert data["error"]["code"] == "store_unavailable", data
            assert "unavailable" in data["error"]["message"]

    # Every acknowledged reply survived the crash, in its thread.
    store = open_store(cluster.url)
    try:
        for data in acked:
            history = store.history(response=data["id"])
            assert history[-1].content == reply(data)
        for worker in range(4):
            thread_ids = {t.id for t in store.history(thread=f"f{worker}")}
            for data in acked:
                if data["threadId"] == f"f{worker}":
                    assert store.history(response=data["id"])[-1].id in thread_ids
        store.verify()
    finally:
        close_store(store)
