"""LM Studio's native REST chat (`POST /api/v1/chat`): the request, the result and the stream
events. Field names follow LM Studio; ids are the store's response ids."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from threadloom.server.schemas.ids import ResponseId
from threadloom.server.schemas.limits import (
    MAX_ITEMS,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
)

# ---- request ---------------------------------------------------------------------------------


class TextInput(msgspec.Struct, tag="message", tag_field="type", forbid_unknown_fields=True):
    content: str


class ImageInput(msgspec.Struct, tag="image", tag_field="type", forbid_unknown_fields=True):
    """Decoded so that the refusal can say images are unsupported rather than unknown."""

    data_url: str


Reasoning = Literal["off", "low", "medium", "high", "on"]


class StatefulChatRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    input: str | Annotated[list[TextInput | ImageInput], Meta(min_length=1, max_length=MAX_ITEMS)]
    system_prompt: str | None = None
    stream: bool = False
    store: bool = True
    # The seed's name and LM Studio's newer one for the same handle: a stored response id.
    thread_id: ResponseId | None = None
    previous_response_id: ResponseId | None = None
    # Ranges are the sampler's (LM Studio documents temperature in [0, 1]; more is allowed).
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    repeat_penalty: RepetitionPenalty | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    reasoning: Reasoning | None = None
    # Accepted for compatibility: the sampler has no min-p, and the context is the loaded
    # model's (a larger one is refused, a smaller one is not enforced).
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    context_length: Annotated[int, Meta(ge=1)] | None = None
    # No plugins or MCP servers are offered, so only the empty list.
    integrations: Annotated[list[Any], Meta(max_length=0)] | None = None


# ---- result ----------------------------------------------------------------------------------


class MessageOutput(msgspec.Struct, tag="message", tag_field="type", kw_only=True):
    content: str


class ReasoningOutput(msgspec.Struct, tag="reasoning", tag_field="type", kw_only=True):
    content: str


OutputItem = ReasoningOutput | MessageOutput


class Stats(msgspec.Struct, kw_only=True):
    input_tokens: int
    total_output_tokens: int
    reasoning_output_tokens: int
    tokens_per_second: float
    time_to_first_token_seconds: float


class ChatResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The reply. Both ids are absent when nothing was stored (`store: false`)."""

    model_instance_id: str
    output: list[OutputItem]
    stats: Stats
    thread_id: str | None = None
    # LM Studio's newer name for `thread_id`, so clients of either version can continue.
    response_id: str | None = None


# ---- stream events ---------------------------------------------------------------------------


class _Event(msgspec.Struct, tag_field="type", kw_only=True):
    pass


class ChatStart(_Event, tag="chat.start"):
    model_instance_id: str


class PromptProcessingStart(_Event, tag="prompt_processing.start"):
    pass


class PromptProcessingEnd(_Event, tag="prompt_processing.end"):
    pass


class ReasoningStart(_Event, tag="reasoning.start"):
    pass


class ReasoningDelta(_Event, tag="reasoning.delta"):
    content: str


class ReasoningEnd(_Event, tag="reasoning.end"):
    pass


class MessageStart(_Event, tag="message.start"):
    pass


class MessageDelta(_Event, tag="message.delta"):
    content: str


class MessageEnd(_Event, tag="message.end"):
    pass


ErrorType = Literal["invalid_request", "model_not_found", "internal_error"]


class ChatErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: ErrorType
    message: str
    code: str | None = None
    param: str | None = None


class ChatErrorEvent(_Event, tag="error"):
    error: ChatErrorDetail


class ChatEnd(_Event, tag="chat.end"):
    result: ChatResult


StreamEvent = (
    ChatStart
    | PromptProcessingStart
    | PromptProcessingEnd
    | ReasoningStart
    | ReasoningDelta
    | ReasoningEnd
    | MessageStart
    | MessageDelta
    | MessageEnd
    | ChatErrorEvent
    | ChatEnd
)
