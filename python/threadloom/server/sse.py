"""Streaming a generation to a client: the one pipeline every streaming dialect uses
(`serve_stream` with the dialect's frame writer), server-sent event framing, and the pump
that drains the engine's events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from aiohttp import web

from threadloom.events import Event, Finished, Result, Started, TokenEvent
from threadloom.server.errors import ApiError
from threadloom.server.middleware import request_id, to_api_error

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

_encoder = msgspec.json.Encoder()
T = TypeVar("T")
log = logging.getLogger("threadloom.server")


async def started(events: AsyncGenerator[Event, None]) -> Started:
    """The generation's first event. The anchor is checked and the prompt assembled before it,
    so whatever fails here fails before any byte goes out (a plain JSON error, nothing stored);
    the generator is closed then, and the error passes on for the route to name."""
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise
    assert isinstance(first, Started)
    return first


def opened(response: web.StreamResponse | None) -> web.StreamResponse:
    """The stream a handler opened; None means the client left before it could be opened,
    which ends the handler the way a disconnect does (no error is logged for it)."""
    if response is None:
        raise asyncio.CancelledError
    return response


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


class Frames:
    """A stream's frames not written yet. Dialects add their frames; the pipeline writes what
    has gathered in one go whenever no further event is ready, so the tokens of one scheduler
    step cost one write (and one chunk) per stream, not one per frame."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def add(self, data: bytes) -> None:
        self._parts.append(data)

    async def flush(self, response: web.StreamResponse) -> None:
        if not self._parts:
            return
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts.clear()
        await response.write(data)


async def end_with_error(
    request: web.Request,
    response: web.StreamResponse | None,
    out: Frames,
    error: Exception,
    dialect: Dialect,
) -> None:
    # Used by `serve_stream` only.
    """Ends a stream that failed: once the response has started, the error goes out as the
    dialect's own error frame and the stream ends (after whatever frames were waiting); before
    that it is re-raised, so the error middleware answers with a plain JSON error and the
    status."""
    if response is None or not response.prepared:
        raise error
    api = to_api_error(error)
    if api.status >= 500:
        # The middleware logs what reaches it; this never does, the stream is already open.
        log.error(
            "error in the %s stream (request %s)",
            request.path,
            request_id(request),
            exc_info=error,
        )
    with contextlib.suppress(ConnectionResetError):
        dialect.error(out, api)
        await out.flush(response)
        await response.write_eof()


class Dialect(Protocol):
    """How one dialect writes a stream: the pipeline (`serve_stream`) owns the loop, the
    writes, the disconnect and error handling; the dialect only makes its frames (`out.add`).

    When a generation fails after the stream started, each dialect answers the way its own
    clients expect (README's table): `finish` adds the failure frames, or raises an `ApiError`
    to end the stream with the dialect's `error` frame."""

    async def open(self, request: web.Request) -> web.StreamResponse: ...

    def start(self, out: Frames) -> None: ...

    def token(self, out: Frames, event: TokenEvent) -> None: ...

    async def finish(self, out: Frames, result: Result) -> None: ...

    def error(self, out: Frames, error: ApiError) -> None: ...


async def serve_stream(
    request: web.Request, events: AsyncGenerator[Event, None], dialect: Dialect
) -> web.StreamResponse:
    """Streams a started generation to the client. A client that leaves stops the generation
    (what exists is stored as incomplete); an error before the stream opened is a plain JSON
    error, after it the dialect's error frame."""
    pending = await pull_next(events)
    response: web.StreamResponse | None = None
    out = Frames()
    try:
        response = await dialect.open(request)
        dialect.start(out)
        while True:
            if not pending.done():
                await out.flush(response)  # nothing else ready: what gathered goes out now
            event = await pending
            if isinstance(event, Finished):
                break
            pending = await pull_next(events)
            if isinstance(event, TokenEvent):
                dialect.token(out, event)
        await dialect.finish(out, event.result)
        await out.flush(response)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away; the finally below stops the generation
    except Exception as e:
        await end_with_error(request, response, out, e, dialect)
    finally:
        await finish_pull(pending, events)
    return opened(response)


def frame(data: object, event: str | None = None) -> bytes:
    body = _encoder.encode(data)
    if event is None:
        return b"data: " + body + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + body + b"\n\n"


class _Pump(Generic[T]):
    """One task that drains the engine's event generator for the whole stream. A task per
    event (what `anext` in `ensure_future` costs) was a fifth of the event loop's time on a
    long stream; a future per event is far cheaper. Events wait in `buffer` until pulled."""

    def __init__(self, events: AsyncGenerator[T, None]) -> None:
        self.events = events
        self.buffer: deque[T] = deque()
        self.waiters: deque[asyncio.Future[T]] = deque()
        self.end: BaseException | None = None  # StopAsyncIteration, or the engine's error
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            async for event in self.events:
                while self.waiters:
                    waiter = self.waiters.popleft()
                    if not waiter.done():
                        waiter.set_result(event)
                        break
                else:
                    self.buffer.append(event)
        except asyncio.CancelledError:
            for waiter in self.waiters:
                waiter.cancel()
            raise
        except Exception as e:
            self.end = e
        else:
            self.end = StopAsyncIteration()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self.end)

    def pull(self) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self.buffer:
            future.set_result(self.buffer.popleft())
        elif self.end is not None:
            future.set_exception(self.end)
        elif self.task.cancelled():
            future.cancel()
        else:
            self.waiters.append(future)
        return future


_pumps: weakref.WeakKeyDictionary[Any, _Pump[Any]] = weakref.WeakKeyDictionary()


async def pull_next(events: AsyncGenerator[T, None]) -> asyncio.Future[T]:
    """The next engine event, as a future. The first call starts a task that iterates `events`
    and lets it run up to its first wait, so that cancelling it (`finish_pull`) lands inside
    the engine's generation loop (which then stops the generation, frees the slot and stores
    what exists as incomplete)."""
    pump = _pumps.get(events)
    if pump is None:
        pump = _pumps[events] = _Pump(events)
        await asyncio.sleep(0)
    return pump.pull()


async def finish_pull(pending: asyncio.Future[T], events: AsyncGenerator[T, None]) -> None:
    """Stops the engine if it is still generating (the client left) and closes the stream."""
    pump = _pumps.pop(events, None)
    if pump is not None and not pump.task.done():
        pump.task.cancel()
        await asyncio.wait([pump.task])
    if not pending.done():
        pending.cancel()
    elif not pending.cancelled():
        pending.exception()  # retrieved, so it is never reported as "never retrieved"
    await events.aclose()
