"""OpenAI/vLLM Responses API: `POST /v1/responses` (stateful through `previous_response_id`),
`GET`/`DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from threadloom import Response, Turn, tools
from threadloom.backends.base import SamplingParams
from threadloom.engine import Engine, Result, Started
from threadloom.errors import NotFound
from threadloom.request import Request
from threadloom.server import sse
from threadloom.server.errors import ApiError
from threadloom.server.keys import OWNER
from threadloom.server.routes import background, compat
from threadloom.server.routes import response_output as out
from threadloom.server.routes.common import (
    about,
    check_id,
    decode_items_body,
    engine_for,
    failure,
    final_result,
    json_response,
    mint_id,
    not_found,
    opener,
    output_sampling,
    page_after,
    path_id,
    sealer,
    store_engine,
)
from threadloom.server.routes.compat import refuse_unsupported
from threadloom.server.schemas import formats
from threadloom.server.schemas import responses as s
from threadloom.server.schemas import tools as tool_schemas
from threadloom.server.schemas.ids import RESPONSE_ID, THREAD_ID
from threadloom.server.schemas.items import (
    CompactionItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    tool_item,
)
from threadloom.storage import ConversationStore

_create = msgspec.json.Decoder(s.CreateResponse)


def _inputs(req: s.CreateResponse, open_item: s.Opener) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    if req.instructions is not None:
        out.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        out.append({"role": "user", "content": req.input})
    else:
        out.extend(item.turn(f"input[{i}]", open_item) for i, item in enumerate(req.input))
    return out


def usage(prompt: int, completion: int, cached: int) -> s.ResponseUsage:
    return s.ResponseUsage(
        input_tokens=prompt,
        input_tokens_details=s.InputTokensDetails(cached_tokens=cached),
        output_tokens=completion,
        output_tokens_details=s.OutputTokensDetails(),
        total_tokens=prompt + completion,
    )


def _details(status: str) -> tuple[s.ResponseError | None, s.IncompleteDetails | None]:
    return None, s.IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None


def _failure(error: str | None) -> s.ResponseError:
    code, message = failure(error)
    return s.ResponseError(code=code, message=message)


class _Draft:
    """What a response object carries before and after generation."""

    def __init__(self, req: s.CreateResponse, engine: Engine, sampling: SamplingParams) -> None:
        self.req = req
        self.sampling = sampling
        self.text, self.schema, self.schema_field = formats.responses_text(req.text)
        # The compaction `context_management` made before generating: first in the output.
        self.compaction: CompactionItem | None = None
        self.tools = tool_schemas.responses_spec(
            req.tools, req.tool_choice, req.parallel_tool_calls
        )
        self.model = engine.model_name
        self.created_at = int(time.time())
        # Replaced by the engine's id for the stored response once generation starts.
        self.id = mint_id("resp")
        cid = conversation_id(req)
        self.conversation = s.ConversationRef(id=cid) if cid is not None else None

    def started(self, event: Started) -> None:
        if event.response_id is not None:
            self.id = event.response_id

    def build(
        self,
        status: str,
        output: list[s.OutputItem],
        usage: s.ResponseUsage | None,
        result: Result | None = None,
    ) -> s.ResponseObject:
        error, incomplete = None, None
        if result is not None:
            if result.status == "failed":
                error = _failure(result.error)
            elif result.status == "incomplete" and result.finish_reason == "length":
                incomplete = s.IncompleteDetails(reason="max_output_tokens")
        conversation = self.conversation
        if result is not None and conversation is not None and result.thread_id != conversation.id:
            # Not stored in the conversation (it was deleted meanwhile): the answer says so.
            conversation = None
        return s.ResponseObject(
            id=(result.response_id if result and result.response_id else self.id),
            created_at=self.created_at,
            status=status,  # type: ignore[arg-type]
            model=self.model,
            output=output,
            usage=usage,
            previous_response_id=self.req.previous_response_id,
            store=self.req.store,
            metadata=self.req.metadata or {},
            instructions=self.req.instructions,
            error=error,
            incomplete_details=incomplete,
            max_output_tokens=self.req.max_output_tokens,
            conversation=conversation,
            background=bool(self.req.background),
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            truncation=self.req.truncation,
            tool_choice=self.req.tool_choice or "auto",
            tools=self.req.tools or [],
            parallel_tool_calls=self.req.parallel_tool_calls is not False,
            user=self.req.user,
            text=self.text,
        )

    def finished(self, result: Result) -> s.ResponseObject:
        u = result.usage
        rid = result.response_id or self.id
        return self.build(
            result.status,
            [
                *([self.compaction] if self.compaction else []),
                *out.output(rid, result.text, result.tool_calls, result.status),
            ],
            usage(u.prompt_tokens, u.completion_tokens, u.cached_tokens),
            result,
        )


def conversation_id(req: s.CreateResponse) -> str | None:
    """The conversation (thread) a create continues; not together with previous_response_id."""
    ref = req.conversation
    if ref is None:
        return None
    cid = ref if isinstance(ref, str) else ref.get("id")
    if not isinstance(cid, str):
        raise ApiError(400, 'conversation must be an id or {"id": ...}', param="conversation")
    check_id(cid, THREAD_ID, "conversation", "conversation")
    if req.previous_response_id is not None:
        raise ApiError(
            400,
            "give conversation or previous_response_id, not both",
            param="conversation",
            code="invalid_value",
        )
    return cid


def _request(
    req: s.CreateResponse, owner: str, sampling: SamplingParams, inputs: list[dict[str, str]]
) -> Request:
    """What shapes the prompt: shared by generation and input token counting, so a count is
    the prompt a create with the same body gets."""
    return Request(
        inputs=inputs,
        thread=conversation_id(req),
        previous_response_id=req.previous_response_id,
        owner=owner,
        sampling=sampling,
        strategy="tokens" if req.truncation == "auto" else "none",
        tools=tool_schemas.responses_spec(req.tools, req.tool_choice, req.parallel_tool_calls),
    )


def _generation(draft: _Draft, owner: str, inputs: list[dict[str, str]]) -> Request:
    """The create's generation. A conversation must exist (a thread id alone would create
    one), also when it is deleted while the request waits for its turn."""
    return msgspec.structs.replace(
        _request(draft.req, owner, draft.sampling, inputs),
        store=draft.req.store,
        create_thread=False,
        output_schema=draft.schema,
        output_schema_field=draft.schema_field,
        tools=draft.tools,
        announce=bool(draft.req.stream or draft.req.background),
    )


def _anchor_param(req: s.CreateResponse) -> str:
    """The field naming what a create continues (for its not-found errors)."""
    return "conversation" if req.conversation is not None else "previous_response_id"


async def create_response(request: web.Request) -> web.StreamResponse:
    owner = request[OWNER]
    req = decode_items_body(_create, await request.read(), "input")
    refuse_unsupported(req, compat.RESPONSES)
    if req.background and (req.stream or not req.store):
        raise ApiError(400, "background needs store true and stream false", param="background")
    engine = await engine_for(request, req.model)
    inputs = _inputs(req, opener(engine, owner))
    sampling = output_sampling(engine, req)
    draft = _Draft(req, engine, sampling)
    if req.context_management:
        threshold = req.context_management[0].compact_threshold or engine.context_length // 2
        inputs, summary = await engine.compact_request(
            _request(req, owner, sampling, inputs), threshold
        )
        if summary is not None:
            sealed = engine.compactor.seal(owner, summary.text)
            draft.compaction = CompactionItem(id=mint_id("cmp"), encrypted_content=sealed)
    events = engine.stream_request(_generation(draft, owner, inputs))
    try:
        first = await sse.started(events)
    except NotFound as e:
        raise about(e, _anchor_param(req)) from None
    draft.started(first)
    if req.background:
        background.start(request, draft.id, events)
        return json_response(draft.build("in_progress", [], None))
    if req.stream:
        spec = draft.tools
        scanner = tools.CallScanner(engine.tool_family, spec) if spec is not None else None
        return await sse.serve_stream(request, events, out.ResponsesStream(draft, scanner))
    result = await final_result(events)
    return json_response(draft.finished(result))


def _response_id(request: web.Request) -> str:
    return path_id(request, "response_id", RESPONSE_ID, "response")


async def _lookup(engine: Engine, owner: str, rid: str) -> tuple[Response, list[Turn], list[Turn]]:
    """The stored response with its input and output turns (only those are read)."""

    def read(store: ConversationStore) -> tuple[Response, list[Turn]]:
        stored = store.get_response(rid, owner=owner)
        own = stored.input_count + stored.output_count
        return stored, store.history(owner=owner, response=rid, limit=own)

    try:
        stored, turns = await engine.offload(lambda: read(engine.store))
    except NotFound:
        raise not_found("response", rid, "response_id") from None
    n_out, n_in = stored.output_count, stored.input_count
    outputs = turns[len(turns) - n_out :] if n_out else []
    inputs = turns[len(turns) - n_out - n_in : len(turns) - n_out]
    return stored, inputs, outputs


async def _running(engine: Engine, owner: str, rid: str) -> s.ResponseObject | None:
    """An announced response still generating (OpenAI keeps those retrievable)."""
    to = await engine.pending_response(owner, rid)
    if to is None:
        return None
    return s.ResponseObject(
        id=rid,
        created_at=int(time.time()),
        status="in_progress",
        model=to.model or engine.model_name,
        output=[],
        usage=None,
        previous_response_id=to.previous_response_id,
        store=True,
        metadata={k: str(v) for k, v in (to.metadata or {}).items()},
    )


async def cancel_response(request: web.Request) -> web.Response:
    rid = _response_id(request)
    return await background.cancel(request, rid, lambda: get_response(request))


async def get_response(request: web.Request) -> web.Response:
    engine = await store_engine(request)
    owner, rid = request[OWNER], _response_id(request)
    try:
        stored, _, outputs = await _lookup(engine, owner, rid)
    except ApiError as e:
        if e.status != 404:
            raise
        running = await _running(engine, owner, rid)
        if running is not None:
            return json_response(running)
        # The reply may have been stored (and its pending record settled, in the same
        # transaction) between the two reads: an announced id must not answer 404 then.
        stored, _, outputs = await _lookup(engine, owner, rid)
    status = stored.status
    error = _failure(stored.error) if status == "failed" else None
    _, incomplete = _details(status)
    return json_response(
        s.ResponseObject(
            id=stored.id,
            created_at=stored.created_ms // 1000,
            status=status,
            model=stored.model,
            output=_stored_output(stored.id, outputs, status),
            usage=usage(stored.prompt_tokens, stored.completion_tokens, stored.cached_tokens),
            previous_response_id=stored.previous_response_id,
            store=True,
            metadata={k: str(v) for k, v in stored.metadata.items()},
            error=error,
            incomplete_details=incomplete,
        )
    )


def _stored_output(response_id: str, outputs: list[Turn], status: str) -> list[s.OutputItem]:
    """A stored reply's output items: its text turn and its call turns, as the reply gave
    them."""
    text, calls = "", []
    for turn in outputs:
        item = tool_item(turn.id, turn.role, turn.content, turn.tool)
        if isinstance(item, FunctionCallItem):
            calls.append(tools.ToolCall(id=item.call_id, name=item.name, arguments=item.arguments))
        elif turn.role == "assistant":
            text = turn.content
    return out.output(response_id, text, tuple(calls), status)


async def delete_response(request: web.Request) -> web.Response:
    engine = await store_engine(request)
    rid = _response_id(request)
    owner = request[OWNER]
    try:
        await engine.delete_response(owner, rid)
    except NotFound:
        raise not_found("response", rid, "response_id") from None
    return json_response(s.DeletedResponse(id=rid))


async def input_items(request: web.Request) -> web.Response:
    engine = await store_engine(request)
    rid = _response_id(request)
    query = msgspec.convert(dict(request.query), s.InputItemsQuery, strict=False)
    owner = request[OWNER]
    try:
        _, inputs, _ = await _lookup(engine, owner, rid)
    except ApiError as e:
        # Announced and still generating: it exists (GET answers in_progress), its items do not
        # have their ids yet.
        if e.status == 404 and await engine.pending_response(owner, rid) is not None:
            raise ApiError(
                409,
                f"response {rid!r} is still generating; its input items are listed once stored",
                param="response_id",
                code="conflict",
            ) from None
        raise
    seal = sealer(engine, owner)
    items: list[s.InputItem | FunctionCallItem | FunctionCallOutputItem | CompactionItem] = [
        tool_item(t.id, t.role, t.content, t.tool, seal)
        or s.InputItem(id=t.id, role=t.role, content=[s.InputTextPart(text=t.content)])
        for t in inputs
    ]
    if query.order == "desc":
        items.reverse()
    page, more = page_after(
        items, lambda i: i.id, after=query.after, limit=query.limit, kind="input item"
    )
    return json_response(
        s.InputItemList(
            data=page,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=more,
        )
    )


async def input_tokens(request: web.Request) -> web.Response:
    """`POST /v1/responses/input_tokens`: the body of a create; the prompt tokens it would use,
    history behind `previous_response_id` and trimming included. Generates and stores nothing."""
    req = decode_items_body(_create, await request.read(), "input")
    refuse_unsupported(req, compat.RESPONSES)
    engine = await engine_for(request, req.model)
    sampling = output_sampling(engine, req)
    owner = request[OWNER]
    try:
        assembly = await engine.assemble_prompt(
            _request(req, owner, sampling, _inputs(req, opener(engine, owner)))
        )
    except NotFound as e:
        raise about(e, _anchor_param(req)) from None
    return json_response(s.InputTokens(input_tokens=assembly.prompt_tokens))


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/responses", create_response)
    app.router.add_post("/v1/responses/input_tokens", input_tokens)
    app.router.add_get("/v1/responses/{response_id}", get_response)
    app.router.add_delete("/v1/responses/{response_id}", delete_response)
    app.router.add_get("/v1/responses/{response_id}/input_items", input_items)
    app.router.add_post("/v1/responses/{response_id}/cancel", cancel_response)
    background.setup(app)
