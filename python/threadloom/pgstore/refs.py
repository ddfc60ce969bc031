"""Turns and their reference counts in PostgreSQL: the chain of new turns an append or a
rebase writes, the reference a child, thread or response holds on a turn, and releasing one
(which frees the turns nothing else reaches, as in LMDB)."""

from __future__ import annotations

from typing import Any

from threadloom import _core
from threadloom._core import Thread
from threadloom.pgstore.connection import Conn, now_ms
from threadloom.pgstore.rows import to_uuid, turn_not_found

# A parsed turn as `_core.parse_turns` gives it: (role index, content, reasoning, tool).
NewTurn = tuple[int, bytes, bytes | None, bytes | None]


def insert_turns(
    conn: Conn,
    owner: str,
    parent: bytes | None,
    depth: int,
    new: list[NewTurn],
    last_refs: int,
    now: int,
) -> list[bytes]:
    """Writes `new` as a chain after `parent` (at `depth`), each referenced by its child and
    the last by `last_refs` holders; returns their keys. The parent's reference from the first
    is the caller's to count."""
    keys: list[bytes] = []
    prev = parent
    for _ in new:
        prev = _core.new_turn_key(now, prev)
        keys.append(prev)
    conn.execute(
        "INSERT INTO threadloom_turns "
        "(id, parent, owner, role, depth, created_ms, refs, content, reasoning, tool) "
        "SELECT id, parent, %s, role, depth, %s, refs, content, reasoning, tool FROM unnest("
        "%s::uuid[], %s::uuid[], %s::smallint[], %s::integer[], %s::integer[], "
        "%s::bytea[], %s::bytea[], %s::bytea[]) "
        "AS x(id, parent, role, depth, refs, content, reasoning, tool)",
        (
            owner,
            now,
            [to_uuid(k) for k in keys],
            [to_uuid(parent), *(to_uuid(k) for k in keys[:-1])],
            [t[0] for t in new],
            list(range(depth + 1, depth + len(new) + 1)),
            [1] * (len(new) - 1) + [last_refs],
            [t[1] for t in new],
            [t[2] for t in new],
            [t[3] for t in new],
        ),
    )
    return keys


def retain(conn: Conn, key: bytes, owner: str | None) -> int:
    """Adds a child's reference to a turn (locking its row, so a concurrent release either
    runs first and deletes it, or sees the reference); returns the turn's depth. With
    `owner`, another owner's turn is NotFound."""
    sql = "UPDATE threadloom_turns SET refs = refs + 1 WHERE id = %s"
    args: list[Any] = [to_uuid(key)]
    if owner is not None:
        sql += " AND owner = %s"
        args.append(owner)
    row = conn.execute(sql + " RETURNING depth", args).fetchone()
    if row is None:
        raise turn_not_found(key)
    return int(row[0])


def release(conn: Conn, key: bytes) -> int:
    """Drops one reference to a turn; returns how many turns that freed."""
    row = conn.execute("SELECT threadloom_release(%s)", (to_uuid(key),)).fetchone()
    return int(row[0]) if row else 0


def remove_thread(conn: Conn, t: Thread) -> int:
    """Deletes a thread row and releases its head; returns the turns deleted. A thread that
    held messages leaves a tombstone (see `PostgresStore._clear_tombstone`)."""
    conn.execute("DELETE FROM threadloom_threads WHERE owner = %s AND id = %s", (t.owner, t.id))
    if t.head is None:
        return 0  # an empty thread had no history to lose: its id stays free
    conn.execute(
        "INSERT INTO threadloom_thread_tombstones (owner, id, deleted_ms) VALUES (%s, %s, %s) "
        "ON CONFLICT (owner, id) DO UPDATE SET deleted_ms = EXCLUDED.deleted_ms",
        (t.owner, t.id, now_ms()),
    )
    return release(conn, _core.parse_turn_id(t.head))
