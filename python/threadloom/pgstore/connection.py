"""The PostgreSQL store's connections: a pool, session limits, and the mapping of database
failures (outages, deadlocks, timeouts) onto the store's exceptions, with the retries that are
safe."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg_pool
from psycopg import errors as pgerrors

from threadloom.errors import InvalidInput, StoreError, StoreFormatError, StoreUnavailable
from threadloom.locations import describe

R = TypeVar("R")
Conn = psycopg.Connection[Any]

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


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """Separates the pool options from the libpq URL and adds the connection defaults."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    pool = {k: query.pop(k) for k in POOL_OPTIONS if k in query}
    for key, value in DEFAULT_CONNECT.items():
        query.setdefault(key, value)
    return urlunsplit(parts._replace(query=urlencode(query))), pool


def configure(conn: Conn) -> None:
    """Session limits for every new connection, where neither the URL nor the role set one:
    a stuck peer holding a row lock, or a runaway query, fails the call (503) instead of
    holding a request forever."""
    for name, value in SESSION_LIMITS.items():
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
        if row is not None and row[0] == "0":
            conn.execute(f"SET {name} = '{value}'")


class Database:
    """A connection pool to one database. `url` is a libpq URL whose query may also hold
    `pool_size` (connections, default 10) and `pool_timeout` (seconds a call waits for a
    connection before `StoreUnavailable`, default 5)."""

    def __init__(self, url: str, *, pool_size: int | None, timeout: float | None) -> None:
        conninfo, options = split_url(url)
        try:
            size = pool_size or int(options.get("pool_size", 10))
            wait = timeout or float(options.get("pool_timeout", 5.0))
        except ValueError:
            raise InvalidInput("pool_size and pool_timeout in the URL must be numbers") from None
        if size < 1 or wait <= 0:
            raise InvalidInput("pool_size must be at least 1 and pool_timeout positive")
        self.url = describe(url)
        self._closed = threading.Event()
        self._outage = threading.Event()
        self._timeout = wait
        self._pool: psycopg_pool.ConnectionPool[Conn] = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=1,
            max_size=size,
            timeout=wait,
            kwargs={"autocommit": True},
            configure=configure,
            name="threadloom",
            open=False,
            # A reconnection attempt backs off (1, 2, 4 s) and gives up after this long; the
            # next call then starts a fresh one. Keeps the wait for a returning database short.
            reconnect_timeout=RECONNECT_S,
        )
        self._pool.open(wait=False)

    def call(self, fn: Callable[[Conn], R], *, write: bool = False) -> R:
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
                    f"the PostgreSQL store at {self.url} is unavailable: no connection within "
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
                    f"the PostgreSQL store at {self.url} is unavailable: {e}"
                ) from e
            except psycopg.DataError as e:
                raise InvalidInput(f"the database refused a value: {e}") from e
            except pgerrors.DataCorrupted as e:
                raise StoreFormatError(str(e)) from e
            except psycopg.Error as e:
                raise StoreError(f"PostgreSQL store error: {e}") from e

    def close(self, timeout: float = 5.0) -> None:
        self._closed.set()
        self._pool.close(timeout=timeout)
