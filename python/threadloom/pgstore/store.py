"""`PostgresStore`: the conversation store on PostgreSQL, with the methods, arguments, records
and errors of the LMDB `threadloom.Store` (docs/storage.md, "PostgreSQL"). Its rules (ids,
owners, states, metadata, turns, cursors, retention) are the core's, called through `_core`.

Every write is one transaction that checks its invariants itself: an append locks the thread's
row (`SELECT ... FOR UPDATE`) before it reads the head, state and message count, so appends to
one thread from any number of servers run one after another and none can overshoot the message
limit, lose a turn or grow a locked thread. Branches (appends after a response or a turn) add a
reference to their parent turn with `UPDATE ... SET refs = refs + 1`, which locks that turn's
row against a concurrent delete. Turns are freed by the same reference counting as in LMDB.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from threadloom import _core
from threadloom._core import (
    Appended,
    Response,
    ResponseInfo,
    Retention,
    Thread,
    ThreadPage,
    Turn,
)
from threadloom.errors import NotFound
from threadloom.pgstore import branches as branch_records
from threadloom.pgstore import maintenance, rows, writes
from threadloom.pgstore.connection import Conn, Database, now_ms
from threadloom.pgstore.refs import release, remove_thread
from threadloom.pgstore.schema import migrate

if TYPE_CHECKING:
    from threadloom.store_counts import StoreStats, SweepCounts

__all__ = ["PostgresStore"]

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

    def _thread(self, conn: Conn, owner: str, thread_id: str, *, lock: bool = False) -> Thread:
        return rows.load_thread(conn, self._retention, owner, thread_id, now_ms(), lock=lock)

    def _response(self, conn: Conn, owner: str, response_id: str, *, lock: str = "") -> Response:
        return rows.load_response(conn, self._retention, owner, response_id, now_ms(), lock=lock)

    # ---- threads ----------------------------------------------------------------------------

    def create_thread(
        self,
        thread_id: str | None = None,
        *,
        owner: str = "default",
        metadata: Mapping[str, Any] | str | bytes | None = None,
        visible: bool = True,
        exist_ok: bool = False,
    ) -> Thread:
        """Creates a thread (a generated `thread_...` id when none is given). With `exist_ok`,
        an existing thread of that id is returned unchanged."""
        meta = _core.normalize_metadata(metadata) or "{}"
        _core.validate_owner(owner)
        if thread_id is not None:
            _core.validate_thread_id(thread_id)
        visible = bool(visible)

        def create(conn: Conn) -> Thread:
            now = now_ms()
            tid = thread_id if thread_id is not None else _core.new_thread_id()
            while True:
                row = conn.execute(
                    "INSERT INTO threadloom_threads (owner, id, head, metadata, state, visible, "
                    "created_ms, last_activity_ms, message_count) "
                    "VALUES (%s, %s, NULL, %s, 'open', %s, %s, %s, 0) "
                    f"ON CONFLICT (owner, id) DO NOTHING RETURNING {rows.THREAD_COLUMNS}",
                    (owner, tid, meta, visible, now, now),
                ).fetchone()
                if row is not None:
                    self._clear_tombstone(conn, owner, tid, exist_ok)
                    return rows.thread(row)
                old = conn.execute(
                    f"SELECT {rows.THREAD_COLUMNS} FROM threadloom_threads "
                    "WHERE owner = %s AND id = %s FOR UPDATE",
                    (owner, tid),
                ).fetchone()
                if old is None:
                    continue  # deleted since the insert saw it: insert again
                t = rows.thread(old)
                if not self._retention.thread_expired(t, now):
                    _core.check_create(tid, exist_ok, live=True, tombstoned=False)
                    return t
                # An expired thread is gone as far as readers know; reclaim it (leaving its
                # tombstone) before deciding on reuse.
                remove_thread(conn, t)

        return self._db.call(create, write=True)

    @staticmethod
    def _clear_tombstone(conn: Conn, owner: str, tid: str, exist_ok: bool) -> None:
        """Create-if-missing must not quietly revive a deleted or expired conversation under
        its old id; an explicit create may reuse it. Raising rolls the new row back."""
        gone = conn.execute(
            "DELETE FROM threadloom_thread_tombstones WHERE owner = %s AND id = %s RETURNING 1",
            (owner, tid),
        ).fetchone()
        _core.check_create(tid, exist_ok, live=False, tombstoned=gone is not None)

    def get_thread(self, thread_id: str, *, owner: str = "default") -> Thread:
        """The thread, or NotFound (also for another owner's or an expired thread)."""
        return self._db.call(lambda c: self._thread(c, owner, thread_id))

    def list_threads(
        self,
        *,
        owner: str = "default",
        visible: bool = True,
        limit: int = 20,
        after: str | None = None,
    ) -> ThreadPage:
        """One page of the owner's visible (or hidden) threads, most recently active first."""
        _core.validate_owner(owner)
        _core.check_page_limit(limit)
        bound = None if after is None else _core.parse_thread_cursor(after)

        def page(conn: Conn) -> ThreadPage:
            live_activity, live_created = self._retention.thread_cutoffs(now_ms())
            sql = (
                f"SELECT {rows.THREAD_COLUMNS} FROM threadloom_threads "
                "WHERE owner = %s AND visible = %s AND last_activity_ms >= %s AND created_ms >= %s"
            )
            args: list[Any] = [owner, bool(visible), live_activity, live_created]
            if bound is not None:
                sql += " AND (last_activity_ms < %s OR (last_activity_ms = %s AND id > %s))"
                args += [bound[0], bound[0], bound[1]]
            sql += " ORDER BY last_activity_ms DESC, id LIMIT %s"
            args.append(limit + 1)
            found = conn.execute(sql, args).fetchall()
            threads = [rows.thread(r) for r in found[:limit]]
            last = threads[-1] if len(found) > limit else None
            cursor = None if last is None else _core.thread_cursor(last.last_activity_ms, last.id)
            return ThreadPage(threads=threads, next_cursor=cursor)

        return self._db.call(page)

    def update_thread(
        self,
        thread_id: str,
        *,
        owner: str = "default",
        metadata: Mapping[str, Any] | str | bytes | None = None,
        state: str | None = None,
    ) -> Thread:
        """Replaces the metadata and/or changes the state (open <-> locked, -> archived)."""
        meta = _core.normalize_metadata(metadata)
        new_state = None if state is None else _core.parse_thread_state(state)

        def update(conn: Conn) -> Thread:
            t = self._thread(conn, owner, thread_id, lock=True)
            if new_state is not None:
                _core.check_state_change(t.state, new_state)
            if meta is not None:
                _core.check_metadata_change(thread_id, t.state, new_state is not None)
            if new_state is None and meta is None:
                return t
            row = conn.execute(
                "UPDATE threadloom_threads SET state = %s, metadata = %s "
                f"WHERE owner = %s AND id = %s RETURNING {rows.THREAD_COLUMNS}",
                (new_state or t.state, meta or t.metadata_json, owner, thread_id),
            ).fetchone()
            assert row is not None  # the row is locked by this transaction
            return rows.thread(row)

        return self._db.call(update, write=True)

    def delete_thread(self, thread_id: str, *, owner: str = "default") -> None:
        """Deletes the thread and every turn that no other thread or live response reaches."""
        self._db.call(
            lambda c: remove_thread(c, self._thread(c, owner, thread_id, lock=True)), write=True
        )

    # ---- writes -----------------------------------------------------------------------------

    def append(
        self,
        turns: Iterable[Mapping[str, str | None]],
        *,
        owner: str = "default",
        thread: str | None = None,
        previous_response_id: str | None = None,
        after_turn: str | None = None,
        response: ResponseInfo | None = None,
        expected_head: str | None = None,
        anchor_window: bool = False,
        settle_pending: bool = False,
    ) -> Appended:
        """Appends turns after a thread's head, a response, a turn, or as a new conversation,
        in one transaction; see `threadloom.Store.append`."""
        new = _core.parse_turns(turns)
        # A thread continued from the response at its head: the thread is the anchor, the
        # response is what the new one records as its previous.
        continued = previous_response_id if thread is not None and after_turn is None else None
        anchor = _core.parse_anchor(
            thread, None if continued else previous_response_id, after_turn
        )
        expected = writes.check_expected(expected_head)
        _core.validate_owner(owner)
        info = None if response is None else rows.InfoRow(response)
        output_count = None if info is None else info.output_count
        _core.check_append_shape(len(new), output_count, anchor[0] == "thread")
        return self._db.call(
            lambda c: writes.append(
                c,
                self._retention,
                owner,
                anchor,
                new,
                info,
                writes.Options(expected, anchor_window, continued, settle_pending),
            ),
            write=True,
        )

    def rebase_thread(
        self,
        thread_id: str,
        turns: Iterable[Mapping[str, str | None]] | None = None,
        *,
        owner: str = "default",
        after_turn: str | None = None,
        expected_head: str | None = None,
    ) -> Thread:
        """Points a thread at a new path (`turns` written after `after_turn`), in one
        transaction; see `threadloom.Store.rebase_thread`."""
        new = _core.parse_turns(turns or [])
        base = None if after_turn is None else _core.parse_turn_id(after_turn)
        expected = writes.check_expected(expected_head)
        _core.validate_owner(owner)
        return self._db.call(
            lambda c: writes.rebase(c, self._retention, owner, thread_id, base, new, expected),
            write=True,
        )

    # ---- branches recorded for a thread ------------------------------------------------------

    def add_branch(
        self,
        thread_id: str,
        response_id: str,
        *,
        owner: str = "default",
        after_turn: str | None = None,
        replaces: Sequence[str] = (),
    ) -> None:
        """Records `response_id` as a branch of the thread and drops the records of
        `replaces`, in one transaction; see `threadloom.Store.add_branch`."""
        _core.validate_response_id(response_id)
        for r in replaces:
            _core.validate_response_id(r)
        after = None if after_turn is None else _core.parse_turn_id(after_turn)

        def write(conn: Conn) -> None:
            self._thread(conn, owner, thread_id, lock=True)
            branch_records.add(conn, owner, thread_id, response_id, after, replaces)

        self._db.call(write, write=True)

    def branches(self, thread_id: str, *, owner: str = "default") -> list[tuple[str, str | None]]:
        """The thread's recorded branches: (response id, the turn it continues or None)."""

        def read(conn: Conn) -> list[tuple[str, str | None]]:
            self._thread(conn, owner, thread_id)
            return branch_records.listed(conn, owner, thread_id)

        return self._db.call(read)

    def children(self, turn_ids: Sequence[str], *, owner: str = "default") -> list[list[str]]:
        """For each of `turn_ids`, the ids of the turns that continue it, whichever route made
        them, in creation order; empty for another owner's or a missing turn. One query for
        them all (the index of migration 7): a tree walk asks a level at once."""
        parents = [rows.to_uuid(_core.parse_turn_id(t)) for t in turn_ids]
        if not parents:
            return []

        def read(conn: Conn) -> list[list[str]]:
            found = conn.execute(
                "SELECT parent, id FROM threadloom_turns WHERE owner = %s AND parent = ANY(%s)"
                " ORDER BY created_ms, id",
                (owner, parents),
            ).fetchall()
            kids: dict[Any, list[str]] = {p: [] for p in parents}
            for parent, child in found:
                kids[parent].append(_core.turn_id_string(child.bytes))
            return [list(kids[p]) for p in parents]

        return self._db.call(read)

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
        anchor = _core.parse_anchor(thread, response, turn)
        _core.check_history(anchor[0] == "root", limit)
        return self._db.call(lambda c: self._history(c, owner, anchor, limit))

    def _history(
        self, conn: Conn, owner: str, anchor: tuple[str, Any], limit: int | None
    ) -> list[Turn]:
        kind, target = anchor
        gone: NotFound
        if kind == "thread":
            t = self._thread(conn, owner, target)
            if t.head is None:
                return []
            start = _core.parse_turn_id(t.head)
            gone = rows.thread_not_found(target)
        elif kind == "response":
            r = self._response(conn, owner, target)
            start = _core.parse_turn_id(r.last_turn)
            gone = rows.response_not_found(target)
        else:
            _core.validate_owner(owner)
            start = target
            row = conn.execute(
                "SELECT owner FROM threadloom_turns WHERE id = %s", (rows.to_uuid(start),)
            ).fetchone()
            if row is None or row[0] != owner:
                raise rows.turn_not_found(start)
            gone = rows.turn_not_found(start)
        # One statement sees one snapshot: the whole history, or (when a concurrent delete
        # won the race since the lookup above) nothing.
        if limit == 0:
            return []
        with conn.cursor(binary=True) as cur:
            most = _core.MAX_THREAD_MESSAGES if limit is None else limit
            found = cur.execute(_WALK, (rows.to_uuid(start), most)).fetchall()
        if not found:
            raise gone
        return [rows.turn(r) for r in found]

    # ---- responses --------------------------------------------------------------------------

    def get_response(self, response_id: str, *, owner: str = "default") -> Response:
        """The response, or NotFound (also for another owner's or an expired one)."""
        return self._db.call(lambda c: self._response(c, owner, response_id))

    def delete_response(self, response_id: str, *, owner: str = "default") -> None:
        """Deletes the response and the turns only it reached."""

        def delete(conn: Conn) -> None:
            r = self._response(conn, owner, response_id, lock="FOR UPDATE")
            conn.execute("DELETE FROM threadloom_responses WHERE id = %s", (r.id,))
            release(conn, _core.parse_turn_id(r.last_turn))

        self._db.call(delete, write=True)

    # ---- pending responses -------------------------------------------------------------------

    @staticmethod
    def _pending_key(owner: str, response_id: str) -> tuple[str, str]:
        _core.validate_owner(owner)
        _core.validate_response_id(response_id)
        return owner, response_id

    def put_pending(self, response_id: str, payload: bytes, *, owner: str) -> None:
        """Records an announced response whose generation runs."""
        key = self._pending_key(owner, response_id)
        self._db.call(
            lambda c: c.execute(
                "INSERT INTO threadloom_pending (owner, id, payload) VALUES (%s, %s, %s) "
                "ON CONFLICT (owner, id) DO UPDATE SET payload = EXCLUDED.payload",
                (*key, payload),
            ),
            write=True,
        )

    def remove_pending(self, response_id: str, *, owner: str) -> None:
        key = self._pending_key(owner, response_id)
        self._db.call(
            lambda c: c.execute("DELETE FROM threadloom_pending WHERE owner = %s AND id = %s", key),
            write=True,
        )

    def get_pending(self, response_id: str, *, owner: str) -> bytes | None:
        key = self._pending_key(owner, response_id)
        row = self._db.call(
            lambda c: c.execute(
                "SELECT payload FROM threadloom_pending WHERE owner = %s AND id = %s", key
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    def put_summary(self, name: str, text: str, *, owner: str) -> None:
        """Keeps a summary the model wrote under `name` (the owner's own)."""
        _core.check_summary(owner, name, text)
        self._db.call(
            lambda c: c.execute(
                "INSERT INTO threadloom_summaries (owner, name, text) VALUES (%s, %s, %s) "
                "ON CONFLICT (owner, name) DO UPDATE SET text = EXCLUDED.text",
                (owner, name, text.encode()),
            ),
            write=True,
        )

    def get_summary(self, name: str, *, owner: str) -> str | None:
        _core.check_summary(owner, name)
        row = self._db.call(
            lambda c: c.execute(
                "SELECT text FROM threadloom_summaries WHERE owner = %s AND name = %s",
                (owner, name),
            ).fetchone()
        )
        return None if row is None else bytes(row[0]).decode()

    def shared_secret(self, name: str, fresh: bytes) -> bytes:
        """The secret `name`, set to `fresh` by the first server that asks: every server on
        this database gets the same one."""

        def settle(conn: Conn) -> bytes:
            conn.execute(
                "INSERT INTO threadloom_secrets (name, value) VALUES (%s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (name, fresh),
            )
            row = conn.execute(
                "SELECT value FROM threadloom_secrets WHERE name = %s", (name,)
            ).fetchone()
            assert row is not None  # inserted above, or by another server first
            return bytes(row[0])

        return self._db.call(settle, write=True)

    def pending(self) -> list[tuple[str, str, bytes]]:
        """Every pending record as (owner, response id, payload)."""
        found = self._db.call(
            lambda c: c.execute(
                "SELECT owner, id, payload FROM threadloom_pending ORDER BY owner, id"
            ).fetchall()
        )
        return [(owner, rid, bytes(payload)) for owner, rid, payload in found]

    # ---- retention and maintenance ----------------------------------------------------------

    def sweep(self) -> SweepCounts:
        """Deletes expired threads and responses; returns how many threads, responses and
        turns."""
        return maintenance.sweep(self._db, self._retention)

    def stats(self) -> StoreStats:
        """Counts of threads, responses and turns, and the tables' size on disk in bytes."""
        return maintenance.stats(self._db)

    def verify(self) -> None:
        """Checks the reference counts and parent links against the records; raises
        StoreFormatError on the first problem. For tests and `threadloom check`."""
        maintenance.verify(self._db)
