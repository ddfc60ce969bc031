"""Dialect-neutral endpoints (health and the model list) and helpers every dialect uses."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from threadloom.backends.base import SamplingParams
from threadloom.conversation import THREAD_DELETED
from threadloom.engine import Engine, Event, Finished, Result
from threadloom.server.errors import ApiError
from threadloom.server.keys import ENGINE
from threadloom.server.schemas.common import Health, Model, ModelList
from threadloom.server.schemas.items import Seal
from threadloom.server.schemas.responses import Opener, unsupported_item

T = TypeVar("T")
Events = AsyncGenerator[Event, None]

_encoder = msgspec.json.Encoder()
_STARTED = int(time.time())


def failure(error: str | None) -> tuple[str, str]:
    """A failed response's error code and message, for every dialect: the reason when it was
    stopped because its conversation was deleted; nothing more for a failed generation (its
    detail is the server's, in the log)."""
    if error == THREAD_DELETED:
        return "conversation_deleted", error
    return "server_error", "the generation failed"


async def final_result(events: Events) -> Result:
    """Runs a started generation to its end and returns its result (for non-streaming
    replies); the events are closed however this ends."""
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, Finished):
                return event.result
    raise RuntimeError("the generation ended without a result")


def sealer(engine: Engine, owner: str) -> Seal:
    """Seals a compaction turn's summary for `owner`, as its item's `encrypted_content`."""
    return lambda text: engine.compactor.seal(owner, text)


def opener(engine: Engine, owner: str) -> Opener:
    """Opens `owner`'s compaction items; anything else is a 400 naming the item."""
    return lambda sealed, field: engine.compactor.open(owner, sealed, field)


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(data), status=status, content_type="application/json")


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """Decodes a request body. Deep nesting (under an `Any` field) exhausts the recursion limit
    inside msgspec, and invalid UTF-8 inside a string raises UnicodeDecodeError rather than a
    DecodeError; both are the client's malformed input, not a server error."""
    try:
        return decoder.decode(body)
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply", code="invalid_json") from None
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the JSON body is not valid UTF-8: {e}", code="invalid_json") from None


def decode_items_body(decoder: msgspec.json.Decoder[T], body: bytes, field: str) -> T:
    """`decode_body` for a body with a list of input items under `field`: an item of a type
    not supported here is refused naming `field[i].type`, whatever else failed to decode."""
    try:
        return decode_body(decoder, body)
    except msgspec.ValidationError:
        unsupported = unsupported_item(body, field)
        if unsupported is not None:
            raise unsupported from None
        raise


def sampling_params(
    engine: Engine, *, max_tokens: int | None, max_tokens_param: str, **given: Any
) -> SamplingParams:
    """The sampler settings a request asked for; a None field keeps the engine's default. The
    output cap is checked here, not by the engine, so the 400 names the dialect's own field."""
    if max_tokens is not None:
        if max_tokens >= engine.context_length:
            raise ApiError(
                400,
                f"{max_tokens_param} must be smaller than the context ({engine.context_length})",
                param=max_tokens_param,
                code="invalid_value",
            )
        given["max_tokens"] = max_tokens
    return SamplingParams(**{k: v for k, v in given.items() if v is not None})


async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    scheduler = engine.scheduler
    return json_response(
        Health(
            model=engine.model_name,
            backend=engine.backend_name,
            slots=len(scheduler.slots),
            slots_busy=scheduler.busy,
            queue_depth=scheduler.waiting,
            threads=engine.threads,
        )
    )


async def models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return json_response(ModelList(data=[Model(id=engine.model_name, created=_STARTED)]))


def setup(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
