"""OpenAI Chat Completions: request, completion, and stream chunks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from threadloom.server.schemas.limits import (
    MAX_ITEMS,
    Seed,
    StopList,
    StopString,
    Temperature,
    TopP,
)
from threadloom.server.schemas.tools import ChatToolCall, DeltaToolCall

FinishReason = Literal["stop", "length", "tool_calls"]


class TextPart(msgspec.Struct, tag="text", tag_field="type", forbid_unknown_fields=True):
    text: str


class ChatMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    # An assistant message's calls, and a tool message's answer to one (the history of a
    # tool loop, sent back by the client).
    tool_calls: list[ChatToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    include_usage: bool = False


Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]


class ChatRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1, max_length=MAX_ITEMS)]
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: StopString | StopList | None = None
    seed: Seed | None = None
    n: Annotated[int, Meta(ge=1, le=1)] | None = None
    # Accepted for compatibility and not used by the sampler.
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    # Function tools (server/schemas/tools.py reads them; other tool types are a 400).
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # Accepted only in their neutral form (routes/compat.py says which).
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    web_search_options: dict[str, Any] | None = None


class AssistantMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    # No default: `omit_defaults` (which leaves out `tool_calls` when there are none) would
    # drop it.
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ChatToolCall] | None = None


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: Any = None


class PromptTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int


class ChatUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class Timings(msgspec.Struct, kw_only=True):
    """llama.cpp server's `timings` object (its clients read it), plus the queue wait."""

    prompt_n: int  # prompt tokens evaluated (not reused from the slot)
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    predicted_per_second: float | None
    queue_ms: float


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: ChatUsage
    system_fingerprint: str | None = None
    timings: Timings | None = None


class Delta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: Any = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: ChatUsage | None = None
    system_fingerprint: str | None = None
