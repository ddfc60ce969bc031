"""The branches recorded for a thread in PostgreSQL (`threadloom_thread_branches`, deleted with
their thread by its foreign key): the statements inside the store's transactions, which have
already checked the thread."""

from __future__ import annotations

from collections.abc import Sequence

from threadloom import _core
from threadloom.pgstore import rows
from threadloom.pgstore.connection import Conn

_WHERE = "WHERE owner = %s AND thread_id = %s"


def add(
    conn: Conn,
    owner: str,
    thread_id: str,
    response_id: str,
    after: bytes | None,
    replaces: Sequence[str],
) -> None:
    """Drops the records of `replaces`, then records `response_id` (or updates its record)."""
    conn.execute(
        f"DELETE FROM threadloom_thread_branches {_WHERE} AND response_id = ANY(%s)",
        (owner, thread_id, list(replaces)),
    )
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE response_id = %s) "
        f"FROM threadloom_thread_branches {_WHERE}",
        (response_id, owner, thread_id),
    ).fetchone()
    assert row is not None
    _core.check_branch_room(thread_id, row[0], new=row[1] == 0)
    conn.execute(
        "INSERT INTO threadloom_thread_branches (owner, thread_id, response_id, after_turn) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (owner, thread_id, response_id) "
        "DO UPDATE SET after_turn = EXCLUDED.after_turn",
        (owner, thread_id, response_id, rows.to_uuid(after)),
    )


def listed(conn: Conn, owner: str, thread_id: str) -> list[tuple[str, str | None]]:
    """(response id, the turn it continues or None), by response id as LMDB lists them."""
    found = conn.execute(
        f"SELECT response_id, after_turn FROM threadloom_thread_branches {_WHERE} "
        "ORDER BY response_id",
        (owner, thread_id),
    ).fetchall()
    return [(rid, rows.turn_id(after)) for rid, after in found]
