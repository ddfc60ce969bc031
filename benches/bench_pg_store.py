"""The LMDB store vs the PostgreSQL store on loopback, and one server vs two.

    python benches/bench_pg_store.py            # the full run
    python benches/bench_pg_store.py --quick    # a short run to check that it works
    python benches/bench_pg_store.py --postgres postgresql://user@host/db   # an existing server

Without `--postgres`, the bench starts a throwaway PostgreSQL cluster on 127.0.0.1 (Debian's
packages; tests/pgcluster.py) with default settings: `fsync` and `synchronous_commit` on, so
every PostgreSQL commit is synced, as every LMDB commit is. Both stores live on the same disk.

Store figures (one process, the store APIs directly):
- appends: one turn per append, each its own committed transaction, to one thread; then 4 and
  16 Python threads appending at once, each to its own thread (LMDB shares one `Store` and
  group-commits; PostgreSQL shares one `PostgresStore`, a pool of 16 connections).
- history: a 1,000-turn thread read oldest first with every turn's content as a `str`.

Server figures (stateful requests per second): the app `threadloom serve` runs, with the
scripted echo backend (no model, so the store and the HTTP path dominate), Freddy requests
(`POST /v1/model/response` into a thread), 16 conversations each sending its requests one after
another. One server on LMDB vs two servers sharing PostgreSQL, each conversation routed to one
server by a hash of its thread id (what a consistent-hashing load balancer does).

Medians over repetitions; the stores take turns so both see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import threadloom
from threadloom.storage import close_store, open_store

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import pgcluster  # noqa: E402  # tests/pgcluster.py: the throwaway cluster

Store = Any  # either backend, used through the same API


def message(i: int) -> dict[str, str]:
    """A chat-sized message (~300 bytes), alternating user and assistant."""
    role = "user" if i % 2 == 0 else "assistant"
    body = f"message {i}: " + ("The quick brown fox jumps over the lazy dog. " * 7)
    return {"role": role, "content": body}


def fresh_schema(base_url: str) -> str:
    """A new, empty schema in the database; returns a URL whose connections use it."""
    import uuid

    import psycopg

    schema = "bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}options=-csearch_path%3D{schema}&pool_size=16"


# ---- store figures ------------------------------------------------------------------------------


def serial_appends(store: Store, tid: str, n: int) -> tuple[float, float]:
    """(median latency s, appends/s) of n single-turn appends to one thread."""
    store.create_thread(tid)
    times = []
    started = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        store.append([message(i)], thread=tid)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    return statistics.median(times), n / total


def concurrent_appends(store: Store, prefix: str, threads: int, n: int) -> float:
    """Appends/s with `threads` Python threads appending n turns in all, each to its own thread."""
    for k in range(threads):
        store.create_thread(f"{prefix}{k}")
    per = n // threads
    barrier = threading.Barrier(threads + 1)

    def work(k: int) -> None:
        barrier.wait()
        for i in range(per):
            store.append([message(i)], thread=f"{prefix}{k}")

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    return per * threads / (time.perf_counter() - started)


def history_reads(store: Store, tid: str, turns: int, reads: int) -> float:
    """Median seconds to read a `turns`-turn thread with every content as a `str`."""
    store.create_thread(tid)
    store.append([message(i) for i in range(turns)], thread=tid)
    times = []
    for _ in range(reads):
        t0 = time.perf_counter()
        contents = [t.content for t in store.history(thread=tid)]
        times.append(time.perf_counter() - t0)
        assert len(contents) == turns
    return statistics.median(times)


def store_figures(stores: dict[str, Store], quick: bool) -> dict[str, dict[str, float]]:
    n_serial = 200 if quick else 2_000
    n_concurrent = 400 if quick else 4_000
    rounds = 2 if quick else 5
    out: dict[str, dict[str, float]] = {name: {} for name in stores}
    samples: dict[tuple[str, str], list[float]] = {}

    def add(name: str, key: str, value: float) -> None:
        samples.setdefault((name, key), []).append(value)

    for r in range(rounds):
        for name, store in stores.items():  # the stores take turns
            latency, rate = serial_appends(store, f"s{r}", n_serial // rounds)
            add(name, "append latency ms", latency * 1000)
            add(name, "appends/s, 1 thread", rate)
            for threads in (4, 16):
                rate = concurrent_appends(
                    store, f"c{threads}-{r}-", threads, n_concurrent // rounds
                )
                add(name, f"appends/s, {threads} threads", rate)
            seconds = history_reads(store, f"h{r}", 1_000, 5 if quick else 20)
            add(name, "history 1,000 turns ms", seconds * 1000)
    for (name, key), values in samples.items():
        out[name][key] = statistics.median(values)
    return out


# ---- server figures -----------------------------------------------------------------------------


class Server:
    def __init__(self, store: str, log: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT / "python"), env.get("PYTHONPATH")) if p
        )
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "helpers" / "scripted_server.py"), store],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            raise RuntimeError(f"server did not start: {log.read_text()}")
        self.url = f"http://127.0.0.1:{line.split()[1]}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._log.close()


async def drive(urls: list[str], conversations: int, requests: int) -> float:
    """Requests/s: each conversation sends its requests one after another into its own thread,
    always to the server its thread id hashes to."""
    import aiohttp

    async def conversation(session: Any, c: int) -> None:
        thread = f"conv-{c}"
        url = urls[zlib.crc32(thread.encode()) % len(urls)]
        for i in range(requests):
            body = {"inputs": [{"role": "user", "texts": [{"text": f"q{i}"}]}], "thread": thread}
            async with session.post(f"{url}/v1/model/response", json=body) as r:
                assert r.status == 200, await r.text()
                await r.read()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        # One warm-up request per server (first connections, first prompts).
        for k, url in enumerate(urls):
            body = {"inputs": [{"role": "user", "texts": [{"text": "hi"}]}], "thread": f"w{k}"}
            async with session.post(f"{url}/v1/model/response", json=body) as r:
                assert r.status == 200, await r.text()
        started = time.perf_counter()
        await asyncio.gather(*(conversation(session, c) for c in range(conversations)))
        return conversations * requests / (time.perf_counter() - started)


def server_figures(
    lmdb_dir: str, pg_url: Callable[[], str], quick: bool, logs: Path
) -> dict[str, float]:
    conversations, requests = (8, 5) if quick else (16, 20)
    out = {}
    one = Server(lmdb_dir, logs / "lmdb.log")
    try:
        out["1 server, LMDB"] = asyncio.run(drive([one.url], conversations, requests))
    finally:
        one.stop()
    url = pg_url()
    both = [Server(url, logs / f"pg{i}.log") for i in range(2)]
    try:
        out["2 servers, PostgreSQL"] = asyncio.run(
            drive([s.url for s in both], conversations, requests)
        )
        out["1 server, PostgreSQL"] = asyncio.run(drive([both[0].url], conversations, requests))
    finally:
        for s in both:
            s.stop()
    return out


# ---- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run to check that it works")
    parser.add_argument("--postgres", help="an existing server's URL (default: start a cluster)")
    parser.add_argument("--dir", help="where the LMDB stores go (default: system temp)")
    parser.add_argument("--no-server", action="store_true", help="store figures only")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="threadloom-bench-", dir=args.dir))
    cluster = None
    base_url = args.postgres
    if base_url is None:
        cluster = pgcluster.Cluster(tempfile.mkdtemp(prefix="threadloom-bench-pg-"))
        base_url = cluster.start()
    try:
        lmdb = threadloom.Store(work / "store")
        pg = open_store(fresh_schema(base_url))
        try:
            figures = store_figures({"LMDB": lmdb, "PostgreSQL": pg}, args.quick)
        finally:
            close_store(pg)
            del lmdb
        servers = {}
        if not args.no_server:
            servers = server_figures(
                str(work / "server-store"), lambda: fresh_schema(base_url), args.quick, work
            )
    finally:
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"# PostgreSQL: {'loopback cluster' if cluster else 'given URL'}\n")
    keys = list(figures["LMDB"])
    print(f"| {'store':<22} | {'LMDB':>10} | {'PostgreSQL':>10} | {'LMDB / PG':>9} |")
    print(f"|{'-' * 24}|{'-' * 12}|{'-' * 12}|{'-' * 11}|")
    for key in keys:
        a, b = figures["LMDB"][key], figures["PostgreSQL"][key]
        # Ratios read "how many times better LMDB is": rates divide, times invert.
        ratio = a / b if "/s" in key else b / a
        print(f"| {key:<22} | {a:>10.2f} | {b:>10.2f} | {ratio:>8.2f}x |")
    if servers:
        print(f"\n| {'stateful requests/s':<22} | {'req/s':>10} |")
        print(f"|{'-' * 24}|{'-' * 12}|")
        for key, value in servers.items():
            print(f"| {key:<22} | {value:>10.1f} |")


if __name__ == "__main__":
    main()
