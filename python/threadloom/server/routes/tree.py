"""A thread's branch tree, and replies continued from any of its turns:

- `GET /v1/threads/{thread_id}/tree`: every turn of the thread and of its recorded branches,
  with parent and children, token counts and branch points.
- `GET /v1/threads/{thread_id}/turns/{turn_id}/children`: the continuations of one turn.
- `POST /v1/threads/{thread_id}/continue`: a reply after `head` (into the thread), after any
  turn of the tree (a branch) or as a new first message (`root`), JSON or server-sent events.

Everything goes through the engine (`Engine.thread_tree`, `branch_point`, `register_branch`),
under the caller's tenant: another tenant's thread or turn is simply not found."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
from aiohttp import web

from threadloom import branches
from threadloom.engine import Engine, Result, Started, TokenEvent
from threadloom.errors import NotFound, StateConflict
from threadloom.request import Request
from threadloom.server import sse
from threadloom.server.errors import ApiError
from threadloom.server.keys import OWNER
from threadloom.server.routes.common import (
    about,
    decode_body,
    engine_for,
    final_result,
    json_response,
    not_found,
    output_sampling,
    path_id,
    store_engine,
)
from threadloom.server.schemas import tree as s
from threadloom.server.schemas.ids import THREAD_ID
from threadloom.server.schemas.items import item_kind

_continue = msgspec.json.Decoder(s.ContinueRequest)


def _thread_id(request: web.Request) -> str:
    return path_id(request, "thread_id", THREAD_ID, "thread")


def _not_found(tid: str) -> ApiError:
    return not_found("thread", tid, "thread_id")


def _node(n: branches.TreeNode) -> s.TreeNode:
    t = n.turn
    return s.TreeNode(
        id=t.id,
        parent_id=t.parent_id,
        role=t.role,
        content=t.content,
        reasoning=t.reasoning,
        created_at=t.created_ms // 1000,
        tokens=n.tokens,
        on_thread=n.on_thread,
        children=n.children,
        response_id=n.response_id,
        kind=item_kind(t.role, t.tool),
    )


async def _tree(request: web.Request) -> branches.Tree:
    engine, owner, tid = await store_engine(request), request[OWNER], _thread_id(request)
    try:
        return await engine.thread_tree(owner, tid)
    except NotFound:
        raise _not_found(tid) from None


async def get_tree(request: web.Request) -> web.Response:
    tree = await _tree(request)
    nodes = [_node(n) for n in tree.nodes]
    points = [n.id for n in nodes if len(n.children) > 1]
    if len(tree.roots) > 1:
        points.insert(0, "root")
    return json_response(
        s.ThreadTree(
            thread_id=tree.thread.id,
            state=tree.thread.state,
            head=tree.thread.head,
            roots=tree.roots,
            branch_points=points,
            nodes=nodes,
        )
    )


async def turn_children(request: web.Request) -> web.Response:
    tree = await _tree(request)
    turn_id = request.match_info["turn_id"]
    by_id = {n.turn.id: n for n in tree.nodes}
    node = by_id.get(turn_id)
    if node is None:
        raise ApiError(
            404, f"no turn {turn_id!r} in this thread", param="turn_id", code="not_found"
        )
    return json_response(
        s.TurnChildren(
            thread_id=tree.thread.id,
            turn_id=turn_id,
            data=[_node(by_id[c]) for c in node.children],
        )
    )


# ---- replies ---------------------------------------------------------------------------------


class _Point:
    """Where the reply goes: into the thread (`after` is its head), or a branch after `after`
    (None: a new first message)."""

    def __init__(self, thread: str, into_thread: bool, after: str | None) -> None:
        self.thread, self.into_thread, self.after = thread, into_thread, after


async def _point(engine: Engine, owner: str, tid: str, after: str) -> _Point:
    try:
        at = await engine.branch_point(owner, tid, after)
    except StateConflict as e:
        raise about(e, "thread_id") from None
    except NotFound as e:
        if e.kind == "turn":  # `after` names no turn of this thread's tree
            raise about(e, "after") from None
        raise _not_found(tid) from None
    if at is None:
        head = None if after == branches.HEAD else after
        return _Point(tid, True, head)
    return _Point(tid, False, None if at == branches.ROOT else at)


def _request(point: _Point, owner: str, inputs: list[dict[str, str]], **rest: Any) -> Request:
    if point.into_thread:
        # Into the thread only while it exists: one deleted meanwhile is not made again.
        return Request(inputs=inputs, owner=owner, thread=point.thread, create_thread=False, **rest)
    return Request(inputs=inputs, owner=owner, after_turn=point.after, **rest)


def _reply(point: _Point, r: Result) -> s.ContinueResult:
    u = r.usage
    return s.ContinueResult(
        response_id=r.response_id,
        thread_id=r.thread_id,
        turn_id=r.turn_id,
        after=point.after,
        branch=r.thread_id is None,
        status=r.status,
        finish_reason=r.finish_reason,
        text=r.text,
        reasoning=r.reasoning,
        model=r.model,
        usage=s.Usage(
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            cached_tokens=u.cached_tokens,
        ),
        messages_dropped=r.messages_dropped,
        time_to_first_token_s=r.time_to_first_token_s,
        decode_tokens_per_s=r.decode_tokens_per_s,
        total_s=r.total_s,
        error=r.error,
    )


async def _record_moved(engine: Engine, owner: str, point: _Point, r: Result) -> None:
    """A reply meant for the thread that was kept as a branch (the thread moved on while it
    generated) is recorded as a branch of it."""
    if point.into_thread and r.thread_id is None and r.response_id is not None:
        with contextlib.suppress(NotFound):  # the thread was deleted meanwhile: no tree left
            await engine.register_branch(owner, point.thread, r.response_id, point.after)


async def continue_thread(request: web.Request) -> web.StreamResponse:
    owner, tid = request[OWNER], _thread_id(request)
    req = decode_body(_continue, await request.read())
    engine = await engine_for(request, req.model)
    sampling = output_sampling(engine, req)
    point = await _point(engine, owner, tid, req.after)
    inputs = [{"role": m.role, "content": m.content} for m in req.input]
    events = engine.stream_request(_request(point, owner, inputs, sampling=sampling))
    started = await sse.started(events)
    if not point.into_thread and started.response_id is not None:
        # Recorded before the first token: a reply stopped half-way is still in the tree.
        await engine.register_branch(owner, tid, started.response_id, point.after)
    if req.stream:
        return await sse.serve_stream(request, events, _ReplyStream(engine, owner, point, started))
    result = await final_result(events)
    await _record_moved(engine, owner, point, result)
    return json_response(_reply(point, result))


class _ReplyStream:
    """`reply.started`, `reply.delta`s, then `reply.done` with the stored reply (a failed
    generation too: its status says so); `reply.error` when the stream cannot go on."""

    def __init__(self, engine: Engine, owner: str, point: _Point, started: Started) -> None:
        self.engine, self.owner, self.point, self.started = engine, owner, point, started

    async def open(self, request: web.Request) -> web.StreamResponse:
        return await sse.open_stream(request)

    def _send(self, out: sse.Frames, event: s.StreamEvent) -> None:
        tag = type(event).__struct_config__.tag
        out.add(sse.frame(event, str(tag)))

    def start(self, out: sse.Frames) -> None:
        st = self.started
        self._send(
            out,
            s.StreamStarted(
                response_id=st.response_id,
                after=self.point.after,
                branch=not self.point.into_thread,
                prompt_tokens=st.prompt_tokens,
                cached_tokens=st.cached_tokens,
            ),
        )

    def token(self, out: sse.Frames, event: TokenEvent) -> None:
        if event.text:
            self._send(out, s.StreamDelta(text=event.text, reasoning=event.reasoning))

    async def finish(self, out: sse.Frames, result: Result) -> None:
        await _record_moved(self.engine, self.owner, self.point, result)
        self._send(out, s.StreamDone(reply=_reply(self.point, result)))

    def error(self, out: sse.Frames, error: ApiError) -> None:
        self._send(out, s.StreamError(message=error.message, code=error.code))


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/threads/{thread_id}/tree", get_tree)
    app.router.add_get("/v1/threads/{thread_id}/turns/{turn_id}/children", turn_children)
    app.router.add_post("/v1/threads/{thread_id}/continue", continue_thread)
