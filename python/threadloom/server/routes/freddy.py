"""Freddy-style threads dialect: `POST /v1/model/response` (a reply inside a thread, or chained
to an earlier response with `previousResponseId`) and the threads API (`/v1/threads`: create,
list, get, messages, update, delete).

Every thread call goes to the engine's store under the caller's tenant, so another tenant's
thread is simply not found. The store enforces the ids, states, limits and windows; this module
checks what it can up front (so nothing is stored on a bad request) and names the field in
every error."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec
from aiohttp import web

from threadloom import Thread, Turn
from threadloom.engine import Engine, Result
from threadloom.errors import (
    InvalidInput,
    LimitExceeded,
    NotFound,
    StateConflict,
    ThreadloomError,
)
from threadloom.request import Request
from threadloom.server.errors import ApiError
from threadloom.server.keys import OWNER
from threadloom.server.routes.common import (
    Events,
    about,
    check_id,
    decode_body,
    engine_for,
    failure,
    final_result,
    json_response,
    output_sampling,
    store_engine,
)
from threadloom.server.schemas import freddy as f
from threadloom.server.schemas.ids import THREAD_ID
from threadloom.storage import ConversationStore, cursor_index

T = TypeVar("T")

_create_response = msgspec.json.Decoder(f.CreateModelResponse)
_create_thread = msgspec.json.Decoder(f.CreateThread)
_update_thread = msgspec.json.Decoder(f.UpdateThread)


def _thread_object(t: Thread) -> f.ThreadObject:
    return f.ThreadObject(
        id=t.id,
        state=t.state,
        visible_in_ui=t.visible,
        metadata=t.metadata,
        message_count=t.message_count,
        created_at=t.created_ms // 1000,
        last_activity_at=t.last_activity_ms // 1000,
    )


def _check_id(tid: str | None, param: str) -> None:
    if tid is not None:
        check_id(tid, THREAD_ID, "thread", param)


def _path_thread_id(request: web.Request) -> str:
    tid = request.match_info["thread_id"]
    _check_id(tid, "threadId")
    return tid


# ---- model responses -------------------------------------------------------------------------


def _check_combination(req: f.CreateModelResponse) -> None:
    if req.previous_response_id is None:
        return
    if req.thread is not None:
        raise ApiError(
            400,
            "previousResponseId cannot be combined with thread: give one or the other",
            param="previousResponseId",
            code="invalid_value",
        )
    if req.thread_state is not None:
        raise ApiError(
            400,
            "threadState needs a thread; previousResponseId continues a response without one",
            param="threadState",
            code="invalid_value",
        )


class _Target:
    """The thread a reply goes into, and whether this request created it (so a request that
    fails before anything is stored can take it back)."""

    def __init__(self, thread_id: str, created: bool) -> None:
        self.id = thread_id
        self.created = created


async def _open_thread(engine: Engine, owner: str, req: f.CreateModelResponse) -> _Target:
    """Finds the requested thread or creates it (hidden when `store` is false, with the
    object form's metadata); no `thread` at all gets a new thread with a generated id."""
    ref = req.thread
    tid = ref if isinstance(ref, str) else ref.id if ref is not None else None
    metadata = ref.metadata if isinstance(ref, f.ThreadRef) else None
    _check_id(tid, "thread" if isinstance(ref, str) else "thread.id")
    if tid is not None:
        with contextlib.suppress(NotFound):
            await engine.offload(lambda: engine.store.get_thread(tid, owner=owner))
            return _Target(tid, created=False)
    try:
        # Create-if-missing: a deleted or expired conversation's id is NotFound (404), as the
        # seed's clients expect, rather than a fresh thread that lost its history.
        t = await engine.offload(
            lambda: engine.store.create_thread(
                tid, owner=owner, metadata=metadata, visible=req.store, exist_ok=True
            )
        )
    except NotFound as e:
        raise about(e, "thread") from None
    except ThreadloomError as e:
        raise about(e, "thread.metadata" if metadata is not None else "thread") from None
    # Empty: this request made it (or one racing it did; undoing an empty thread loses nothing).
    return _Target(t.id, created=t.head is None)


def _generation_error(e: BaseException, req: f.CreateModelResponse) -> BaseException:
    """Names the field behind an engine or store error: the conversation it continues, or the
    inputs that do not fit (the context, or the 10,000 messages of a conversation)."""
    anchor = "previousResponseId" if req.previous_response_id else "thread"
    if isinstance(e, LimitExceeded):
        return about(e, "inputs")
    if isinstance(e, (NotFound, StateConflict)):
        return about(e, anchor)
    if isinstance(e, InvalidInput):
        return about(e, "previousResponseId" if req.previous_response_id else "inputs")
    return e


async def _generate(
    engine: Engine, owner: str, events: Events, req: f.CreateModelResponse, target: _Target | None
) -> Result:
    """Runs the generation to its end. A failure stores nothing (the engine appends only at
    the end, in one commit), so a thread this request created is taken back too."""
    try:
        return await final_result(events)
    except Exception as e:
        if target is not None and target.created:
            with contextlib.suppress(ThreadloomError):
                await engine.discard_thread_if_empty(owner, target.id)
        raise _generation_error(e, req) from None


async def _apply_state(engine: Engine, owner: str, req: f.CreateModelResponse, r: Result) -> None:
    """`threadState` takes effect once the reply is stored, so a request can add a last
    message and lock or archive the thread in one go. A failed reply leaves the thread open
    for a retry."""
    if req.thread_state in (None, "open") or r.thread_id is None or r.status == "failed":
        return
    state = req.thread_state
    thread_id = r.thread_id
    try:
        await engine.in_turn(
            owner, thread_id, lambda store: store.update_thread(thread_id, owner=owner, state=state)
        )
    except ThreadloomError as e:
        raise about(e, "threadState") from None


def _model_response(req: f.CreateModelResponse, r: Result, created_at: int) -> f.ModelResponse:
    u = r.usage
    error = None
    if r.status == "failed":
        code, message = failure(r.error)
        error = f.ResponseError(code=code, message=message)
    return f.ModelResponse(
        id=r.response_id,
        created_at=created_at,
        model=r.model,
        status=r.status,
        thread_id=r.thread_id,
        previous_response_id=req.previous_response_id,
        output=[f.OutputMessage(texts=[f.Text(text=r.text)])],
        usage=f.Usage(
            input_tokens=u.prompt_tokens,
            output_tokens=u.completion_tokens,
            total_tokens=u.prompt_tokens + u.completion_tokens,
            cached_tokens=u.cached_tokens,
        ),
        error=error,
    )


async def create_model_response(request: web.Request) -> web.Response:
    owner = request[OWNER]
    created_at = int(time.time())
    req = decode_body(_create_response, await request.read())
    engine = await engine_for(request, req.model)
    _check_combination(req)
    sampling = output_sampling(engine, req, "maxOutputTokens")
    inputs = [{"role": m.role, "content": m.content()} for m in req.inputs]
    target = None
    if req.previous_response_id is None:
        target = await _open_thread(engine, owner, req)
    events = engine.stream_request(
        Request(
            inputs=inputs,
            thread=target.id if target is not None else None,
            previous_response_id=req.previous_response_id,
            owner=owner,
            sampling=sampling,
            anchor_window=True,  # Freddy continues responses up to 24 h old
            visible=req.store,
            announce=False,  # the id is shown only with the stored reply
        )
    )
    result = await _generate(engine, owner, events, req, target)
    await _apply_state(engine, owner, req, result)
    return json_response(_model_response(req, result, created_at))


# ---- threads ---------------------------------------------------------------------------------


async def create_thread(request: web.Request) -> web.Response:
    engine = await store_engine(request)
    body = await request.read()
    req = decode_body(_create_thread, body) if body.strip() else f.CreateThread()
    _check_id(req.id, "id")
    try:
        t = await engine.offload(
            lambda: engine.store.create_thread(req.id, owner=request[OWNER], metadata=req.metadata)
        )
    except StateConflict as e:
        raise about(e, "id") from None
    except ThreadloomError as e:
        raise about(e, "metadata") from None
    return json_response(_thread_object(t))


async def list_threads(request: web.Request) -> web.Response:
    engine = await store_engine(request)
    query = msgspec.convert(dict(request.query), f.ListThreadsQuery, strict=False)
    try:
        page = await engine.offload(
            lambda: engine.store.list_threads(
                owner=request[OWNER],
                visible=query.visible_in_ui,
                limit=query.limit,
                after=query.cursor,
            )
        )
    except ThreadloomError as e:
        raise about(e, "cursor") from None
    return json_response(
        f.ThreadList(
            data=[_thread_object(t) for t in page.threads],
            has_more=page.next_cursor is not None,
            next_cursor=page.next_cursor,
        )
    )


async def _load(request: web.Request, call: Callable[[ConversationStore, str, str], T]) -> T:
    """Runs `call(store, thread_id, owner)` for the thread in the path."""
    engine = await store_engine(request)
    tid = _path_thread_id(request)
    owner = request[OWNER]
    try:
        return await engine.offload(lambda: call(engine.store, tid, owner))
    except NotFound as e:
        raise about(e, "threadId") from None


async def get_thread(request: web.Request) -> web.Response:
    t = await _load(request, lambda s, tid, owner: s.get_thread(tid, owner=owner))
    return json_response(_thread_object(t))


def _message(turn: Turn) -> f.ThreadMessage:
    return f.ThreadMessage(
        id=turn.id,
        role=turn.role,
        texts=[f.Text(text=turn.content)],
        created_at=turn.created_ms // 1000,
    )


async def thread_messages(request: web.Request) -> web.Response:
    """A page of the thread's messages, oldest first: the newest `limit`, or with `before` (a
    message id from a page already read) the `limit` before that one. The first page reads
    only itself (and one more, to tell `hasMore`); a cursor is looked up on the thread's path,
    so one from another thread is refused."""
    query = msgspec.convert(dict(request.query), f.MessagesQuery, strict=False)

    def page(store: ConversationStore, tid: str, owner: str) -> list[Turn]:
        if query.before is None:
            return store.history(owner=owner, thread=tid, limit=query.limit + 1)
        path = store.history(owner=owner, thread=tid)
        end = cursor_index(path, query.before, "message")
        return path[max(0, end - query.limit - 1) : end]

    try:
        turns = await _load(request, page)
    except InvalidInput as e:
        raise about(e, "before") from None
    more = len(turns) > query.limit
    turns = turns[1:] if more else turns
    tid = request.match_info["thread_id"]
    return json_response(
        f.MessageList(
            thread_id=tid,
            data=[_message(t) for t in turns],
            has_more=more,
            first_id=turns[0].id if turns else None,
        )
    )


async def update_thread(request: web.Request) -> web.Response:
    req = decode_body(_update_thread, await request.read())
    engine, tid, owner = await store_engine(request), _path_thread_id(request), request[OWNER]
    try:
        # In the thread's turn: a reply generating on it is stored before it is locked.
        t = await engine.in_turn(
            owner,
            tid,
            lambda s: s.update_thread(tid, owner=owner, metadata=req.metadata, state=req.state),
        )
    except NotFound as e:
        raise about(e, "threadId") from None
    except StateConflict as e:
        raise about(e, "state" if req.state is not None else "metadata") from None
    except ThreadloomError as e:
        raise about(e, "metadata") from None
    return json_response(_thread_object(t))


async def delete_thread(request: web.Request) -> web.Response:
    engine, tid = await store_engine(request), _path_thread_id(request)
    try:
        await engine.delete_thread(request[OWNER], tid)
    except NotFound as e:
        raise about(e, "threadId") from None
    return json_response(f.DeletedThread(id=request.match_info["thread_id"]))


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/model/response", create_model_response)
    app.router.add_post("/v1/threads", create_thread)
    app.router.add_get("/v1/threads", list_threads)
    app.router.add_get("/v1/threads/{thread_id}", get_thread)
    app.router.add_patch("/v1/threads/{thread_id}", update_thread)
    app.router.add_delete("/v1/threads/{thread_id}", delete_thread)
    app.router.add_get("/v1/threads/{thread_id}/messages", thread_messages)
