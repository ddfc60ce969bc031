"""Paddler's inference API: `continue_from_conversation_history` requests and the frames of its
newline-delimited JSON stream. Paddler serializes Rust enums the serde way (externally tagged:
`{"Variant": payload}`, or the bare name for a unit variant), hence the capitalized keys."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from threadloom.server.schemas.limits import MAX_ITEMS

# ---- request ---------------------------------------------------------------------------------


class ConversationMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: Literal["system", "user", "assistant", "tool"]
    # With thinking enabled, an assistant message carries its `<think>...</think>` part inline.
    content: str


class ContinueFromConversationHistory(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    add_generation_prompt: bool
    enable_thinking: bool
    max_tokens: Annotated[int, Meta(ge=1)]
    conversation_history: Annotated[
        list[ConversationMessage], Meta(min_length=1, max_length=MAX_ITEMS)
    ]


# ---- stream frames ---------------------------------------------------------------------------


class Token(msgspec.Struct, kw_only=True):
    token: str = msgspec.field(name="Token")


class GeneratedToken(msgspec.Struct, kw_only=True):
    generated_token_result: Token | Literal["Done"]
    slot: int


class GeneratedTokenResponse(msgspec.Struct, kw_only=True):
    generated_token: GeneratedToken = msgspec.field(name="GeneratedToken")


class ResponseEnvelope(msgspec.Struct, kw_only=True):
    request_id: str
    response: GeneratedTokenResponse


class ResponseFrame(msgspec.Struct, kw_only=True):
    response: ResponseEnvelope = msgspec.field(name="Response")


class ErrorDetail(msgspec.Struct, kw_only=True):
    # Paddler's codes are HTTP status numbers (500, 503, 504...): ours are the mapped status.
    code: int
    description: str


class ErrorEnvelope(msgspec.Struct, kw_only=True):
    request_id: str
    error: ErrorDetail


class ErrorFrame(msgspec.Struct, kw_only=True):
    error: ErrorEnvelope = msgspec.field(name="Error")
