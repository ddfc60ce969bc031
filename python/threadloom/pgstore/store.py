"""`PostgresStore`: the conversation store on PostgreSQL, with the methods, arguments, records
and errors of the LMDB `threadloom.Store` (docs/storage.md, "PostgreSQL").

Every write is one transaction that checks its invariants itself: an append locks the thread's
row (`SELECT ... FOR UPDATE`) before it reads the head, state and message count, so appends to
one thread from any number of servers run one after another and none can overshoot the message
limit, lose a turn or grow a locked thread. Branches (appends after a response or a turn) add a
reference to their parent turn with `UPDATE ... SET refs = refs + 1`, which locks that turn's
row against a concurrent delete. Turns are freed by the same reference counting as in LMDB.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from threadloom._core import ResponseInfo, Retention
from threadloom.errors import (
    InvalidInput,
    LimitExceeded,
    NotFound,
    StateConflict,
    StoreFormatError,
)
from threadloom.pgstore import checks
from threadloom.pgstore import rows as rowmap
from threadloom.pgstore.checks import Anchor, debug_str
from threadloom.pgstore.connection import Conn, Database, now_ms
from threadloom.pgstore.records import Appended, Response, ThreadPage, Turn
from threadloom.pgstore.records import Thread as ThreadRecord
from threadloom.pgstore.schema import migrate

__all__ = ["PostgresStore"]


ROLE_NAMES = checks.ROLES
SWEEP_BATCH = 512

_THREAD_COLUMNS = (
    "owner, id, head, metadata, state, visible, created_ms, last_activity_ms, message_count"
)
_RESPONSE_COLUMNS = (
    "id, owner, status, model, last_turn, parent_turn, input_count, output_count, thread_id, "
    "previous_response_id, prompt_tokens, completion_tokens, cached_tokens, error, created_ms, "
    "metadata"
)
# The history ending at a turn, at most %s turns of it (the newest), oldest first.
_WALK = """
    WITH RECURSIVE h AS (
        SELECT id, parent, role, depth, created_ms, content, reasoning, tool, 1 AS n
        FROM threadloom_turns WHERE id = %s
        UNION ALL
        SELECT t.id, t.parent, t.role, t.depth, t.created_ms, t.content, t.reasoning, t.tool,
            h.n + 1
        FROM threadloom_turns t JOIN h ON t.id = h.parent
        WHERE h.n < %s
    )
    SELECT id, parent, role, depth, created_ms, content, reasoning, tool FROM h ORDER BY depth
"""


class _Policy:
    """The retention rules in milliseconds: the PostgreSQL mirror of rust/src/store/retention.rs.
    Every expiry decision of this store goes through here."""

    def __init__(self, retention: Retention) -> None:
        self.thread_inactivity = rowmap.ms(retention.thread_inactivity_s)
        self.thread_max_age = rowmap.ms(retention.thread_max_age_s)
        self.response_ttl = rowmap.ms(retention.response_ttl_s)
        self.anchor_window = rowmap.ms(retention.anchor_window_s)

    def thread_expired(self, created: int, activity: int, now: int) -> bool:
        return now - activity > self.thread_inactivity or now - created > self.thread_max_age

    def thread_cutoffs(self, now: int) -> tuple[int, int]:
        """(oldest live last activity, oldest live creation): SQL's form of `thread_expired`."""
        return now - self.thread_inactivity, now - self.thread_max_age

    def response_expired(self, created: int, now: int) -> bool:
        return now - created > self.response_ttl

    def response_cutoff(self, now: int) -> int:
        return now - self.response_ttl

    def check_anchor(self, r: Response, now: int, windowed: bool) -> None:
        if r.status == "failed":
            raise StateConflict(f"response {r.id} has status {r.status} and cannot be continued")
        if windowed and now - r.created_ms > self.anchor_window:
            raise NotFound(
                f"response {r.id} is older than the {self.anchor_window // 1000} s window for "
                "continuing a response"
            )


class PostgresStore:
    """The conversation store in a PostgreSQL database, shared by any number of servers.

    `url` is a libpq URL (`postgresql://user:password@host:port/db?sslmode=...`); two extra
    query options size the connection pool: `pool_size` (connections, default 10) and
    `pool_timeout` (seconds a call waits for a connection before `StoreUnavailable`, default 5).
    Opening applies pending schema migrations. Every method blocks; the GIL is released while
    it waits on the database.
    """

    def __init__(
        self,
        url: str,
        *,
        retention: Retention | None = None,
        pool_size: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self._db = Database(url, pool_size=pool_size, timeout=timeout)
        self._url = self._db.url
        self._retention = retention or Retention()
        self._policy = _Policy(self._retention)
        try:
            self._version = self._db.call(migrate)
        except BaseException:
            self._db.close(timeout=1.0)
            raise

    # ---- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection pool. The store cannot be used afterwards."""
        self._db.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self._url!r})"

    @property
    def path(self) -> str:
        """The database URL, without its password."""
        return self._url

    @property
    def retention(self) -> Retention:
        return self._retention

    @property
    def format_version(self) -> int:
        """The schema version (the highest migration applied)."""
        row = self._db.call(
            lambda c: c.execute("SELECT max(version) FROM threadloom_schema").fetchone()
        )
        return int(row[0]) if row else 0

    # ---- records inside a transaction -------------------------------------------------------

    def _load_thread(
        self, conn: Conn, owner: str, thread_id: str, now: int, *, lock: bool = False
    ) -> ThreadRecord:
        checks.validate_owner(owner)
        checks.validate_thread_id(thread_id)
        row = conn.execute(
            f"SELECT {_THREAD_COLUMNS} FROM threadloom_threads WHERE owner = %s AND id = %s"
            + (" FOR UPDATE" if lock else ""),
            (owner, thread_id),
        ).fetchone()
        if row is None:
            raise rowmap.thread_not_found(thread_id)
        t = rowmap.thread(row)
        if self._policy.thread_expired(t.created_ms, t.last_activity_ms, now):
            raise rowmap.thread_not_found(thread_id)
        return t

    def _load_response(
        self, conn: Conn, owner: str, response_id: str, now: int, *, lock: str = ""
    ) -> Response:
        checks.validate_owner(owner)
        checks.validate_response_id(response_id)
        row = conn.execute(
            f"SELECT {_RESPONSE_COLUMNS} FROM threadloom_responses WHERE id = %s {lock}",
            (response_id,),
        ).fetchone()
        if row is None:
            raise rowmap.response_not_found(response_id)
        r = rowmap.response(row)
        # Another tenant's response reads exactly like a missing one.
        if r.owner != owner or self._policy.response_expired(r.created_ms, now):
            raise rowmap.response_not_found(response_id)
        return r

    def _remove_thread(self, conn: Conn, t: ThreadRecord) -> int:
        """Deletes a thread row and releases its head; returns the turns deleted. A thread that
        held messages leaves a tombstone (see `_clear_tombstone`)."""
        conn.execute("DELETE FROM threadloom_threads WHERE owner = %s AND id = %s", (t.owner, t.id))
        if t.head is None:
            return 0  # an empty thread had no history to lose: its id stays free
        conn.execute(
            "INSERT INTO threadloom_thread_tombstones (owner, id, deleted_ms) VALUES (%s, %s, %s) "
            "ON CONFLICT (owner, id) DO UPDATE SET deleted_ms = EXCLUDED.deleted_ms",
            (t.owner, t.id, now_ms()),
        )
        return self._release(conn, checks.parse_turn_id(t.head))

    @staticmethod
    def _release(conn: Conn, key: bytes) -> int:
        row = conn.execute("SELECT threadloom_release(%s)", (rowmap.to_uuid(key),)).fetchone()
        return int(row[0]) if row else 0

    # ---- threads ----------------------------------------------------------------------------

    def create_thread(
        self,
        thread_id: str | None = None,
        *,
        owner: str = "default",
        metadata: Mapping[str, Any] | str | bytes | None = None,
        visible: bool = True,
        exist_ok: bool = False,
    ) -> ThreadRecord:
        """Creates a thread (a generated `thread_...` id when none is given). With `exist_ok`,
        an existing thread of that id is returned unchanged."""
        text = checks.metadata_text(metadata)
        checks.validate_owner(owner)
        if thread_id is not None:
            checks.validate_thread_id(thread_id)
        meta = checks.normalize_metadata(text)
        visible = bool(visible)

        def create(conn: Conn) -> ThreadRecord:
            now = now_ms()
            tid = thread_id if thread_id is not None else checks.new_thread_id()
            while True:
                row = conn.execute(
                    "INSERT INTO threadloom_threads (owner, id, head, metadata, state, visible, "
                    "created_ms, last_activity_ms, message_count) "
                    "VALUES (%s, %s, NULL, %s, 'open', %s, %s, %s, 0) "
                    f"ON CONFLICT (owner, id) DO NOTHING RETURNING {_THREAD_COLUMNS}",
                    (owner, tid, meta, visible, now, now),
                ).fetchone()
                if row is not None:
                    self._clear_tombstone(conn, owner, tid, exist_ok)
                    return rowmap.thread(row)
                old = conn.execute(
                    f"SELECT {_THREAD_COLUMNS} FROM threadloom_threads "
                    "WHERE owner = %s AND id = %s FOR UPDATE",
                    (owner, tid),
                ).fetchone()
                if old is None:
                    continue  # deleted since the insert saw it: insert again
                t = rowmap.thread(old)
                if not self._policy.thread_expired(t.created_ms, t.last_activity_ms, now):
                    if exist_ok:
                        return t
                    raise StateConflict(f"thread {debug_str(tid)} already exists")
                # An expired thread is gone as far as readers know; reclaim it (leaving its
                # tombstone) before deciding on reuse.
                self._remove_thread(conn, t)

        return self._db.call(create, write=True)

    @staticmethod
    def _clear_tombstone(conn: Conn, owner: str, tid: str, exist_ok: bool) -> None:
        """Create-if-missing must not quietly revive a deleted or expired conversation under
        its old id; an explicit create may reuse it. Raising rolls the new row back."""
        gone = conn.execute(
            "DELETE FROM threadloom_thread_tombstones WHERE owner = %s AND id = %s RETURNING 1",
            (owner, tid),
        ).fetchone()
        if gone is not None and exist_ok:
            raise NotFound(f"thread {debug_str(tid)} was deleted or expired")

    def get_thread(self, thread_id: str, *, owner: str = "default") -> ThreadRecord:
        """The thread, or NotFound (also for another owner's or an expired thread)."""
        return self._db.call(lambda c: self._load_thread(c, owner, thread_id, now_ms()))

    def list_threads(
        self,
        *,
        owner: str = "default",
        visible: bool = True,
        limit: int = 20,
        after: str | None = None,
    ) -> ThreadPage:
        """One page of the owner's visible (or hidden) threads, most recently active first."""
        checks.validate_owner(owner)
        if not 1 <= limit <= 1000:
            raise InvalidInput(f"limit must be between 1 and 1000, got {limit}")
        bound: tuple[int, str] | None = None
        if after is not None:
            bound = rowmap.parse_cursor(after)

        def page(conn: Conn) -> ThreadPage:
            live_activity, live_created = self._policy.thread_cutoffs(now_ms())
            sql = (
                f"SELECT {_THREAD_COLUMNS} FROM threadloom_threads "
                "WHERE owner = %s AND visible = %s AND last_activity_ms >= %s AND created_ms >= %s"
            )
            args: list[Any] = [owner, bool(visible), live_activity, live_created]
            if bound is not None:
                sql += " AND (last_activity_ms < %s OR (last_activity_ms = %s AND id > %s))"
                args += [bound[0], bound[0], bound[1]]
            sql += " ORDER BY last_activity_ms DESC, id LIMIT %s"
            args.append(limit + 1)
            rows = conn.execute(sql, args).fetchall()
            threads = [rowmap.thread(r) for r in rows[:limit]]
            cursor = rowmap.cursor(threads[-1]) if len(rows) > limit else None
            return ThreadPage(threads=threads, next_cursor=cursor)

        return self._db.call(page)

    def update_thread(
        self,
        thread_id: str,
        *,
        owner: str = "default",
        metadata: Mapping[str, Any] | str | bytes | None = None,
        state: str | None = None,
    ) -> ThreadRecord:
        """Replaces the metadata and/or changes the state (open <-> locked, -> archived)."""
        text = checks.metadata_text(metadata)
        new_state = None if state is None else checks.parse_state(state)
        meta = None if text is None else checks.normalize_metadata(text)

        def update(conn: Conn) -> ThreadRecord:
            t = self._load_thread(conn, owner, thread_id, now_ms(), lock=True)
            changes: dict[str, Any] = {}
            if new_state is not None:
                checks.check_transition(t.state, new_state)
                changes["state"] = new_state
            if meta is not None:
                if t.state == "archived" and new_state is None:
                    raise StateConflict(
                        f"thread {debug_str(thread_id)} is archived; its metadata cannot change"
                    )
                changes["metadata"] = meta
            if not changes:
                return t
            row = conn.execute(
                "UPDATE threadloom_threads SET state = %s, metadata = %s "
                f"WHERE owner = %s AND id = %s RETURNING {_THREAD_COLUMNS}",
                (
                    changes.get("state", t.state),
                    changes.get("metadata", t.metadata_json),
                    owner,
                    thread_id,
                ),
            ).fetchone()
            assert row is not None  # the row is locked by this transaction
            return rowmap.thread(row)

        return self._db.call(update, write=True)

    def delete_thread(self, thread_id: str, *, owner: str = "default") -> None:
        """Deletes the thread and every turn that no other thread or live response reaches."""

        def delete(conn: Conn) -> None:
            t = self._load_thread(conn, owner, thread_id, now_ms(), lock=True)
            self._remove_thread(conn, t)

        self._db.call(delete, write=True)

    # ---- appends ----------------------------------------------------------------------------

    def append(
        self,
        turns: Iterable[Mapping[str, str | None]],
        *,
        owner: str = "default",
        thread: str | None = None,
        after_response: str | None = None,
        after_turn: str | None = None,
        response: ResponseInfo | None = None,
        expected_head: str | None = None,
        anchor_window: bool = False,
    ) -> Appended:
        """Appends turns after a thread's head, a response, a turn, or as a new conversation,
        in one transaction; see `threadloom.Store.append`."""
        new = checks.parse_turns(turns)
        anchor = checks.anchor_from(thread, after_response, after_turn)
        expected: bytes | bool | None = False  # False: not checked; None: an empty thread
        if expected_head is not None:
            expected = None if expected_head == "" else checks.parse_turn_id(expected_head)
        checks.validate_owner(owner)
        if not new:
            raise InvalidInput("nothing to append: turns is empty")
        rowmap.check_sizes(new)
        info: rowmap.InfoRow | None = None
        if response is not None:
            info = rowmap.InfoRow(response)
            if info.output_count > len(new):
                raise InvalidInput(
                    f"output_count {info.output_count} exceeds the {len(new)} turns appended"
                )
            if info.id is not None:
                checks.validate_response_id(info.id)
            info.metadata = checks.normalize_metadata(info.metadata)
        if info is None and anchor.kind != "thread":
            raise InvalidInput("turns appended outside a thread must be recorded under a response")

        def write(conn: Conn) -> Appended:
            return self._append(conn, owner, anchor, new, info, expected, anchor_window)

        return self._db.call(write, write=True)

    def _append(
        self,
        conn: Conn,
        owner: str,
        anchor: Anchor,
        new: list[checks.NewTurn],
        info: rowmap.InfoRow | None,
        expected: bytes | bool | None,
        windowed: bool,
    ) -> Appended:
        now = now_ms()
        thread: ThreadRecord | None = None
        previous_response_id: str | None = None
        parent: bytes | None = None
        depth = 0
        if anchor.kind == "thread":
            thread = self._load_thread(conn, owner, anchor.thread, now, lock=True)
            if thread.state != "open":
                raise StateConflict(
                    f"thread {debug_str(anchor.thread)} is {thread.state} and accepts no new "
                    "messages"
                )
            parent = None if thread.head is None else checks.parse_turn_id(thread.head)
            if expected is not False and expected != parent:
                raise StateConflict(
                    f"thread {debug_str(anchor.thread)} moved on: its head is no longer the "
                    "expected turn"
                )
            # The thread's reference to its old head passes to the first new turn (its child),
            # so the head's count is unchanged.
            depth = thread.message_count
        elif anchor.kind == "response":
            r = self._load_response(conn, owner, anchor.response, now, lock="FOR SHARE")
            self._policy.check_anchor(r, now, windowed)
            parent = checks.parse_turn_id(r.last_turn)
            depth = self._retain(conn, parent, None)
            previous_response_id = r.id
        elif anchor.kind == "turn":
            parent = anchor.turn
            depth = self._retain(conn, parent, owner)
        new_depth = depth + len(new)
        if new_depth > checks.MAX_THREAD_MESSAGES:
            raise LimitExceeded(
                f"a conversation may hold at most {checks.MAX_THREAD_MESSAGES} messages; it has "
                f"{depth} and {len(new)} more were sent"
            )

        # The last turn is held by the thread and/or the response; the others by their child.
        last_refs = (thread is not None) + (info is not None)
        keys = rowmap.insert_turns(conn, owner, parent, depth, new, last_refs, now)
        last = keys[-1]
        if thread is not None:
            row = conn.execute(
                "UPDATE threadloom_threads SET head = %s, message_count = %s, "
                "last_activity_ms = greatest(last_activity_ms, %s) "
                f"WHERE owner = %s AND id = %s RETURNING {_THREAD_COLUMNS}",
                (rowmap.to_uuid(last), new_depth, now, owner, thread.id),
            ).fetchone()
            assert row is not None  # locked by this transaction
            thread = rowmap.thread(row)

        record: Response | None = None
        if info is not None:
            rid = info.id or checks.new_response_id()
            n_out = info.output_count
            row = conn.execute(
                f"INSERT INTO threadloom_responses ({_RESPONSE_COLUMNS}) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                f"ON CONFLICT (id) DO NOTHING RETURNING {_RESPONSE_COLUMNS}",
                (
                    rid,
                    owner,
                    info.status,
                    info.model,
                    rowmap.to_uuid(last),
                    rowmap.to_uuid(parent),
                    len(new) - n_out,
                    n_out,
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
            if row is None:
                # A reused id would let one response overwrite another's record.
                raise StateConflict(f"response {rid} already exists")
            record = rowmap.response(row)
        return Appended(
            turn_ids=[checks.turn_id_string(k) for k in keys], response=record, thread=thread
        )

    @staticmethod
    def _retain(conn: Conn, key: bytes, owner: str | None) -> int:
        """Adds a child's reference to a turn (locking its row, so a concurrent release either
        runs first and deletes it, or sees the reference); returns the turn's depth. With
        `owner`, another owner's turn is NotFound."""
        sql = "UPDATE threadloom_turns SET refs = refs + 1 WHERE id = %s"
        args: list[Any] = [rowmap.to_uuid(key)]
        if owner is not None:
            sql += " AND owner = %s"
            args.append(owner)
        row = conn.execute(sql + " RETURNING depth", args).fetchone()
        if row is None:
            raise rowmap.turn_not_found(key)
        return int(row[0])

    def rebase_thread(
        self,
        thread_id: str,
        turns: Iterable[Mapping[str, str | None]] | None = None,
        *,
        owner: str = "default",
        after_turn: str | None = None,
        expected_head: str | None = None,
    ) -> ThreadRecord:
        """Points a thread at a new path (`turns` written after `after_turn`), in one
        transaction; see `threadloom.Store.rebase_thread`."""
        new = checks.parse_turns(turns or [])
        base = None if after_turn is None else checks.parse_turn_id(after_turn)
        expected: bytes | bool | None = False  # False: not checked; None: an empty thread
        if expected_head is not None:
            expected = None if expected_head == "" else checks.parse_turn_id(expected_head)
        checks.validate_owner(owner)
        rowmap.check_sizes(new)

        def write(conn: Conn) -> ThreadRecord:
            now = now_ms()
            t = self._load_thread(conn, owner, thread_id, now, lock=True)
            if t.state != "open":
                raise StateConflict(
                    f"thread {debug_str(thread_id)} is {t.state} and accepts no new messages"
                )
            old = None if t.head is None else checks.parse_turn_id(t.head)
            if expected is not False and expected != old:
                raise StateConflict(
                    f"thread {debug_str(thread_id)} moved on: its head is no longer the "
                    "expected turn"
                )
            # The base gains one reference: the first new turn's, or the thread's.
            depth = 0 if base is None else self._retain(conn, base, owner)
            new_depth = depth + len(new)
            if new_depth > checks.MAX_THREAD_MESSAGES:
                raise LimitExceeded(
                    f"a conversation may hold at most {checks.MAX_THREAD_MESSAGES} messages; "
                    f"it would have {new_depth}"
                )
            head = rowmap.insert_turns(conn, owner, base, depth, new, 1, now)[-1] if new else base
            if old is not None:
                self._release(conn, old)
            row = conn.execute(
                "UPDATE threadloom_threads SET head = %s, message_count = %s, "
                "last_activity_ms = greatest(last_activity_ms, %s) "
                f"WHERE owner = %s AND id = %s RETURNING {_THREAD_COLUMNS}",
                (rowmap.to_uuid(head), new_depth, now, owner, thread_id),
            ).fetchone()
            assert row is not None  # locked by this transaction
            return rowmap.thread(row)

        return self._db.call(write, write=True)

    # ---- history ----------------------------------------------------------------------------

    def history(
        self,
        *,
        owner: str = "default",
        thread: str | None = None,
        response: str | None = None,
        turn: str | None = None,
        limit: int | None = None,
    ) -> list[Turn]:
        """The conversation ending at a thread's head, a response or a turn, oldest first;
        with `limit`, only its newest `limit` turns."""
        anchor = checks.anchor_from(thread, response, turn)
        if anchor.kind == "root":
            raise InvalidInput("give one of thread, response and turn")
        if limit is not None and limit < 0:
            raise InvalidInput("limit must not be negative")
        return self._db.call(lambda c: self._history(c, owner, anchor, limit))

    def _history(self, conn: Conn, owner: str, anchor: Anchor, limit: int | None) -> list[Turn]:
        now = now_ms()
        gone: NotFound
        if anchor.kind == "thread":
            t = self._load_thread(conn, owner, anchor.thread, now)
            if t.head is None:
                return []
            start = checks.parse_turn_id(t.head)
            gone = rowmap.thread_not_found(anchor.thread)
        elif anchor.kind == "response":
            r = self._load_response(conn, owner, anchor.response, now)
            start = checks.parse_turn_id(r.last_turn)
            gone = rowmap.response_not_found(anchor.response)
        else:
            checks.validate_owner(owner)
            start = anchor.turn
            row = conn.execute(
                "SELECT owner FROM threadloom_turns WHERE id = %s", (rowmap.to_uuid(start),)
            ).fetchone()
            if row is None or row[0] != owner:
                raise rowmap.turn_not_found(start)
            gone = rowmap.turn_not_found(start)
        # One statement sees one snapshot: the whole history, or (when a concurrent delete
        # won the race since the lookup above) nothing.
        if limit == 0:
            return []
        with conn.cursor(binary=True) as cur:
            most = checks.MAX_THREAD_MESSAGES if limit is None else limit
            rows = cur.execute(_WALK, (rowmap.to_uuid(start), most)).fetchall()
        if not rows:
            raise gone
        return [rowmap.turn(r) for r in rows]

    # ---- responses --------------------------------------------------------------------------

    def get_response(self, response_id: str, *, owner: str = "default") -> Response:
        """The response, or NotFound (also for another owner's or an expired one)."""
        return self._db.call(lambda c: self._load_response(c, owner, response_id, now_ms()))

    def delete_response(self, response_id: str, *, owner: str = "default") -> None:
        """Deletes the response and the turns only it reached."""

        def delete(conn: Conn) -> None:
            r = self._load_response(conn, owner, response_id, now_ms(), lock="FOR UPDATE")
            conn.execute("DELETE FROM threadloom_responses WHERE id = %s", (r.id,))
            self._release(conn, checks.parse_turn_id(r.last_turn))

        self._db.call(delete, write=True)

    # ---- pending responses -------------------------------------------------------------------

    def put_pending(self, response_id: str, payload: bytes, *, owner: str) -> None:
        """Records an announced response whose generation runs."""
        checks.validate_owner(owner)
        checks.validate_response_id(response_id)
        self._db.call(
            lambda c: c.execute(
                "INSERT INTO threadloom_pending (owner, id, payload) VALUES (%s, %s, %s) "
                "ON CONFLICT (owner, id) DO UPDATE SET payload = EXCLUDED.payload",
                (owner, response_id, payload),
            ),
            write=True,
        )

    def remove_pending(self, response_id: str, *, owner: str) -> None:
        checks.validate_owner(owner)
        checks.validate_response_id(response_id)
        self._db.call(
            lambda c: c.execute(
                "DELETE FROM threadloom_pending WHERE owner = %s AND id = %s",
                (owner, response_id),
            ),
            write=True,
        )

    def get_pending(self, response_id: str, *, owner: str) -> bytes | None:
        checks.validate_owner(owner)
        checks.validate_response_id(response_id)
        row = self._db.call(
            lambda c: c.execute(
                "SELECT payload FROM threadloom_pending WHERE owner = %s AND id = %s",
                (owner, response_id),
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    def pending(self) -> list[tuple[str, str, bytes]]:
        """Every pending record as (owner, response id, payload)."""
        rows = self._db.call(
            lambda c: c.execute(
                "SELECT owner, id, payload FROM threadloom_pending ORDER BY owner, id"
            ).fetchall()
        )
        return [(owner, rid, bytes(payload)) for owner, rid, payload in rows]

    # ---- retention and maintenance ----------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Deletes expired threads and responses; returns how many threads, responses and
        turns. Batches of 512 per transaction; rows another sweep holds are skipped."""
        totals = {"threads": 0, "responses": 0, "turns": 0}

        def batch(conn: Conn) -> tuple[int, int, int]:
            now = now_ms()
            live_activity, live_created = self._policy.thread_cutoffs(now)
            threads = conn.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threadloom_threads "
                "WHERE last_activity_ms < %s OR created_ms < %s "
                "LIMIT %s FOR UPDATE SKIP LOCKED",
                (live_activity, live_created, SWEEP_BATCH),
            ).fetchall()
            turns = sum(self._remove_thread(conn, rowmap.thread(row)) for row in threads)
            dead = conn.execute(
                "DELETE FROM threadloom_responses WHERE id IN (SELECT id FROM "
                "threadloom_responses WHERE created_ms < %s LIMIT %s FOR UPDATE SKIP LOCKED) "
                "RETURNING last_turn",
                (self._policy.response_cutoff(now), SWEEP_BATCH),
            ).fetchall()
            turns += sum(self._release(conn, row[0].bytes) for row in dead)
            return len(threads), len(dead), turns

        while True:
            n_threads, n_responses, n_turns = self._db.call(batch, write=True)
            totals["threads"] += n_threads
            totals["responses"] += n_responses
            totals["turns"] += n_turns
            if n_threads < SWEEP_BATCH and n_responses < SWEEP_BATCH:
                return totals

    def stats(self) -> dict[str, int]:
        """Counts of threads, responses and turns (expired ones included until swept), and the
        tables' size on disk in bytes (as both `file_bytes` and `map_bytes`)."""

        def count(conn: Conn) -> dict[str, int]:
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

        return self._db.call(count)

    def verify(self) -> None:
        """Checks the reference counts and parent links against the records, in one snapshot;
        raises StoreFormatError on the first problem. For tests and `threadloom check`."""

        def check(conn: Conn) -> None:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                _verify(conn)
            finally:
                conn.execute("ROLLBACK")

        self._db.call(check)


def _verify(conn: Conn) -> None:
    def first(sql: str) -> tuple[Any, ...] | None:
        return conn.execute(sql).fetchone()

    def name(value: uuid.UUID) -> str:
        return checks.turn_id_string(value.bytes)

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
        raise StoreFormatError(f"thread {debug_str(row[0])} has a wrong message count")
