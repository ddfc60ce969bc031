"""The streaming pipeline writes the frames of the events that are ready together in one
write: a scheduler step's tokens cost the client one HTTP chunk, not one per token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator

import aiohttp
import pytest
from aiohttp import web
from server_support import ThreadedServer
from threadloom.events import Event, Finished, Result, Started, TokenEvent, Usage
from threadloom.server import sse
from threadloom.server.errors import ApiError

BURST = 50


class _Lines:
    """A minimal dialect: one `data:` frame per token, `end` after the result."""

    async def open(self, request: web.Request) -> web.StreamResponse:
        return await sse.open_stream(request)

    def start(self, out: sse.Frames) -> None:
        out.add(b"data: start\n\n")

    def token(self, out: sse.Frames, event: TokenEvent) -> None:
        out.add(b"data: " + event.text.encode() + b"\n\n")

    async def finish(self, out: sse.Frames, result: Result) -> None:
        out.add(b"data: end\n\n")

    def error(self, out: sse.Frames, error: ApiError) -> None:
        out.add(b"data: error\n\n")


async def _events() -> AsyncGenerator[Event]:
    """Two bursts of tokens, as two scheduler steps would hand them over, a pause apart."""
    yield Started(prompt_tokens=1, cached_tokens=0, slot=0)
    for burst in range(2):
        await asyncio.sleep(0.05)
        for i in range(BURST):
            yield TokenEvent(text=f"{burst}-{i}")
    result = Result(
        status="completed",
        text="",
        reasoning=None,
        finish_reason="stop",
        usage=Usage(1, 2 * BURST, 0),
        model="m",
    )
    yield Finished(result)


@pytest.fixture
def server() -> Iterator[ThreadedServer]:
    async def stream(request: web.Request) -> web.StreamResponse:
        events = _events()
        await sse.started(events)
        return await sse.serve_stream(request, events, _Lines())

    def make() -> web.Application:
        app = web.Application()
        app.router.add_get("/stream", stream)
        return app

    s = ThreadedServer(make).start()
    yield s
    s.stop()


def test_the_frames_of_one_burst_go_out_in_one_chunk(server: ThreadedServer) -> None:
    async def read() -> tuple[list[bytes], int]:
        chunks, body = 0, b""
        async with aiohttp.ClientSession() as session, session.get(f"{server.url}/stream") as r:
            async for data, end_of_chunk in r.content.iter_chunks():
                body += data
                chunks += end_of_chunk
        return body.split(b"\n\n")[:-1], chunks

    frames, chunks = asyncio.run(read())
    expected = [f"data: {b}-{i}".encode() for b in range(2) for i in range(BURST)]
    assert frames == [b"data: start", *expected, b"data: end"]
    # The start frame, one chunk per burst, the end frame (with or without the second burst).
    assert chunks <= 4
