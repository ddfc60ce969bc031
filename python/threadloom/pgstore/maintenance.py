"""The PostgreSQL store's upkeep: sweeping expired threads and responses, counting, and the
consistency check (`threadloom check`, tests)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from threadloom import _core
from threadloom._core import Retention, quote
from threadloom.errors import StoreFormatError
from threadloom.pgstore import rows
from threadloom.pgstore.connection import Conn, Database, now_ms
from threadloom.pgstore.refs import release, remove_thread

if TYPE_CHECKING:
    from threadloom.store_counts import StoreStats, SweepCounts

SWEEP_BATCH = 512


def sweep(db: Database, retention: Retention) -> SweepCounts:
    """Deletes expired threads and responses in batches of `SWEEP_BATCH` per transaction;
    rows another sweep holds are skipped."""
    totals: SweepCounts = {"threads": 0, "responses": 0, "turns": 0}

    def batch(conn: Conn) -> tuple[int, int, int]:
        now = now_ms()
        live_activity, live_created = retention.thread_cutoffs(now)
        threads = conn.execute(
            f"SELECT {rows.THREAD_COLUMNS} FROM threadloom_threads "
            "WHERE last_activity_ms < %s OR created_ms < %s "
            "LIMIT %s FOR UPDATE SKIP LOCKED",
            (live_activity, live_created, SWEEP_BATCH),
        ).fetchall()
        turns = sum(remove_thread(conn, rows.thread(row)) for row in threads)
        dead = conn.execute(
            "DELETE FROM threadloom_responses WHERE id IN (SELECT id FROM "
            "threadloom_responses WHERE created_ms < %s LIMIT %s FOR UPDATE SKIP LOCKED) "
            "RETURNING last_turn",
            (retention.response_cutoff(now), SWEEP_BATCH),
        ).fetchall()
        turns += sum(release(conn, row[0].bytes) for row in dead)
        return len(threads), len(dead), turns

    while True:
        n_threads, n_responses, n_turns = db.call(batch, write=True)
        totals["threads"] += n_threads
        totals["responses"] += n_responses
        totals["turns"] += n_turns
        if n_threads < SWEEP_BATCH and n_responses < SWEEP_BATCH:
            return totals


def stats(db: Database) -> StoreStats:
    """Counts of threads, responses and turns (expired ones included until swept), and the
    tables' size on disk in bytes (as both `file_bytes` and `map_bytes`)."""

    def count(conn: Conn) -> StoreStats:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM threadloom_threads), "
            "(SELECT count(*) FROM threadloom_responses), "
            "(SELECT count(*) FROM threadloom_turns), "
            "pg_total_relation_size('threadloom_threads') "
            "+ pg_total_relation_size('threadloom_responses') "
            "+ pg_total_relation_size('threadloom_turns')"
        ).fetchone()
        assert row is not None
        threads, responses, turns, size = (int(x) for x in row)
        return {
            "threads": threads,
            "responses": responses,
            "turns": turns,
            "file_bytes": size,
            "map_bytes": size,
        }

    return db.call(count)


def verify(db: Database) -> None:
    """Checks the reference counts and parent links against the records, in one snapshot;
    raises StoreFormatError on the first problem."""

    def check(conn: Conn) -> None:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            _verify(conn)
        finally:
            conn.execute("ROLLBACK")

    db.call(check)


def _verify(conn: Conn) -> None:
    def first(sql: str) -> tuple[Any, ...] | None:
        return conn.execute(sql).fetchone()

    def name(value: uuid.UUID) -> str:
        return _core.turn_id_string(value.bytes)

    row = first(
        "SELECT t.parent FROM threadloom_turns t LEFT JOIN threadloom_turns p ON p.id = t.parent "
        "WHERE t.parent IS NOT NULL AND p.id IS NULL LIMIT 1"
    )
    if row:
        raise StoreFormatError(f"turn {name(row[0])} is a parent but missing")
    row = first(
        "SELECT t.id FROM threadloom_turns t JOIN threadloom_turns p ON p.id = t.parent "
        "WHERE t.depth <> p.depth + 1 LIMIT 1"
    )
    if row or first("SELECT 1 FROM threadloom_turns WHERE parent IS NULL AND depth <> 1 LIMIT 1"):
        raise StoreFormatError("turn depth does not follow its parent")
    expected = """
        SELECT id, sum(n) AS n FROM (
            SELECT parent AS id, count(*) AS n FROM threadloom_turns
                WHERE parent IS NOT NULL GROUP BY parent
            UNION ALL SELECT head, count(*) FROM threadloom_threads
                WHERE head IS NOT NULL GROUP BY head
            UNION ALL SELECT last_turn, count(*) FROM threadloom_responses GROUP BY last_turn
        ) x GROUP BY id
    """
    row = first(
        f"SELECT e.id FROM ({expected}) e LEFT JOIN threadloom_turns t ON t.id = e.id "
        "WHERE t.id IS NULL LIMIT 1"
    )
    if row:
        raise StoreFormatError(f"turn {name(row[0])} is referenced but missing")
    row = first(
        f"SELECT t.id, coalesce(e.n, 0) FROM threadloom_turns t LEFT JOIN ({expected}) e "
        "ON e.id = t.id WHERE t.refs <> coalesce(e.n, 0) LIMIT 1"
    )
    if row:
        what = "is unreachable" if row[1] == 0 else "has a wrong reference count"
        raise StoreFormatError(f"turn {name(row[0])} {what}")
    row = first(
        "SELECT th.id FROM threadloom_threads th LEFT JOIN threadloom_turns t ON t.id = th.head "
        "WHERE th.message_count <> coalesce(t.depth, 0) LIMIT 1"
    )
    if row:
        raise StoreFormatError(f"thread {quote(row[0])} has a wrong message count")
