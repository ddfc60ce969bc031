"""Handing work from other threads to an event loop in batches: every thread that reports to a
loop (the scheduler with tokens, the workers with results) posts to that loop's one
`Mailbox`, and the loop is woken once for whatever gathered meanwhile. A wake-up is a write
to the loop's self-pipe and a hand-over of the GIL, costlier than the work it carries; under
load one per scheduler step, for all streams, instead of one per stream and per result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class Mailbox:
    """Calls posted from any thread, run on the loop in the order posted."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._calls: list[tuple[Callable[[Any], None], Any]] = []

    def post(self, call: Callable[[T], None], arg: T) -> None:
        """From any thread. Calls posted after the loop closed are dropped."""
        with self._lock:
            self._calls.append((call, arg))
            wake = len(self._calls) == 1
        if wake:
            with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to tell
                self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for call, arg in calls:
            try:
                call(arg)
            except Exception:  # one receiver's bug must not cost the others their calls
                log.exception("a call posted to the event loop failed")


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailbox] = (
    weakref.WeakKeyDictionary()
)
_mailboxes_lock = threading.Lock()


def mailbox(loop: asyncio.AbstractEventLoop) -> Mailbox:
    """The one mailbox of `loop`."""
    found = _mailboxes.get(loop)
    if found is None:
        with _mailboxes_lock:
            found = _mailboxes.setdefault(loop, Mailbox(loop))
    return found


class LoopBridge(Generic[T]):
    """A one-consumer queue from any thread to the loop it was made on."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._mailbox = mailbox(loop)
        self._items: list[T] = []  # touched on the loop only
        self._ready = asyncio.Event()

    def put(self, item: T) -> None:
        """From any thread."""
        self._mailbox.post(self._arrive, item)

    def _arrive(self, item: T) -> None:
        self._items.append(item)
        self._ready.set()

    async def take(self) -> list[T]:
        """On the loop: waits for at least one item and returns all that are there."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        items, self._items = self._items, []
        return items
