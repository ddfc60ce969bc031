"""One lock per key, made on first use and dropped when nobody holds or waits for it: the
engine uses it to run the requests on one thread one after another.

A request that learns its key only from what it reads (a `previous_response_id` names a
response; the store says which thread it heads) reads first and takes the lock after, if
nothing could have changed meanwhile (`read_started`, `acquire_unchanged`, `read_ended`):
the common case costs no second read, and one that lost the race reads again in the lock."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Hashable

from threadloom.errors import Overloaded

# How many release stamps are kept while reads are in flight before older ones are dropped.
_STAMPS_KEPT = 1024


class KeyedLocks:
    """FIFO locks by key. `max_waiting` bounds the requests queued on one key."""

    def __init__(self, max_waiting: int) -> None:
        self._max_waiting = max_waiting
        # key -> (lock, holders and waiters)
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}
        # Releases so far, and the count at each key's last release: what a read that started
        # at some count may have missed. Kept only while such reads are in flight.
        self._releases = 0
        self._released: dict[Hashable, int] = {}
        self._reads: Counter[int] = Counter()

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
        self._releases += 1
        if self._reads:
            self._released[key] = self._releases

    def read_started(self) -> int:
        """Marks a read made before its key is known; pass the stamp to `acquire_unchanged`
        (or `read_ended`) when it is back."""
        self._reads[self._releases] += 1
        return self._releases

    def read_ended(self, stamp: int) -> None:
        self._reads[stamp] -= 1
        if self._reads[stamp] <= 0:
            del self._reads[stamp]
        if not self._reads:
            self._released.clear()
        elif len(self._released) > _STAMPS_KEPT:
            oldest = min(self._reads)
            self._released = {k: n for k, n in self._released.items() if n > oldest}

    async def acquire_unchanged(self, key: Hashable, stamp: int) -> bool:
        """Takes `key`'s lock if nobody held, awaited or released it since the read stamped
        `stamp` started (what it read is still current for this process); False, holding
        nothing, otherwise. The read stays marked until `read_ended`."""
        if key in self._locks or self._released.get(key, -1) > stamp:
            return False
        # Free and unknown to anyone: taken without suspending, so nothing slips between.
        await self.acquire(key)
        return True

    def _forget(self, key: Hashable) -> None:
        lock, users = self._locks[key]
        if users <= 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)
