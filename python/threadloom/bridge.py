"""Handing items from a worker thread to an event loop in batches."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LoopBridge(Generic[T]):
    """A one-consumer queue from any thread to the loop it was made on. The producer wakes the
    loop only when the consumer has taken the previous batch, so a fast producer costs one
    wake-up per batch, not per item."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: list[T] = []
        self._lock = threading.Lock()
        self._ready = asyncio.Event()

    def put(self, item: T) -> None:
        """From any thread. Items put after the loop closed are dropped."""
        with self._lock:
            self._items.append(item)
            wake = len(self._items) == 1
        if wake:
            # A closed loop has nobody left to read.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self) -> list[T]:
        """On the loop: waits for at least one item and returns all that are there."""
        while True:
            await self._ready.wait()
            with self._lock:
                items = self._items[:]
                self._items.clear()
                self._ready.clear()
            if items:
                return items
