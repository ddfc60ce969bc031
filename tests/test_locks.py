"""`KeyedLocks`: FIFO turns by key, and the read-then-lock path of a request that learns its
key from what it read (issue 26): it may keep what it read only if nobody held, awaited or
released that key since the read began."""

from __future__ import annotations

import asyncio

from threadloom.locks import KeyedLocks


def test_a_read_nobody_raced_takes_the_lock_at_once() -> None:
    async def main() -> None:
        locks = KeyedLocks(max_waiting=4)
        stamp = locks.read_started()
        # Another key's turn coming and going is no reason to read again.
        await locks.acquire("other")
        locks.release("other")
        assert await locks.acquire_unchanged("t", stamp)
        locks.read_ended(stamp)
        # It holds the lock: the next one waits.
        waiter = asyncio.ensure_future(locks.acquire("t"))
        await asyncio.sleep(0)
        assert not waiter.done()
        locks.release("t")
        await waiter
        locks.release("t")

    asyncio.run(main())


def test_a_read_raced_by_a_turn_on_its_key_reads_again() -> None:
    async def main() -> None:
        locks = KeyedLocks(max_waiting=4)
        stamp = locks.read_started()
        await locks.acquire("t")
        # Held now: refused, and nothing is taken.
        assert not await locks.acquire_unchanged("t", stamp)
        locks.release("t")
        # Released since the read began: what it read may be stale.
        assert not await locks.acquire_unchanged("t", stamp)
        locks.read_ended(stamp)
        # A read that begins after that release is current.
        later = locks.read_started()
        assert await locks.acquire_unchanged("t", later)
        locks.read_ended(later)
        locks.release("t")

    asyncio.run(main())


def test_release_stamps_are_kept_only_while_reads_are_in_flight() -> None:
    async def main() -> None:
        locks = KeyedLocks(max_waiting=4)
        for i in range(3):
            await locks.acquire(i)
            locks.release(i)
        assert not locks._released
        stamp = locks.read_started()
        await locks.acquire("t")
        locks.release("t")
        assert "t" in locks._released
        locks.read_ended(stamp)
        assert not locks._released and not locks._reads

    asyncio.run(main())
