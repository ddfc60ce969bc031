"""Work crossing between the event loop and other threads. Every thread that reports to a
loop (the scheduler with tokens, the workers with results) posts to that loop's one
`Mailbox`, and the loop is woken once for whatever gathered meanwhile. A wake-up is a write
to the loop's self-pipe and a hand-over of the GIL, costlier than the work it carries; under
load one per scheduler step, for all streams, instead of one per stream and per result.

The engine's `Workers` run store reads and writes and prompt assembly off the loop. Not
`loop.run_in_executor`: that builds a `concurrent.futures.Future` (a Condition of its own),
chains it to a loop future and wakes the loop once per result. Here a result goes straight
into the loop future through the mailbox: at 16 concurrent turns a round trip costs about a
fifth of the CPU."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class Mailbox:
    """Calls posted from any thread, run on the loop in the order posted."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the registry below is keyed weakly by the loop, and a value that held its key
        # would keep every loop `asyncio.run` ever made alive.
        self._loop = weakref.ref(loop)
        self._lock = threading.Lock()
        self._calls: list[tuple[Callable[[Any], None], Any]] = []

    def post(self, call: Callable[[T], None], arg: T) -> None:
        """From any thread. Calls posted after the loop closed are dropped."""
        with self._lock:
            self._calls.append((call, arg))
            wake = len(self._calls) == 1
        loop = self._loop() if wake else None
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to tell
                loop.call_soon_threadsafe(self._run)

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


_Item = tuple[Callable[[], Any], "asyncio.Future[Any]", Mailbox]


class Workers:
    """Up to `size` threads, started as work needs them. Daemon threads, so an idle pool never
    holds the interpreter open; at exit, work already running (a store write) is waited
    for, as an executor's would be."""

    def __init__(self, size: int, name: str) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        self._size, self._name = size, name
        self._jobs: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False
        _pools.add(self)

    def run(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """On a loop: `work()` in a worker thread. Cancelling the future leaves the work
        running to its end (as an executor does); its result is then dropped."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._jobs.put((work, future, mailbox(loop)))
        return future

    def shutdown(self) -> None:
        """Refuses new work, fails what has not started and waits for what runs."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _, future, box = item
                box.post(_fail, (future, RuntimeError("the engine is closed")))
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join()

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            work, future, box = item
            try:
                box.post(_succeed, (future, work()))
            except BaseException as e:
                box.post(_fail, (future, e))
            del item, work, future, box  # nothing of a finished job is kept while idle
            with self._lock:
                self._idle += 1


_pools: weakref.WeakSet[Workers] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for pool in list(_pools):
        pool.shutdown()


def _succeed(done: tuple[asyncio.Future[Any], Any]) -> None:
    future, value = done
    if not future.done():  # cancelled by its waiter
        future.set_result(value)


def _fail(done: tuple[asyncio.Future[Any], BaseException]) -> None:
    future, error = done
    if not future.done():
        if isinstance(error, StopIteration):  # a future cannot hold one
            error = RuntimeError(f"{error!r} raised in a worker thread")
        future.set_exception(error)
