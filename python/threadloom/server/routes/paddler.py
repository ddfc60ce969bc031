"""Paddler's inference API, stateless: `POST /api/v1/continue_from_conversation_history`. The
client sends the whole conversation; the reply streams back as newline-delimited JSON frames,
one per token, closed by a `Done` frame or an `Error` frame. Nothing is stored."""

from __future__ import annotations

import secrets
import string
from typing import Literal

import msgspec
from aiohttp import web

from threadloom.backends.base import SamplingParams
from threadloom.engine import Result, TokenEvent
from threadloom.server import sse
from threadloom.server.errors import ApiError
from threadloom.server.keys import OWNER, PADDLER_REQUEST_ID
from threadloom.server.middleware import register_error_format
from threadloom.server.routes.common import decode_body, engine_for, generation_failed, stateless
from threadloom.server.schemas import paddler as p

PATH = "/api/v1/continue_from_conversation_history"
# Paddler answers with a JSON content type whatever the framing; its clients split on lines.
HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-cache"}
# Paddler's ids are nanoids: 21 characters of this alphabet.
_ALPHABET = string.ascii_letters + string.digits + "_-"

_decoder = msgspec.json.Decoder(p.ContinueFromConversationHistory)
_encoder = msgspec.json.Encoder()


def new_request_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(21))


def _line(frame: p.ResponseFrame | p.ErrorFrame) -> bytes:
    return _encoder.encode(frame) + b"\n"


def _token_frame(request_id: str, slot: int, text: str | None) -> p.ResponseFrame:
    """A token's frame, or with `text=None` the closing `Done` frame."""
    result: p.Token | Literal["Done"] = p.Token(token=text) if text is not None else "Done"
    generated = p.GeneratedToken(generated_token_result=result, slot=slot)
    return p.ResponseFrame(
        response=p.ResponseEnvelope(
            request_id=request_id,
            response=p.GeneratedTokenResponse(generated_token=generated),
        )
    )


def error_frame(request_id: str, error: ApiError) -> p.ErrorFrame:
    return p.ErrorFrame(
        error=p.ErrorEnvelope(
            request_id=request_id,
            error=p.ErrorDetail(code=error.status, description=error.message),
        )
    )


def _error_body(request: web.Request, error: ApiError) -> p.ErrorFrame:
    """The middleware's formatter: failures before the stream opens keep their HTTP status and
    carry the same frame a failure mid-stream does."""
    return error_frame(request.get(PADDLER_REQUEST_ID) or new_request_id(), error)


async def continue_from_conversation_history(request: web.Request) -> web.StreamResponse:
    request[PADDLER_REQUEST_ID] = request_id = new_request_id()
    req = decode_body(_decoder, await request.read())
    engine = await engine_for(request, None)  # Paddler's requests name no model
    messages = [{"role": m.role, "content": m.content} for m in req.conversation_history]
    events = engine.stream_request(
        stateless(
            messages,
            request[OWNER],
            sampling=SamplingParams(max_tokens=req.max_tokens),
            enable_thinking=req.enable_thinking,
            add_generation_prompt=req.add_generation_prompt,
            # Paddler streams the model's raw tokens, thinking block and all.
            split_reasoning=False,
        )
    )
    first = await sse.started(events)  # errors before generation keep their HTTP status
    return await sse.serve_stream(request, events, _PaddlerStream(request_id, first.slot))


class _PaddlerStream:
    """Paddler's JSON lines, one token each, then an empty token frame. A failed generation
    ends the stream with Paddler's error frame."""

    def __init__(self, request_id: str, slot: int) -> None:
        self.request_id, self.slot = request_id, slot

    async def open(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=HEADERS)
        response.enable_chunked_encoding()
        await response.prepare(request)
        return response

    def start(self, out: sse.Frames) -> None:
        return None

    def token(self, out: sse.Frames, event: TokenEvent) -> None:
        if event.text:
            out.add(_line(_token_frame(self.request_id, self.slot, event.text)))

    async def finish(self, out: sse.Frames, result: Result) -> None:
        if result.status == "failed":
            raise generation_failed(result)
        out.add(_line(_token_frame(self.request_id, self.slot, None)))

    def error(self, out: sse.Frames, error: ApiError) -> None:
        out.add(_line(error_frame(self.request_id, error)))


def setup(app: web.Application) -> None:
    app.router.add_post(PATH, continue_from_conversation_history)
    register_error_format(app, PATH, _error_body)
