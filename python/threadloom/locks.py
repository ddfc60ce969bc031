"""One lock per key, made on first use and dropped when nobody holds or waits for it: the
engine uses it to run the requests on one thread one after another."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from threadloom.errors import Overloaded


class KeyedLocks:
    """FIFO locks by key. `max_waiting` bounds the requests queued on one key."""

    def __init__(self, max_waiting: int) -> None:
        self._max_waiting = max_waiting
        # key -> (lock, holders and waiters)
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    async def acquire(self, key: Hashable) -> None:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        elif users > self._max_waiting:
            raise Overloaded(f"{users - 1} requests already wait for this conversation")
        self._locks[key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._forget(key)
            raise

    def release(self, key: Hashable) -> None:
        lock, _ = self._locks[key]
        lock.release()
        self._forget(key)

    def _forget(self, key: Hashable) -> None:
        lock, users = self._locks[key]
        if users <= 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)
