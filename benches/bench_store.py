"""threadloom's conversation store vs SQLite (WAL, synchronous=FULL), side by side.

    python benches/bench_store.py            # the full run: 10,000 appends, 1,000-turn history
    python benches/bench_store.py --quick    # a short run to check that it works

Both stores live in directories under the same parent (``--dir``, default: the system temp
directory), so both sync to the same filesystem. Every append is its own committed, synced
transaction in both stores: threadloom syncs each LMDB commit; SQLite runs in WAL mode with
``PRAGMA synchronous=FULL`` (the WAL is synced at every commit), the default store of vLLM's
Responses gateway. Each SQLite append does what a thread store must: read the thread's head,
state and message count, insert the turn after the head, move the head, commit.

History reads return a 1,000-turn conversation oldest first with every turn's content as a
Python ``str``: ``[t.content for t in store.history(thread=...)]`` for threadloom; for SQLite
both a parent-pointer recursive CTE (the same model as threadloom's: a turn knows its parent)
and an indexed ``WHERE thread_id = ? ORDER BY seq`` query (SQLite's best case, which cannot
branch), each with ``fetchall()``.

Appends are also measured under concurrency: 4 and 16 threads of one process appending at
once, each to its own thread, 10,000 appends in all. threadloom shares one ``Store`` between the
threads (its writes are group-committed: appends that arrive while a commit is being synced share
the next transaction, each still acknowledged only after the commit that holds it). SQLite gets
what a multi-threaded application would use: a connection per thread with ``busy_timeout``
(SQLite's busy handler sleeps while another connection holds the write lock), and, because that
sleeping penalizes SQLite, also a connection per thread whose write transactions are serialized by
one ``threading.Lock``, its best case in one process. Ratios are taken against the faster of the
two. The single-thread figures come from the serial run.

History reads are measured twice: a conversation appended in one call (its turns adjacent in
both stores) and one built by 10-turn appends interleaved with 15 other conversations.

The figures are medians over many repetitions, the stores taking turns (blocks of 100 appends,
rounds of 1,000 concurrent appends, single reads) so that both see the same machine and disk;
appends report the median single-append latency and the total for all appends (throughput).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import threadloom

GOAL_APPEND = 3.0
GOAL_HISTORY = 10.0
LIMIT = 10_000


def message(i: int) -> dict[str, str]:
    """A chat-sized message (~300 bytes), alternating user and assistant."""
    role = "user" if i % 2 == 0 else "assistant"
    body = f"message {i}: " + ("The quick brown fox jumps over the lazy dog. " * 7)
    return {"role": role, "content": body}


# ---- threadloom -------------------------------------------------------------------------------


class Threadloom:
    name = "threadloom"

    def __init__(self, path: str) -> None:
        self.store = threadloom.Store(path)

    def create_thread(self, tid: str) -> None:
        self.store.create_thread(tid)

    def append(self, tid: str, turn: dict[str, str]) -> None:
        self.store.append([turn], thread=tid)

    def append_many(self, tid: str, turns: list[dict[str, str]]) -> None:
        self.store.append(turns, thread=tid)

    def history(self, tid: str) -> list[str]:
        return [t.content for t in self.store.history(thread=tid)]

    def close(self) -> None:
        del self.store


# ---- SQLite -----------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    id TEXT PRIMARY KEY,
    head INTEGER,
    state TEXT NOT NULL DEFAULT 'open',
    message_count INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    last_activity_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    parent INTEGER REFERENCES turns(id),
    thread_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_thread ON turns(thread_id, seq);
"""

HISTORY_CTE = """
WITH RECURSIVE chain(id, parent, role, content, seq) AS (
    SELECT t.id, t.parent, t.role, t.content, t.seq
      FROM turns t WHERE t.id = (SELECT head FROM threads WHERE id = ?)
    UNION ALL
    SELECT t.id, t.parent, t.role, t.content, t.seq
      FROM turns t JOIN chain c ON t.id = c.parent
)
SELECT role, content FROM chain ORDER BY seq
"""

HISTORY_INDEXED = "SELECT role, content FROM turns WHERE thread_id = ? ORDER BY seq"


def connect(path: str) -> sqlite3.Connection:
    # `timeout` is SQLite's busy_timeout: a writer that finds the database locked retries for
    # up to this long (sleeping between tries) instead of failing at once. Each connection is
    # used by one thread only, though not always the one that opened it.
    db = sqlite3.connect(
        os.path.join(path, "store.db"),
        isolation_level=None,
        timeout=60.0,
        check_same_thread=False,
    )
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    assert mode == "wal", mode
    db.execute("PRAGMA synchronous=FULL")
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2
    return db


class Sqlite:
    name = "sqlite"

    def __init__(self, path: str, lock: threading.Lock | None = None) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.lock = lock
        self.db = connect(path)
        self.db.executescript(SCHEMA)

    def connection(self) -> Sqlite:
        """Another connection to the same database, for another thread."""
        other = Sqlite.__new__(Sqlite)
        other.path, other.lock, other.db = self.path, self.lock, connect(self.path)
        return other

    def create_thread(self, tid: str) -> None:
        now = int(time.time() * 1000)
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute(
            "INSERT INTO threads (id, created_ms, last_activity_ms) VALUES (?, ?, ?)",
            (tid, now, now),
        )
        self.db.execute("COMMIT")

    def _append(self, tid: str, turns: list[dict[str, str]]) -> None:
        if self.lock is None:
            self._append_txn(tid, turns)
        else:
            with self.lock:
                self._append_txn(tid, turns)

    def _append_txn(self, tid: str, turns: list[dict[str, str]]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT head, state, message_count FROM threads WHERE id = ?", (tid,)
            ).fetchone()
            if row is None:
                raise KeyError(tid)
            head, state, count = row
            if state != "open" or count + len(turns) > LIMIT:
                raise RuntimeError("refused")
            now = int(time.time() * 1000)
            for turn in turns:
                count += 1
                head = db.execute(
                    "INSERT INTO turns (parent, thread_id, seq, role, content, created_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (head, tid, count, turn["role"], turn["content"], now),
                ).lastrowid
            db.execute(
                "UPDATE threads SET head = ?, message_count = ?, last_activity_ms = ? WHERE id = ?",
                (head, count, now, tid),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def append(self, tid: str, turn: dict[str, str]) -> None:
        self._append(tid, [turn])

    def append_many(self, tid: str, turns: list[dict[str, str]]) -> None:
        self._append(tid, turns)

    def history(self, tid: str) -> list[str]:
        return [content for _, content in self.db.execute(HISTORY_CTE, (tid,)).fetchall()]

    def history_indexed(self, tid: str) -> list[str]:
        return [content for _, content in self.db.execute(HISTORY_INDEXED, (tid,)).fetchall()]

    def close(self) -> None:
        self.db.close()


# ---- measuring --------------------------------------------------------------------------------


@dataclass
class Appends:
    per_append: list[float]
    total: float


def bench_appends(
    stores: list[Threadloom | Sqlite], tid: str, n: int, block: int
) -> dict[str, Appends]:
    """Appends n turns to one thread of each store, alternating blocks of `block` appends
    between the stores so that both see the same disk (a shared disk's sync latency drifts)."""
    turns = [message(i) for i in range(n)]
    for store in stores:
        store.create_thread(tid)
    latencies: dict[str, list[float]] = {store.name: [] for store in stores}
    clock = time.perf_counter
    gc.disable()
    try:
        for lo in range(0, n, block):
            for store in stores:
                out = latencies[store.name]
                append = store.append
                for turn in turns[lo : lo + block]:
                    t0 = clock()
                    append(tid, turn)
                    out.append(clock() - t0)
    finally:
        gc.enable()
    return {name: Appends(xs, sum(xs)) for name, xs in latencies.items()}


def concurrent_round(
    appenders: list[Callable[[str, dict[str, str]], None]],
    tids: list[str],
    turns: list[dict[str, str]],
) -> float:
    """Appends `turns` to each of `tids` (one thread of ours per thread id, all at once, each
    with its own appender); returns the wall time from the common start to the last append."""
    start = threading.Barrier(len(tids) + 1)
    errors: list[BaseException] = []

    def work(append: Callable[[str, dict[str, str]], None], tid: str) -> None:
        start.wait()
        try:
            for turn in turns:
                append(tid, turn)
        except BaseException as e:
            errors.append(e)

    workers = [
        threading.Thread(target=work, args=(append, tid))
        for append, tid in zip(appenders, tids, strict=True)
    ]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return elapsed


def bench_concurrent(
    tl: Threadloom, sqlite_root: str, threads: int, n: int, round_size: int
) -> dict[str, float]:
    """n appends by `threads` threads at once, each thread appending to its own conversation, in
    rounds of `round_size` appends, the stores taking turns round by round."""
    busy = Sqlite(os.path.join(sqlite_root, f"busy-{threads}"))
    locked = Sqlite(os.path.join(sqlite_root, f"locked-{threads}"), lock=threading.Lock())
    tids = [f"concurrent-{threads}-{i}" for i in range(threads)]
    for store in (tl, busy, locked):
        for tid in tids:
            store.create_thread(tid)
    per_thread = max(1, round_size // threads)
    rounds = max(1, n // (per_thread * threads))
    totals = {"threadloom": 0.0, "sqlite busy_timeout": 0.0, "sqlite + lock": 0.0}
    appended = 0
    gc.disable()
    try:
        for r in range(rounds):
            turns = [message(appended + i) for i in range(per_thread)]
            appended += per_thread
            tl_appenders = [tl.append] * threads
            busy_conns = [busy.connection() for _ in tids]
            locked_conns = [locked.connection() for _ in tids]
            runs = [
                ("threadloom", tl_appenders),
                ("sqlite busy_timeout", [c.append for c in busy_conns]),
                ("sqlite + lock", [c.append for c in locked_conns]),
            ]
            if r % 2:
                runs.reverse()
            for name, appenders in runs:
                totals[name] += concurrent_round(appenders, tids, turns)
            for c in busy_conns + locked_conns:
                c.close()
    finally:
        gc.enable()
    for store in (busy, locked):
        for tid in tids:
            count = store.db.execute(
                "SELECT message_count FROM threads WHERE id = ?", (tid,)
            ).fetchone()[0]
            assert count == appended, (store.name, tid, count, appended)
        store.close()
    for tid in tids:
        assert tl.store.get_thread(tid).message_count == appended
    totals["appends"] = appended * threads
    return totals


def interleave(stores: list[Threadloom | Sqlite], tid: str, n: int, others: int, step: int) -> None:
    """Builds an n-turn conversation `tid` out of `step`-turn appends, each followed by one
    `step`-turn append to each of `others` other conversations: the layout a busy server makes."""
    tids = [tid] + [f"{tid}-other-{i}" for i in range(others)]
    for store in stores:
        for t in tids:
            store.create_thread(t)
    for lo in range(0, n, step):
        turns = [message(i) for i in range(lo, min(n, lo + step))]
        for store in stores:
            for t in tids:
                store.append_many(t, turns)


def bench_reads(
    reads: dict[str, Callable[[], list[str]]], expected: list[str], repeat: int
) -> dict[str, list[float]]:
    """Times each read `repeat` times, taking turns so that all see the same machine."""
    for read in reads.values():
        assert read() == expected, "history does not match what was appended"
        for _ in range(min(10, repeat)):  # warm the page cache and the statement cache
            read()
    times: dict[str, list[float]] = {name: [] for name in reads}
    clock = time.perf_counter
    gc.disable()
    try:
        for _ in range(repeat):
            for name, read in reads.items():
                t0 = clock()
                contents = read()
                times[name].append(clock() - t0)
                del contents
    finally:
        gc.enable()
    return times


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fsync_latency(directory: str, n: int = 200) -> float:
    """The median cost of one small write plus fdatasync on this filesystem."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        times = []
        for i in range(n):
            os.pwrite(fd, b"x" * 4096, (i % 16) * 4096)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (1,000 appends)")
    parser.add_argument("--dir", help="parent directory of both stores (default: system temp)")
    parser.add_argument("--appends", type=int, help="number of appends (default 10,000)")
    parser.add_argument("--history", type=int, default=1000, help="history length to read")
    parser.add_argument("--reads", type=int, help="history read repetitions")
    parser.add_argument(
        "--threads",
        default="4,16",
        help="comma-separated thread counts for the concurrent appends (default 4,16; '' skips)",
    )
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    n_appends = args.appends or (1_000 if args.quick else 10_000)
    n_reads = args.reads or (50 if args.quick else 500)
    n_history = args.history
    if not 1 <= n_appends <= LIMIT or not 1 <= n_history <= LIMIT:
        parser.error(f"appends and history must be between 1 and {LIMIT}")
    if any(not 1 <= t <= 256 for t in thread_counts):
        parser.error("thread counts must be between 1 and 256")
    n_others = 3 if args.quick else 15

    root = tempfile.mkdtemp(prefix="threadloom-bench-", dir=args.dir)
    try:
        probe = fsync_latency(root)
        print(
            f"threadloom {getattr(threadloom, '__version__', '?')}, SQLite "
            f"{sqlite3.sqlite_version}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}"
        )
        print(f"stores under {root} (one 4 KiB write + fdatasync there: {fmt_time(probe)})")
        print(
            f"{n_appends:,} appends (one turn, one synced transaction each), serially and by "
            f"{', '.join(map(str, thread_counts)) or 'no'} threads at once; "
            f"{n_history:,}-turn history read {n_reads}x\n"
        )

        tl = Threadloom(os.path.join(root, "threadloom"))
        sq = Sqlite(os.path.join(root, "sqlite"))
        try:
            results_append = bench_appends([tl, sq], "bench-appends", n_appends, block=100)
            concurrent = {
                threads: bench_concurrent(
                    tl, os.path.join(root, "sqlite"), threads, n_appends, round_size=1000
                )
                for threads in thread_counts
            }

            history = [message(i) for i in range(n_history)]
            for store in (tl, sq):
                store.create_thread("bench-history")
                store.append_many("bench-history", history)
            interleave([tl, sq], "bench-interleaved", n_history, n_others, step=10)
            expected = [t["content"] for t in history]
            reads = {}
            for layout, tid in (
                ("adjacent", "bench-history"),
                ("interleaved", "bench-interleaved"),
            ):
                reads[layout] = bench_reads(
                    {
                        "threadloom": lambda tid=tid: tl.history(tid),
                        "cte": lambda tid=tid: sq.history(tid),
                        "indexed": lambda tid=tid: sq.history_indexed(tid),
                    },
                    expected,
                    n_reads,
                )
        finally:
            tl.close()
            sq.close()

        a_tl, a_sq = results_append["threadloom"], results_append["sqlite"]
        rows = [
            (
                "append, median latency",
                statistics.median(a_tl.per_append),
                statistics.median(a_sq.per_append),
                GOAL_APPEND,
            ),
            (
                f"append, {n_appends:,} total",
                a_tl.total,
                a_sq.total,
                GOAL_APPEND,
            ),
        ]
        for threads, totals in concurrent.items():
            best = min(totals["sqlite busy_timeout"], totals["sqlite + lock"])
            rows.append(
                (
                    f"append, {threads} threads, {int(totals['appends']):,} total",
                    totals["threadloom"],
                    best,
                    GOAL_APPEND,
                )
            )
        for layout, times in reads.items():
            for query in ("cte", "indexed"):
                label = "recursive CTE" if query == "cte" else "indexed query"
                rows.append(
                    (
                        f"history {n_history:,} {layout}, {label}",
                        statistics.median(times["threadloom"]),
                        statistics.median(times[query]),
                        GOAL_HISTORY,
                    )
                )
        width = max(len(r[0]) for r in rows)
        header = f"{'operation':<{width}}  {'threadloom':>11}  {'sqlite':>11}  {'ratio':>7}  goal"
        print(header)
        print("-" * len(header))
        misses = []
        for op, ours, theirs, goal in rows:
            ratio = theirs / ours
            met = "met" if ratio >= goal else "MISSED"
            if ratio < goal:
                misses.append(op)
            print(
                f"{op:<{width}}  {fmt_time(ours):>11}  {fmt_time(theirs):>11}  "
                f"{ratio:>6.2f}x  >= {goal:g}x {met}"
            )
        print("\nratio = sqlite time / threadloom time (higher is better for threadloom)")
        for threads, totals in concurrent.items():
            n = totals["appends"]
            print(
                f"{threads} threads: threadloom {n / totals['threadloom']:,.0f} appends/s; "
                f"sqlite {n / totals['sqlite busy_timeout']:,.0f}/s with busy_timeout, "
                f"{n / totals['sqlite + lock']:,.0f}/s serialized by a lock "
                "(the ratio uses the faster)"
            )
        print(
            f"serial: threadloom {n_appends / a_tl.total:,.0f} appends/s, "
            f"sqlite {n_appends / a_sq.total:,.0f}/s"
        )
        p99 = lambda xs: sorted(xs)[int(len(xs) * 0.99) - 1]  # noqa: E731
        print(
            f"append p99: threadloom {fmt_time(p99(a_tl.per_append))}, "
            f"sqlite {fmt_time(p99(a_sq.per_append))}"
        )
        if misses:
            print("goals missed: " + "; ".join(misses))
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
