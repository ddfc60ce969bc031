"""`POST /v1/responses/compact`: the model summarises a conversation (the one a
`previous_response_id` names, then `input`), and the answer holds the conversation's user
messages and one `compaction` item whose `encrypted_content` is the summary sealed for the
caller (`threadloom.compaction`). Nothing is stored: the item is stored where a client sends it
back (`input` of a response, a conversation's items)."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from threadloom.errors import InvalidInput, NotFound
from threadloom.server.keys import OWNER
from threadloom.server.routes.common import (
    about,
    decode_items_body,
    engine_for,
    json_response,
    mint_id,
    opener,
)
from threadloom.server.routes.responses import usage
from threadloom.server.schemas import compaction as cp
from threadloom.server.schemas.items import CompactionItem
from threadloom.server.schemas.responses import InputTextPart

_decoder = msgspec.json.Decoder(cp.CompactRequest)


async def compact(request: web.Request) -> web.Response:
    owner = request[OWNER]
    req = decode_items_body(_decoder, await request.read(), "input")
    engine = await engine_for(request, req.model)
    messages: list[dict[str, str]] = []
    rid = req.previous_response_id
    if rid is not None:
        try:
            messages = await engine.history_messages(owner, response=rid)
        except NotFound as e:
            raise about(e, "previous_response_id") from None
    if req.instructions is not None:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    elif req.input is not None:
        open_item = opener(engine, owner)
        messages.extend(item.turn(f"input[{i}]", open_item) for i, item in enumerate(req.input))
    if not any(m["role"] != "system" for m in messages):
        raise InvalidInput("there is no conversation to compact", param="input")
    summary = await engine.compact(owner, messages)
    kept: list[cp.KeptMessage | CompactionItem] = [
        cp.KeptMessage(id=mint_id("msg"), content=[InputTextPart(text=m["content"])])
        for m in messages
        if m["role"] == "user"
    ]
    item_id = mint_id("cmp")
    sealed = engine.compactor.seal(owner, summary.text)
    kept.append(CompactionItem(id=item_id, encrypted_content=sealed))
    return json_response(
        cp.CompactedResponse(
            id=item_id,
            created_at=int(time.time()),
            output=kept,
            usage=usage(summary.input_tokens, summary.output_tokens, 0),
        )
    )


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/responses/compact", compact)
