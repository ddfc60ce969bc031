"""`POST /v1/responses/compact`: a conversation in, its user messages and one sealed
`compaction` item out (OpenAI's `response.compaction` object)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from threadloom.server.schemas.ids import ResponseId
from threadloom.server.schemas.items import CompactionItem
from threadloom.server.schemas.limits import MAX_ITEMS
from threadloom.server.schemas.responses import InputItemParam, InputTextPart, ResponseUsage


class CompactRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str | None = None
    input: str | Annotated[list[InputItemParam], Meta(max_length=MAX_ITEMS)] | None = None
    previous_response_id: ResponseId | None = None
    instructions: str | None = None
    # Documented by OpenAI and accepted; these change nothing here.
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None


class KeptMessage(msgspec.Struct, tag="message", tag_field="type", kw_only=True):
    """A user message the client keeps next to the compaction item."""

    id: str
    role: Literal["user"] = "user"
    status: Literal["completed"] = "completed"
    content: list[InputTextPart]


class CompactedResponse(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response.compaction"] = "response.compaction"
    created_at: int
    output: list[KeptMessage | CompactionItem]
    usage: ResponseUsage
