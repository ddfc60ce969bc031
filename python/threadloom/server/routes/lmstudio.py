"""LM Studio's native stateful chat: `POST /api/v1/chat`.

Every stored reply is a new store response; its id goes back to the client as `thread_id` (and
as `response_id`, LM Studio's newer name). Sending either id back, as `thread_id` or
`previous_response_id`, continues from that point, so continuing from an older id branches.
The ids are the Responses API's, so `/v1/responses` can continue these conversations too."""

from __future__ import annotations

import logging
from typing import Literal, cast

import msgspec
from aiohttp import web

from threadloom.backends.base import SamplingParams
from threadloom.engine import Engine, Result, TokenEvent
from threadloom.errors import NotFound, StateConflict
from threadloom.request import Request
from threadloom.server import sse
from threadloom.server.errors import ApiError
from threadloom.server.keys import OWNER
from threadloom.server.routes.common import (
    Events,
    about,
    decode_body,
    engine_for,
    final_result,
    generation_failed,
    json_response,
    output_sampling,
)
from threadloom.server.schemas import lmstudio as lm

_decoder = msgspec.json.Decoder(lm.StatefulChatRequest)
log = logging.getLogger("threadloom.server")
Phase = Literal["prompt", "reasoning", "message", "done"]


# ---- request ---------------------------------------------------------------------------------


def _inputs(req: lm.StatefulChatRequest) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    if req.system_prompt is not None:
        out.append({"role": "system", "content": req.system_prompt})
    if isinstance(req.input, str):
        out.append({"role": "user", "content": req.input})
        return out
    # Each item is its own user turn: no separator is invented between them.
    for i, item in enumerate(req.input):
        if isinstance(item, lm.ImageInput):
            raise ApiError(
                400,
                "image input is not supported: the model reads text only",
                param=f"input[{i}]",
                code="unsupported_input",
            )
        out.append({"role": "user", "content": item.content})
    return out


def _sampling(req: lm.StatefulChatRequest, engine: Engine) -> SamplingParams:
    if req.context_length is not None and req.context_length > engine.context_length:
        raise ApiError(
            400,
            f"context_length must be at most the loaded model's context ({engine.context_length})",
            param="context_length",
            code="invalid_value",
        )
    return output_sampling(engine, req, top_k=req.top_k, repetition_penalty=req.repeat_penalty)


def _anchor(req: lm.StatefulChatRequest) -> tuple[str | None, str]:
    """The stored response to continue from, and the field that named it (for errors)."""
    if req.previous_response_id is None:
        return req.thread_id, "thread_id"
    if req.thread_id is not None and req.thread_id != req.previous_response_id:
        raise ApiError(
            400,
            "thread_id and previous_response_id name different responses; give one of them",
            param="previous_response_id",
            code="conflicting_parameters",
        )
    return req.previous_response_id, "previous_response_id"


def _thinking(req: lm.StatefulChatRequest) -> bool | None:
    # The chat templates know only on and off, so every effort level means on.
    return None if req.reasoning is None else req.reasoning != "off"


# ---- result ----------------------------------------------------------------------------------


def _stats(result: Result, engine: Engine) -> lm.Stats:
    u = result.usage
    # The engine counts output tokens without telling reasoning apart; re-counting the
    # reasoning text misses only the think tags around it.
    reasoning = engine.tokenizer.count(result.reasoning) if result.reasoning else 0
    first = result.time_to_first_token_s
    # Generation speed after the first token, which also paid for the prompt.
    speed = result.decode_tokens_per_s
    if speed is None:
        speed = u.completion_tokens / result.total_s if result.total_s > 0 else 0.0
    return lm.Stats(
        input_tokens=u.prompt_tokens,
        total_output_tokens=u.completion_tokens,
        reasoning_output_tokens=min(reasoning, u.completion_tokens),
        tokens_per_second=speed,
        time_to_first_token_seconds=first or 0.0,
    )


def _chat_result(result: Result, engine: Engine) -> lm.ChatResult:
    output: list[lm.OutputItem] = []
    if result.reasoning:
        output.append(lm.ReasoningOutput(content=result.reasoning))
    output.append(lm.MessageOutput(content=result.text))
    # A failed response is kept for inspection but cannot be continued, so it gets no handle.
    handle = result.response_id if result.status != "failed" else None
    return lm.ChatResult(
        model_instance_id=result.model,
        output=output,
        stats=_stats(result, engine),
        thread_id=handle,
        response_id=handle,
    )


def _stream_error(error: ApiError) -> lm.ChatErrorEvent:
    kind: lm.ErrorType = "invalid_request"
    if error.status >= 500:
        kind = "internal_error"
    elif error.code == "model_not_found":
        kind = "model_not_found"
    detail = lm.ChatErrorDetail(
        type=kind, message=error.message, code=error.code, param=error.param
    )
    return lm.ChatErrorEvent(error=detail)


# ---- handler ---------------------------------------------------------------------------------


async def _start(events: Events, anchor_param: str) -> None:
    """The first event: the anchor is checked and the prompt assembled before any byte is sent,
    so these failures are plain JSON errors and nothing has been stored."""
    try:
        await sse.started(events)
    except (NotFound, StateConflict) as e:  # about the response it continues
        raise about(e, anchor_param) from None


async def chat(request: web.Request) -> web.StreamResponse:
    req = decode_body(_decoder, await request.read())
    engine = await engine_for(request, req.model)
    inputs = _inputs(req)
    sampling = _sampling(req, engine)
    anchor, anchor_param = _anchor(req)
    events = engine.stream_request(
        Request(
            inputs=inputs,
            previous_response_id=anchor,
            store=req.store,
            owner=request[OWNER],
            sampling=sampling,
            enable_thinking=_thinking(req),
            announce=bool(req.stream),
        )
    )
    await _start(events, anchor_param)
    if req.stream:
        return await sse.serve_stream(request, events, _LmStudioStream(engine))
    result = await final_result(events)
    if result.status == "failed":
        raise generation_failed(result)
    return json_response(_chat_result(result, engine))


# ---- streaming -------------------------------------------------------------------------------


class _Phases:
    """Turns token events into LM Studio's bracketed phases: prompt processing ends with the
    first token, then reasoning and message text each open with a start event and close with
    an end event when the other kind begins or generation ends."""

    def __init__(self, out: sse.Frames) -> None:
        self.out = out
        self.phase: Phase = "prompt"

    def send(self, event: lm.StreamEvent) -> None:
        tag = type(event).__struct_config__.tag
        self.out.add(sse.frame(event, cast(str, tag)))

    def begin(self, model: str) -> None:
        self.send(lm.ChatStart(model_instance_id=model))
        self.send(lm.PromptProcessingStart())

    def _enter(self, phase: Phase) -> None:
        if self.phase == phase:
            return
        if self.phase == "prompt":
            self.send(lm.PromptProcessingEnd())
        elif self.phase == "reasoning":
            self.send(lm.ReasoningEnd())
        elif self.phase == "message":
            self.send(lm.MessageEnd())
        if phase == "reasoning":
            self.send(lm.ReasoningStart())
        elif phase == "message":
            self.send(lm.MessageStart())
        self.phase = phase

    def token(self, event: TokenEvent) -> None:
        if not event.text:
            return
        if event.reasoning:
            self._enter("reasoning")
            self.send(lm.ReasoningDelta(content=event.text))
        else:
            self._enter("message")
            self.send(lm.MessageDelta(content=event.text))

    def end(self) -> None:
        """Closes the open phase. The result always carries a message, so an empty reply still
        gets its (empty) message.start/message.end pair."""
        self._enter("message")
        self._enter("done")


class _LmStudioStream:
    """LM Studio's named events. A failed generation sends an `error` event, then the final
    `chat.end` with what was generated, as LM Studio does."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.phases: _Phases | None = None

    async def open(self, request: web.Request) -> web.StreamResponse:
        return await sse.open_stream(request)

    def start(self, out: sse.Frames) -> None:
        self.phases = _Phases(out)
        self.phases.begin(self.engine.model_name)

    def token(self, out: sse.Frames, event: TokenEvent) -> None:
        assert self.phases is not None
        self.phases.token(event)

    async def finish(self, out: sse.Frames, result: Result) -> None:
        assert self.phases is not None
        self.phases.end()
        if result.status == "failed":
            self.phases.send(_stream_error(generation_failed(result)))
        self.phases.send(lm.ChatEnd(result=_chat_result(result, self.engine)))

    def error(self, out: sse.Frames, error: ApiError) -> None:
        out.add(sse.frame(_stream_error(error), "error"))


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/chat", chat)
