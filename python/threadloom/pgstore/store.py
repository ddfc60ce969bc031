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

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg_pool
from psycopg import errors as pgerrors

from threadloom._core import ResponseInfo, Retention
from threadloom.errors import (
    InvalidInput,
    LimitExceeded,
    NotFound,
    StateConflict,
    StoreError,
    StoreFormatError,
    StoreUnavailable,
)
from threadloom.pgstore import checks
from threadloom.pgstore.checks import Anchor, debug_str
from threadloom.pgstore.records import Appended, Response, ThreadPage, Turn
from threadloom.pgstore.records import Thread as ThreadRecord
from threadloom.pgstore.schema import migrate
from threadloom.storage import describe

__all__ = ["PostgresStore"]

R = TypeVar("R")
Conn = psycopg.Connection[Any]

ROLE_NAMES = checks.ROLES
SWEEP_BATCH = 512
# Deadlocks (two sweeps releasing crossing chains) and serialization failures are retried.
RETRIES = 5
# How long a call waits for a connection while the database is known to be down.
OUTAGE_WAIT_S = 1.0
RECONNECT_S = 5.0
SESSION_LIMITS = {"statement_timeout": "30s", "lock_timeout": "10s"}
# Options of the URL's query that configure the pool rather than libpq.
POOL_OPTIONS = ("pool_size", "pool_timeout")
DEFAULT_CONNECT = {
    "connect_timeout": "5",
    # Notice a peer that vanished (a network partition, not a clean shutdown) within ~25 s.
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "application_name": "threadloom",
}

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


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """Separates the pool options from the libpq URL and adds the connection defaults."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    pool = {k: query.pop(k) for k in POOL_OPTIONS if k in query}
    for key, value in DEFAULT_CONNECT.items():
        query.setdefault(key, value)
    return urlunsplit(parts._replace(query=urlencode(query))), pool


def _configure(conn: Conn) -> None:
    """Session limits for every new connection, where neither the URL nor the role set one:
    a stuck peer holding a row lock, or a runaway query, fails the call (503) instead of
    holding a request forever."""
    for name, value in SESSION_LIMITS.items():
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
        if row is not None and row[0] == "0":
            conn.execute(f"SET {name} = '{value}'")


def _uuid(key: bytes | None) -> uuid.UUID | None:
    return None if key is None else uuid.UUID(bytes=key)


def _turn_id(value: uuid.UUID | None) -> str | None:
    return None if value is None else checks.turn_id_string(value.bytes)


def _thread(row: tuple[Any, ...]) -> ThreadRecord:
    owner, tid, head, metadata, state, visible, created, activity, count = row
    return ThreadRecord(
        id=tid,
        owner=owner,
        head=_turn_id(head),
        metadata_json=metadata,
        state=state,
        visible=visible,
        created_ms=created,
        last_activity_ms=activity,
        message_count=count,
    )


def _response(row: tuple[Any, ...]) -> Response:
    (rid, owner, status, model, last, parent, n_in, n_out, thread_id, previous, prompt,
     completion, cached, error, created, metadata) = row  # fmt: skip
    return Response(
        id=rid,
        owner=owner,
        status=status,
        model=model,
        last_turn=checks.turn_id_string(last.bytes),
        parent_turn=_turn_id(parent),
        input_count=n_in,
        output_count=n_out,
        thread_id=thread_id,
        previous_response_id=previous,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        error=error,
        created_ms=created,
        metadata_json=metadata,
    )


def _turn(row: tuple[Any, ...]) -> Turn:
    key, parent, role, depth, created, content, reasoning, tool = row
    return Turn(
        key=key.bytes,
        parent_key=None if parent is None else parent.bytes,
        role=ROLE_NAMES[role],
        content=content.decode("utf-8"),
        reasoning=None if reasoning is None else reasoning.decode("utf-8"),
        depth=depth,
        created_ms=created,
        tool=None if tool is None else tool.decode("utf-8"),
    )


def _check_sizes(new: list[checks.NewTurn]) -> None:
    for t in new:
        if t.size > checks.MAX_TURN_BYTES:
            raise LimitExceeded(
                f"a turn holds {t.size} bytes of text; the limit is {checks.MAX_TURN_BYTES}"
            )


def _insert_turns(
    conn: Conn,
    owner: str,
    parent: bytes | None,
    depth: int,
    new: list[checks.NewTurn],
    last_refs: int,
    now: int,
) -> list[bytes]:
    """Writes `new` as a chain after `parent` (at `depth`), each referenced by its child and
    the last by `last_refs` holders; returns their keys. The parent's reference from the first
    is the caller's to count."""
    keys: list[bytes] = []
    prev = parent
    for _ in new:
        prev = checks.new_turn_key(now, prev)
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
            [_uuid(k) for k in keys],
            [_uuid(parent), *(_uuid(k) for k in keys[:-1])],
            [t.role for t in new],
            list(range(depth + 1, depth + len(new) + 1)),
            [1] * (len(new) - 1) + [last_refs],
            [t.content for t in new],
            [t.reasoning for t in new],
            [t.tool for t in new],
        ),
    )
    return keys


def _thread_not_found(thread_id: str) -> NotFound:
    return NotFound(f"thread {debug_str(thread_id)} not found")


def _response_not_found(response_id: str) -> NotFound:
    return NotFound(f"response {debug_str(response_id)} not found")


def _turn_not_found(key: bytes) -> NotFound:
    return NotFound(f"turn {debug_str(checks.turn_id_string(key))} not found")


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class _Policy:
    """The retention rules in milliseconds: the PostgreSQL mirror of rust/src/store/retention.rs.
    Every expiry decision of this store goes through here."""

    def __init__(self, retention: Retention) -> None:
        self.thread_inactivity = _ms(retention.thread_inactivity_s)
        self.thread_max_age = _ms(retention.thread_max_age_s)
        self.response_ttl = _ms(retention.response_ttl_s)
        self.anchor_window = _ms(retention.anchor_window_s)

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
        conninfo, options = _split_url(url)
        try:
            size = pool_size or int(options.get("pool_size", 10))
            wait = timeout or float(options.get("pool_timeout", 5.0))
        except ValueError:
            raise InvalidInput("pool_size and pool_timeout in the URL must be numbers") from None
        if size < 1 or wait <= 0:
            raise InvalidInput("pool_size must be at least 1 and pool_timeout positive")
        self._url = describe(url)
        self._retention = retention or Retention()
        self._policy = _Policy(self._retention)
        self._closed = threading.Event()
        self._outage = threading.Event()
        self._timeout = wait
        self._pool: psycopg_pool.ConnectionPool[Conn] = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=1,
            max_size=size,
            timeout=wait,
            kwargs={"autocommit": True},
            configure=_configure,
            name="threadloom",
            open=False,
            # A reconnection attempt backs off (1, 2, 4 s) and gives up after this long; the
            # next call then starts a fresh one. Keeps the wait for a returning database short.
            reconnect_timeout=RECONNECT_S,
        )
        try:
            self._pool.open(wait=False)
            self._version = self._call(migrate)
        except BaseException:
            self._pool.close(timeout=1.0)
            raise

    # ---- plumbing ---------------------------------------------------------------------------

    def _call(self, fn: Callable[[Conn], R], *, write: bool = False) -> R:
        """Runs `fn` on a pooled connection (in one transaction when `write`), mapping
        database errors onto the store's exceptions. A connection found dead (the server
        restarted) is replaced and the call retried; a failure while committing is not retried,
        since the commit may have happened."""
        attempt = 0
        while True:
            attempt += 1
            committing = False
            # While the database is known to be down, refuse fast instead of holding every
            # request for the full pool timeout; the pool keeps reconnecting meanwhile.
            wait = OUTAGE_WAIT_S if self._outage.is_set() else self._timeout
            try:
                with self._pool.connection(timeout=wait) as conn:
                    if not write:
                        result = fn(conn)
                    else:
                        with conn.transaction():
                            result = fn(conn)
                            committing = True
                self._outage.clear()
                return result
            except (pgerrors.DeadlockDetected, pgerrors.SerializationFailure) as e:
                if attempt < RETRIES:
                    continue
                raise StoreUnavailable(f"the database kept aborting the transaction: {e}") from e
            except psycopg_pool.PoolClosed as e:
                raise StoreError("the store is closed") from e
            except psycopg_pool.PoolTimeout as e:
                self._outage.set()
                raise StoreUnavailable(
                    f"the PostgreSQL store at {self._url} is unavailable: no connection within "
                    f"{wait:g} s"
                ) from e
            except pgerrors.QueryCanceled as e:
                raise StoreUnavailable(f"the PostgreSQL store timed out: {e}") from e
            except psycopg.OperationalError as e:
                if self._closed.is_set():
                    raise StoreError("the store is closed") from e
                if not committing and attempt == 1:
                    # The server went away under this connection (a restart, a failover): the
                    # other pooled connections died with it. Drop them and try once more.
                    self._pool.check()
                    continue
                self._outage.set()
                raise StoreUnavailable(
                    f"the PostgreSQL store at {self._url} is unavailable: {e}"
                ) from e
            except psycopg.DataError as e:
                raise InvalidInput(f"the database refused a value: {e}") from e
            except pgerrors.DataCorrupted as e:
                raise StoreFormatError(str(e)) from e
            except psycopg.Error as e:
                raise StoreError(f"PostgreSQL store error: {e}") from e

    def close(self) -> None:
        """Closes the connection pool. The store cannot be used afterwards."""
        self._closed.set()
        self._pool.close()

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
        row = self._call(
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
            raise _thread_not_found(thread_id)
        t = _thread(row)
        if self._policy.thread_expired(t.created_ms, t.last_activity_ms, now):
            raise _thread_not_found(thread_id)
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
            raise _response_not_found(response_id)
        r = _response(row)
        # Another tenant's response reads exactly like a missing one.
        if r.owner != owner or self._policy.response_expired(r.created_ms, now):
            raise _response_not_found(response_id)
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
        row = conn.execute("SELECT threadloom_release(%s)", (_uuid(key),)).fetchone()
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
                    return _thread(row)
                old = conn.execute(
                    f"SELECT {_THREAD_COLUMNS} FROM threadloom_threads "
                    "WHERE owner = %s AND id = %s FOR UPDATE",
                    (owner, tid),
                ).fetchone()
                if old is None:
                    continue  # deleted since the insert saw it: insert again
                t = _thread(old)
                if not self._policy.thread_expired(t.created_ms, t.last_activity_ms, now):
                    if exist_ok:
                        return t
                    raise StateConflict(f"thread {debug_str(tid)} already exists")
                # An expired thread is gone as far as readers know; reclaim it (leaving its
                # tombstone) before deciding on reuse.
                self._remove_thread(conn, t)

        return self._call(create, write=True)

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
        return self._call(lambda c: self._load_thread(c, owner, thread_id, now_ms()))

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
            bound = _parse_cursor(after)

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
            threads = [_thread(r) for r in rows[:limit]]
            cursor = _cursor(threads[-1]) if len(rows) > limit else None
            return ThreadPage(threads=threads, next_cursor=cursor)

        return self._call(page)

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
            return _thread(row)

        return self._call(update, write=True)

    def delete_thread(self, thread_id: str, *, owner: str = "default") -> None:
        """Deletes the thread and every turn that no other thread or live response reaches."""

        def delete(conn: Conn) -> None:
            t = self._load_thread(conn, owner, thread_id, now_ms(), lock=True)
            self._remove_thread(conn, t)

        self._call(delete, write=True)

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
        _check_sizes(new)
        info: _Info | None = None
        if response is not None:
            info = _Info(response)
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

        return self._call(write, write=True)

    def _append(
        self,
        conn: Conn,
        owner: str,
        anchor: Anchor,
        new: list[checks.NewTurn],
        info: _Info | None,
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
        keys = _insert_turns(conn, owner, parent, depth, new, last_refs, now)
        last = keys[-1]
        if thread is not None:
            row = conn.execute(
                "UPDATE threadloom_threads SET head = %s, message_count = %s, "
                "last_activity_ms = greatest(last_activity_ms, %s) "
                f"WHERE owner = %s AND id = %s RETURNING {_THREAD_COLUMNS}",
                (_uuid(last), new_depth, now, owner, thread.id),
            ).fetchone()
            assert row is not None  # locked by this transaction
            thread = _thread(row)

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
                    _uuid(last),
                    _uuid(parent),
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
            record = _response(row)
        return Appended(
            turn_ids=[checks.turn_id_string(k) for k in keys], response=record, thread=thread
        )

    @staticmethod
    def _retain(conn: Conn, key: bytes, owner: str | None) -> int:
        """Adds a child's reference to a turn (locking its row, so a concurrent release either
        runs first and deletes it, or sees the reference); returns the turn's depth. With
        `owner`, another owner's turn is NotFound."""
        sql = "UPDATE threadloom_turns SET refs = refs + 1 WHERE id = %s"
        args: list[Any] = [_uuid(key)]
        if owner is not None:
            sql += " AND owner = %s"
            args.append(owner)
        row = conn.execute(sql + " RETURNING depth", args).fetchone()
        if row is None:
            raise _turn_not_found(key)
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
        _check_sizes(new)

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
            head = _insert_turns(conn, owner, base, depth, new, 1, now)[-1] if new else base
            if old is not None:
                self._release(conn, old)
            row = conn.execute(
                "UPDATE threadloom_threads SET head = %s, message_count = %s, "
                "last_activity_ms = greatest(last_activity_ms, %s) "
                f"WHERE owner = %s AND id = %s RETURNING {_THREAD_COLUMNS}",
                (_uuid(head), new_depth, now, owner, thread_id),
            ).fetchone()
            assert row is not None  # locked by this transaction
            return _thread(row)

        return self._call(write, write=True)

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
        return self._call(lambda c: self._history(c, owner, anchor, limit))

    def _history(self, conn: Conn, owner: str, anchor: Anchor, limit: int | None) -> list[Turn]:
        now = now_ms()
        gone: NotFound
        if anchor.kind == "thread":
            t = self._load_thread(conn, owner, anchor.thread, now)
            if t.head is None:
                return []
            start = checks.parse_turn_id(t.head)
            gone = _thread_not_found(anchor.thread)
        elif anchor.kind == "response":
            r = self._load_response(conn, owner, anchor.response, now)
            start = checks.parse_turn_id(r.last_turn)
            gone = _response_not_found(anchor.response)
        else:
            checks.validate_owner(owner)
            start = anchor.turn
            row = conn.execute(
                "SELECT owner FROM threadloom_turns WHERE id = %s", (_uuid(start),)
            ).fetchone()
            if row is None or row[0] != owner:
                raise _turn_not_found(start)
            gone = _turn_not_found(start)
        # One statement sees one snapshot: the whole history, or (when a concurrent delete
        # won the race since the lookup above) nothing.
        if limit == 0:
            return []
        with conn.cursor(binary=True) as cur:
            most = checks.MAX_THREAD_MESSAGES if limit is None else limit
            rows = cur.execute(_WALK, (_uuid(start), most)).fetchall()
        if not rows:
            raise gone
        return [_turn(r) for r in rows]

    # ---- responses --------------------------------------------------------------------------

    def get_response(self, response_id: str, *, owner: str = "default") -> Response:
        """The response, or NotFound (also for another owner's or an expired one)."""
        return self._call(lambda c: self._load_response(c, owner, response_id, now_ms()))

    def delete_response(self, response_id: str, *, owner: str = "default") -> None:
        """Deletes the response and the turns only it reached."""

        def delete(conn: Conn) -> None:
            r = self._load_response(conn, owner, response_id, now_ms(), lock="FOR UPDATE")
            conn.execute("DELETE FROM threadloom_responses WHERE id = %s", (r.id,))
            self._release(conn, checks.parse_turn_id(r.last_turn))

        self._call(delete, write=True)

    # ---- pending responses -------------------------------------------------------------------

    def put_pending(self, response_id: str, payload: bytes, *, owner: str) -> None:
        """Records an announced response whose generation runs."""
        checks.validate_owner(owner)
        checks.validate_response_id(response_id)
        self._call(
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
        self._call(
            lambda c: c.execute(
                "DELETE FROM threadloom_pending WHERE owner = %s AND id = %s",
                (owner, response_id),
            ),
            write=True,
        )

    def get_pending(self, response_id: str, *, owner: str) -> bytes | None:
        checks.validate_owner(owner)
        checks.validate_response_id(response_id)
        row = self._call(
            lambda c: c.execute(
                "SELECT payload FROM threadloom_pending WHERE owner = %s AND id = %s",
                (owner, response_id),
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    def pending(self) -> list[tuple[str, str, bytes]]:
        """Every pending record as (owner, response id, payload)."""
        rows = self._call(
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
            turns = sum(self._remove_thread(conn, _thread(row)) for row in threads)
            dead = conn.execute(
                "DELETE FROM threadloom_responses WHERE id IN (SELECT id FROM "
                "threadloom_responses WHERE created_ms < %s LIMIT %s FOR UPDATE SKIP LOCKED) "
                "RETURNING last_turn",
                (self._policy.response_cutoff(now), SWEEP_BATCH),
            ).fetchall()
            turns += sum(self._release(conn, row[0].bytes) for row in dead)
            return len(threads), len(dead), turns

        while True:
            n_threads, n_responses, n_turns = self._call(batch, write=True)
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

        return self._call(count)

    def verify(self) -> None:
        """Checks the reference counts and parent links against the records, in one snapshot;
        raises StoreFormatError on the first problem. For tests and `threadloom check`."""

        def check(conn: Conn) -> None:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                _verify(conn)
            finally:
                conn.execute("ROLLBACK")

        self._call(check)


class _Info:
    """The fields of a `ResponseInfo`, read once."""

    def __init__(self, info: ResponseInfo) -> None:
        if not isinstance(info, ResponseInfo):
            raise TypeError(f"response must be a ResponseInfo, not {type(info).__name__}")
        self.id: str | None = info.id
        self.model = info.model
        self.status = info.status
        self.output_count = info.output_count
        self.prompt_tokens = info.prompt_tokens
        self.completion_tokens = info.completion_tokens
        self.cached_tokens = info.cached_tokens
        self.error = info.error
        self.metadata: str | None = info.metadata_json


# ---- list cursors: the LMDB store's, so a cursor means the same on both ------------------------

_U64 = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1


def _cursor(t: ThreadRecord) -> str:
    inverted = _U64 - max(t.last_activity_ms, 0)
    return (inverted.to_bytes(8, "big") + t.id.encode("utf-8")).hex()


def _parse_cursor(text: str) -> tuple[int, str]:
    """(last activity ms, thread id) of the last thread of the previous page."""
    bad = InvalidInput(f"invalid cursor {debug_str(text)}")
    if len(text) % 2 or not all(c in "0123456789abcdefABCDEF" for c in text):
        raise bad
    raw = bytes.fromhex(text)
    if len(raw) <= 8:
        raise bad
    try:
        thread_id = raw[8:].decode("utf-8")
    except UnicodeDecodeError:
        raise bad from None
    ms = _U64 - int.from_bytes(raw[:8], "big")
    return min(ms, _I64_MAX), thread_id


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
