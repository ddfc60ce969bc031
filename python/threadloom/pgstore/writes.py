"""The PostgreSQL store's two writes that grow conversations, each the body of one
transaction: an append (after a thread's head, a response, a turn, or as a new conversation)
and a rebase (a thread moved onto a new path). Both lock the thread's row first, so writes to
one thread from any number of servers run one after another."""

from __future__ import annotations

from typing import Any, NamedTuple

from threadloom import _core
from threadloom._core import Appended, Response, Retention, Thread
from threadloom.pgstore import rows
from threadloom.pgstore.connection import Conn, now_ms
from threadloom.pgstore.refs import NewTurn, insert_turns, release, retain


def check_expected(expected_head: str | None) -> str | None:
    """`expected_head` checked before any transaction (a turn id, "" for an empty thread, or
    None: not checked), so a malformed one never queues behind other writers."""
    if expected_head:
        _core.parse_turn_id(expected_head)
    return expected_head


def _open_thread(
    conn: Conn,
    retention: Retention,
    owner: str,
    thread_id: str,
    now: int,
    expected_head: str | None,
) -> tuple[Thread, bytes | None]:
    """The thread, locked, and its head's key, once the core allows writing to it."""
    t = rows.load_thread(conn, retention, owner, thread_id, now, lock=True)
    _core.check_thread_write(t, expected_head)
    return t, None if t.head is None else _core.parse_turn_id(t.head)


def _move_head(
    conn: Conn, owner: str, thread_id: str, head: bytes | None, n: int, now: int
) -> Thread:
    row = conn.execute(
        "UPDATE threadloom_threads SET head = %s, message_count = %s, "
        "last_activity_ms = greatest(last_activity_ms, %s) "
        f"WHERE owner = %s AND id = %s RETURNING {rows.THREAD_COLUMNS}",
        (rows.to_uuid(head), n, now, owner, thread_id),
    ).fetchone()
    assert row is not None  # locked by this transaction
    return rows.thread(row)


class Options(NamedTuple):
    """An append's checks and side effects (see `threadloom.Store.append`)."""

    expected_head: str | None
    windowed: bool
    # With a thread anchor: the response at the thread's head that the new one continues.
    continued: str | None
    # Remove the new response's pending record in the same transaction.
    settle_pending: bool


def append(
    conn: Conn,
    retention: Retention,
    owner: str,
    anchor: tuple[str, Any],
    new: list[NewTurn],
    info: rows.InfoRow | None,
    options: Options,
) -> Appended:
    now = now_ms()
    kind, target = anchor
    thread: Thread | None = None
    previous_response_id: str | None = None
    parent: bytes | None = None
    depth = 0
    windowed = options.windowed
    if kind == "thread":
        thread, parent = _open_thread(conn, retention, owner, target, now, options.expected_head)
        if options.continued is not None:
            r = rows.load_response(conn, retention, owner, options.continued, now, lock="FOR SHARE")
            retention.check_anchor(r, now, windowed)
            _core.check_thread_write(thread, continued_turn=r.last_turn)
            previous_response_id = r.id
        # The thread's reference to its old head passes to the first new turn (its child),
        # so the head's count is unchanged.
        depth = thread.message_count
    elif kind == "response":
        r = rows.load_response(conn, retention, owner, target, now, lock="FOR SHARE")
        retention.check_anchor(r, now, windowed)
        parent = _core.parse_turn_id(r.last_turn)
        depth = retain(conn, parent, None)
        previous_response_id = r.id
    elif kind == "turn":
        parent = target
        depth = retain(conn, target, owner)
    _core.check_length(depth, len(new))

    # The last turn is held by the thread and/or the response; the others by their child.
    last_refs = (thread is not None) + (info is not None)
    keys = insert_turns(conn, owner, parent, depth, new, last_refs, now)
    if thread is not None:
        thread = _move_head(conn, owner, thread.id, keys[-1], depth + len(new), now)
    record = None
    if info is not None:
        record = _insert_response(
            conn, owner, info, keys[-1], parent, len(new), thread, previous_response_id, now
        )
        if options.settle_pending:
            conn.execute(
                "DELETE FROM threadloom_pending WHERE owner = %s AND id = %s",
                (owner, record.id),
            )
    return Appended(
        turn_ids=[_core.turn_id_string(k) for k in keys], response=record, thread=thread
    )


def _insert_response(
    conn: Conn,
    owner: str,
    info: rows.InfoRow,
    last: bytes,
    parent: bytes | None,
    n_turns: int,
    thread: Thread | None,
    previous_response_id: str | None,
    now: int,
) -> Response:
    rid = info.id or _core.new_response_id()
    row = conn.execute(
        f"INSERT INTO threadloom_responses ({rows.RESPONSE_COLUMNS}) VALUES "
        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        f"ON CONFLICT (id) DO NOTHING RETURNING {rows.RESPONSE_COLUMNS}",
        (
            rid,
            owner,
            info.status,
            info.model,
            rows.to_uuid(last),
            rows.to_uuid(parent),
            n_turns - info.output_count,
            info.output_count,
            thread.id if thread is not None else None,
            previous_response_id,
            info.prompt_tokens,
            info.completion_tokens,
            info.cached_tokens,
            info.error,
            now,
            info.metadata,
        ),
    ).fetchone()
    # A reused id would let one response overwrite another's record.
    _core.check_response_id_free(rid, row is None)
    assert row is not None
    return rows.response(row)


def rebase(
    conn: Conn,
    retention: Retention,
    owner: str,
    thread_id: str,
    base: bytes | None,
    new: list[NewTurn],
    expected_head: str | None,
) -> Thread:
    now = now_ms()
    _, old = _open_thread(conn, retention, owner, thread_id, now, expected_head)
    # The base gains one reference: the first new turn's, or the thread's.
    depth = 0 if base is None else retain(conn, base, owner)
    _core.check_length(depth, len(new), rebase=True)
    head = insert_turns(conn, owner, base, depth, new, 1, now)[-1] if new else base
    if old is not None:
        release(conn, old)
    return _move_head(conn, owner, thread_id, head, depth + len(new), now)
