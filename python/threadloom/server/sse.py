"""Server-sent events over an aiohttp StreamResponse."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TypeVar

import msgspec
from aiohttp import web

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

_encoder = msgspec.json.Encoder()
T = TypeVar("T")


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


def frame(data: object, event: str | None = None) -> bytes:
    body = _encoder.encode(data)
    if event is None:
        return b"data: " + body + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + body + b"\n\n"


async def pull_next(events: AsyncGenerator[T, None]) -> asyncio.Task[T]:
    """Starts fetching the next engine event and lets it run up to its first wait, so that
    cancelling the task later lands inside the engine's generation loop (which then stops the
    generation, frees the slot and stores what exists as incomplete)."""
    task = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)
    return task


async def finish_pull(task: asyncio.Task[T], events: AsyncGenerator[T, None]) -> None:
    """Cancels a pull still in flight (the client left) and closes the event stream."""
    if not task.done():
        task.cancel()
        await asyncio.wait([task])
    elif not task.cancelled():
        task.exception()  # retrieved, so it is never reported as "never retrieved"
    await events.aclose()
