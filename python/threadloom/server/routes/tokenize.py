"""Tokenization: `POST /api/v1/tokenize` (token ids, their count, optionally their pieces) and
`POST /api/v1/tokenize/count` (the count alone). Text is tokenized as is; chat messages are
rendered with the model's template first, so the ids are the prompt the model would get."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from threadloom.engine import Engine
from threadloom.server.errors import ApiError
from threadloom.server.keys import OWNER
from threadloom.server.routes.common import decode_body, engine_for, json_response
from threadloom.server.schemas import tokenize as t

_decoder = msgspec.json.Decoder(t.TokenizeRequest)


def _ids(engine: Engine, req: t.TokenizeRequest, owner: str) -> list[int]:
    """Runs in a worker thread: long texts take a while to tokenize."""
    if req.text is not None:
        return engine.tokenizer.encode(req.text, add_special=req.add_special)
    assert req.messages is not None
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in req.messages
    ]
    # The same assembly a generation uses (BOS rule included), with no trimming and the whole
    # context as room: a conversation that cannot fit is an error, not silently shortened.
    assembly = engine.prompt.assemble_messages(
        messages,
        owner=owner,
        strategy="none",
        max_tokens=0,
        add_generation_prompt=req.add_generation_prompt,
        enable_thinking=req.enable_thinking,
    )
    return assembly.ids


def _piece(engine: Engine, token: int) -> t.Piece:
    raw = engine.tokenizer.piece(token) or b""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Part of a multi-byte character: its bytes, as llama.cpp reports them.
        return list(raw)


async def tokenize(request: web.Request, *, count_only: bool) -> web.Response:
    req = decode_body(_decoder, await request.read())
    engine = await engine_for(request, req.model)
    if (req.text is None) == (req.messages is None):
        raise ApiError(400, "give exactly one of text and messages", code="invalid_value")
    owner = request[OWNER]
    ids = await engine.offload(lambda: _ids(engine, req, owner))
    if count_only:
        return json_response(t.TokenCount(count=len(ids)))
    pieces = [_piece(engine, i) for i in ids] if req.with_pieces else None
    return json_response(t.TokenizeResponse(tokens=ids, count=len(ids), pieces=pieces))


def _handler(count_only: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return await tokenize(request, count_only=count_only)

    return handler


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/tokenize", _handler(count_only=False))
    app.router.add_post("/api/v1/tokenize/count", _handler(count_only=True))
