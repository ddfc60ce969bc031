"""OpenAI Chat Completions, stateless: `POST /v1/chat/completions`. The client sends the whole
conversation; nothing is stored."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from threadloom import tools
from threadloom.backends.base import SamplingParams
from threadloom.engine import Engine, Result, TokenEvent
from threadloom.server import sse
from threadloom.server.errors import ApiError
from threadloom.server.keys import OWNER
from threadloom.server.middleware import error_body
from threadloom.server.routes import compat
from threadloom.server.routes.common import (
    decode_body,
    engine_for,
    final_result,
    generation_failed,
    json_response,
    mint_id,
    sampling_params,
    stateless,
)
from threadloom.server.routes.compat import refuse_unsupported
from threadloom.server.schemas import chat as c
from threadloom.server.schemas import formats
from threadloom.server.schemas import tools as t

_decoder = msgspec.json.Decoder(c.ChatRequest)


def _sampling(req: c.ChatRequest, engine: Engine) -> SamplingParams:
    stop = (req.stop,) if isinstance(req.stop, str) else req.stop
    return sampling_params(
        engine,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        max_tokens_param="max_completion_tokens" if req.max_completion_tokens else "max_tokens",
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
        stop=tuple(stop) if stop is not None else None,
    )


def _messages(req: c.ChatRequest) -> list[dict[str, str]]:
    """The messages as turns: an assistant message's calls each become a call turn (after its
    text, if any), a tool message an output turn, as the store keeps them."""
    out: list[dict[str, str]] = []
    for m in req.messages:
        if m.role == "tool":
            out.append(tools.output_turn(m.tool_call_id, m.text()))
            continue
        calls = (m.tool_calls or []) if m.role == "assistant" else []
        if not calls or m.text():
            out.append({"role": "system" if m.role == "developer" else m.role, "content": m.text()})
        for call in calls:
            out.append(tools.call_turn(call.id, call.function.name, call.function.arguments))
    return out


def _calls(result: Result) -> list[t.ChatToolCall] | None:
    if not result.tool_calls:
        return None
    return [
        t.ChatToolCall(
            id=call.id, function=t.CallFunction(name=call.name, arguments=call.arguments)
        )
        for call in result.tool_calls
    ]


def _usage(result: Result) -> c.ChatUsage:
    u = result.usage
    return c.ChatUsage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.prompt_tokens + u.completion_tokens,
        prompt_tokens_details=c.PromptTokensDetails(cached_tokens=u.cached_tokens),
    )


def _finish_reason(result: Result) -> c.FinishReason:
    if result.tool_calls and result.finish_reason == "stop":
        return "tool_calls"
    return "stop" if result.finish_reason == "stop" else "length"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = decode_body(_decoder, await request.read())
    refuse_unsupported(req, compat.CHAT)
    engine = await engine_for(request, req.model)
    sampling = _sampling(req, engine)
    messages = _messages(req)
    schema, schema_field = formats.chat_response_format(req.response_format)
    spec = t.chat_spec(req.tools, req.tool_choice, req.parallel_tool_calls)
    events = engine.stream_request(
        stateless(
            messages,
            request[OWNER],
            sampling=sampling,
            output_schema=schema,
            output_schema_field=schema_field,
            tools=spec,
        )
    )
    await sse.started(events)
    ident, created = mint_id("chatcmpl"), int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        scanner = tools.CallScanner(engine.tool_family, spec) if spec is not None else None
        dialect = _ChatStream(ident, created, engine.model_name, include_usage, scanner)
        return await sse.serve_stream(request, events, dialect)
    result = await final_result(events)
    if result.status == "failed":
        raise generation_failed(result)
    return json_response(
        c.ChatCompletion(
            id=ident,
            created=created,
            model=engine.model_name,
            choices=[
                c.Choice(
                    message=c.AssistantMessage(
                        role="assistant",
                        content=result.text or (None if result.tool_calls else ""),
                        tool_calls=_calls(result),
                    ),
                    finish_reason=_finish_reason(result),
                )
            ],
            usage=_usage(result),
            timings=_timings(result),
        )
    )


def _timings(result: Result) -> c.Timings:
    u = result.usage
    first = result.time_to_first_token_s or result.total_s
    return c.Timings(
        prompt_n=u.prompt_tokens - u.cached_tokens,
        prompt_ms=result.prompt_eval_s * 1000,
        predicted_n=u.completion_tokens,
        predicted_ms=max(0.0, result.total_s - first) * 1000,
        predicted_per_second=result.decode_tokens_per_s,
        queue_ms=result.queue_s * 1000,
    )


class _ChatStream:
    """Chat completion chunks. A failed generation ends the stream with an error chunk (the
    OpenAI error shape), as OpenAI does."""

    def __init__(
        self,
        ident: str,
        created: int,
        model: str,
        include_usage: bool,
        scanner: tools.CallScanner | None,
    ) -> None:
        self.ident, self.created, self.model = ident, created, model
        self.include_usage = include_usage
        # With tools: splits the reply into content and `delta.tool_calls`.
        self.scanner = scanner

    def _chunk(self, delta: c.Delta, finish: c.FinishReason | None = None) -> bytes:
        choice = c.ChunkChoice(delta=delta, finish_reason=finish)
        return sse.frame(
            c.ChatCompletionChunk(
                id=self.ident, created=self.created, model=self.model, choices=[choice]
            )
        )

    async def open(self, request: web.Request) -> web.StreamResponse:
        return await sse.open_stream(request)

    def start(self, out: sse.Frames) -> None:
        out.add(self._chunk(c.Delta(role="assistant", content="")))

    def token(self, out: sse.Frames, event: TokenEvent) -> None:
        if event.reasoning or not event.text:
            return
        if self.scanner is None:
            out.add(self._chunk(c.Delta(content=event.text)))
            return
        self._pieces(out, self.scanner.feed(event.text))

    def _pieces(self, out: sse.Frames, pieces: list[tools.Piece]) -> None:
        for piece in pieces:
            delta: c.Delta | None = None
            if isinstance(piece, tools.Text):
                delta = c.Delta(content=piece.text)
            elif isinstance(piece, tools.CallStarted):
                function = t.DeltaFunction(name=piece.name, arguments="")
                call = t.DeltaToolCall(
                    index=piece.index, id=piece.id, type="function", function=function
                )
                delta = c.Delta(tool_calls=[call])
            elif isinstance(piece, tools.CallArguments):
                function = t.DeltaFunction(arguments=piece.delta)
                delta = c.Delta(tool_calls=[t.DeltaToolCall(index=piece.index, function=function)])
            if delta is not None:
                out.add(self._chunk(delta))

    async def finish(self, out: sse.Frames, result: Result) -> None:
        if result.status == "failed":
            raise generation_failed(result)
        if self.scanner is not None:
            self._pieces(out, self.scanner.finish())
        out.add(self._chunk(c.Delta(), _finish_reason(result)))
        if self.include_usage:
            usage = c.ChatCompletionChunk(
                id=self.ident,
                created=self.created,
                model=self.model,
                choices=[],
                usage=_usage(result),
            )
            out.add(sse.frame(usage))
        out.add(b"data: [DONE]\n\n")

    def error(self, out: sse.Frames, error: ApiError) -> None:
        out.add(sse.frame(error_body(error)))


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
