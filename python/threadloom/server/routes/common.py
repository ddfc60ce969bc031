"""The dialect toolkit: what every dialect's routes share, so that each dialect file holds only
its wire format. The model of a request (`engine_for`, `store_engine`), the id grammar
(`check_id`, `path_id`, `mint_id`), the failure of a generation (`failure`,
`generation_failed`), paging a list by cursor (`page_after`), and errors: an engine or store
error renamed to the request field it is about (`about`), a 404 naming what was not found
(`not_found`). Also the dialect-neutral endpoints (health and the model list)."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Protocol, TypeVar

import msgspec
from aiohttp import web

from threadloom._core import new_response_id
from threadloom.backends.base import SamplingParams
from threadloom.engine import Engine, Event, Finished, Result
from threadloom.errors import ThreadloomError
from threadloom.recording import THREAD_DELETED
from threadloom.registry import Lease, LoadedModel
from threadloom.request import Request
from threadloom.server.errors import ApiError
from threadloom.server.keys import LEASES, MODELS
from threadloom.server.middleware import Handler
from threadloom.server.schemas.common import Health, Model, ModelHealth, ModelList
from threadloom.server.schemas.ids import THREAD_ID
from threadloom.server.schemas.items import Seal
from threadloom.server.schemas.responses import Opener, unsupported_item

T = TypeVar("T")
Events = AsyncGenerator[Event, None]

_encoder = msgspec.json.Encoder()
THREAD_ID_HINT = ": use 1 to 128 characters of [A-Za-z0-9_.:-], not . or .."
_STARTED = int(time.time())


# What a client is told of a failed generation: its detail is the server's, in the log.
GENERATION_FAILED = "the generation failed"


def failure(error: str | None) -> tuple[str, str]:
    """A failed response's error code and message, for every dialect: the reason when it was
    stopped because its conversation was deleted; nothing more for a failed generation."""
    if error == THREAD_DELETED:
        return "conversation_deleted", error
    return "server_error", GENERATION_FAILED


def generation_failed(result: Result) -> ApiError:
    """The error a dialect answers (or streams) for a failed generation: a 409 when its
    conversation was deleted under it (the client's own doing), else a 500."""
    code, message = failure(result.error)
    if code == "conversation_deleted":
        return ApiError(409, message, code=code)
    return ApiError(500, message, type="server_error", code=code)


# ---- errors about a request field -----------------------------------------------------------


def about(e: BaseException, param: str) -> BaseException:
    """`e` as the client-facing error naming the request field `param` it is about: the one
    place an engine or store error gets the dialect's own field name. Anything that is not a
    threadloom error passes through unchanged."""
    if not isinstance(e, (ThreadloomError, ApiError)):
        return e
    from threadloom.server.middleware import to_api_error

    error = to_api_error(e)
    error.param = param
    return error


def not_found(kind: str, ident: str, param: str) -> ApiError:
    """The 404 for a `kind` (thread, conversation, response, item...) `ident` that does not
    exist (or is another tenant's)."""
    return ApiError(404, f"{kind} {ident!r} not found", param=param, code="not_found")


# ---- ids --------------------------------------------------------------------------------------


def check_id(ident: str, grammar: re.Pattern[str], kind: str, param: str) -> str:
    """`ident` if the grammar (`schemas.ids`) takes it whole; else a 400 naming `param`."""
    if not grammar.fullmatch(ident):
        # A client chooses thread ids, so it is told the grammar; other ids are the server's.
        hint = THREAD_ID_HINT if grammar is THREAD_ID else ""
        raise ApiError(400, f"invalid {kind} id {ident!r}{hint}", param=param, code="invalid_id")
    return ident


def path_id(request: web.Request, name: str, grammar: re.Pattern[str], kind: str) -> str:
    """The id in the path placeholder `name`, checked against the grammar."""
    return check_id(request.match_info[name], grammar, kind, name)


def mint_id(prefix: str) -> str:
    """An id in the store's format (128 random bits, the core's encoding) for something not
    (yet) stored: a chat completion, a compaction item, a conversation."""
    return prefix + "_" + new_response_id().removeprefix("resp_")


# ---- paging -----------------------------------------------------------------------------------


def page_after(
    items: Sequence[T],
    key: Callable[[T], str],
    *,
    after: str | None,
    limit: int,
    kind: str,
    param: str = "after",
) -> tuple[list[T], bool]:
    """One page of `items` (already in the order asked for): the `limit` after the item whose
    key is `after` (from the start without one), and whether more follow. A cursor that names
    no item is a 400 naming `param`."""
    start = 0
    if after is not None:
        keys = [key(i) for i in items]
        if after not in keys:
            raise ApiError(400, f"no {kind} {after!r}", param=param, code="invalid_value")
        start = keys.index(after) + 1
    rest = items[start:]
    return list(rest[:limit]), len(rest) > limit


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


class OutputSettings(Protocol):
    """The sampler fields most dialects' request bodies spell alike."""

    @property
    def max_output_tokens(self) -> int | None: ...
    @property
    def temperature(self) -> float | None: ...
    @property
    def top_p(self) -> float | None: ...


def output_sampling(
    engine: Engine, req: OutputSettings, max_tokens_param: str = "max_output_tokens", **more: Any
) -> SamplingParams:
    """`sampling_params` for a body with `max_output_tokens`, `temperature` and `top_p` (and
    `more` settings of the dialect's own)."""
    return sampling_params(
        engine,
        max_tokens=req.max_output_tokens,
        max_tokens_param=max_tokens_param,
        temperature=req.temperature,
        top_p=req.top_p,
        **more,
    )


def stateless(messages: list[dict[str, str]], owner: str, **options: Any) -> Request:
    """A request that carries its whole conversation and stores nothing: the last message is
    the input, the ones before it the history."""
    return Request(inputs=messages[-1:], history=messages[:-1], store=False, owner=owner, **options)


# ---- the model of a request -----------------------------------------------------------------


async def engine_for(request: web.Request, model: str | None, param: str = "model") -> Engine:
    """The engine of the model a request names (a declared name or alias; None or "default":
    the first declared model), loaded first if it is not, and held until the request's
    handler returns. A name nobody declared is a 404 `model_not_found` naming `param`."""
    return _hold(request, await request.app[MODELS].acquire(model, param))


async def store_engine(request: web.Request) -> Engine:
    """An engine for a route's store work (threads, items, deletes, reads): every model's
    engine shares the store, a thread's turn and the running generations, so any loaded one
    does; the default model is loaded only when none is."""
    return _hold(request, await request.app[MODELS].any_engine())


def _hold(request: web.Request, lease: Lease) -> Engine:
    if LEASES not in request:
        request[LEASES] = []
    request[LEASES].append(lease)
    return lease.engine


@web.middleware
async def release_models(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Innermost: the models a request held are released once its handler returned (a
    stream's last byte written; a background response is held by its own generation)."""
    try:
        return await handler(request)
    finally:
        for lease in request.get(LEASES, ()):
            lease.release()


async def health(request: web.Request) -> web.Response:
    """The default model's figures at the top (as with one model), every declared model's
    under `models`; nothing is loaded to answer."""
    models = [_model_health(e) for e in request.app[MODELS].entries]
    first = models[0]
    return json_response(
        Health(
            model=first.name,
            backend=first.backend,
            slots=first.slots,
            slots_busy=first.slots_busy,
            queue_depth=first.queue_depth,
            threads=first.threads,
            models=models,
        )
    )


def _model_health(entry: LoadedModel) -> ModelHealth:
    engine = entry.engine
    if engine is None:
        return ModelHealth(name=entry.name, loaded=False, aliases=entry.spec.aliases)
    scheduler = engine.scheduler
    return ModelHealth(
        name=entry.name,
        loaded=True,
        aliases=entry.spec.aliases,
        backend=engine.backend_name,
        slots=len(scheduler.slots),
        slots_busy=scheduler.busy,
        queue_depth=scheduler.waiting,
        threads=engine.threads,
    )


async def models(request: web.Request) -> web.Response:
    """Every declared model, loaded or not (`loaded` says which)."""
    entries = request.app[MODELS].entries
    return json_response(
        ModelList(
            data=[
                Model(
                    id=e.name, created=_STARTED, loaded=e.engine is not None, aliases=e.spec.aliases
                )
                for e in entries
            ]
        )
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
