"""OpenAI/vLLM Responses API: requests, response objects and stream events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from threadloom.compaction import COMPACTION, compaction_turn
from threadloom.errors import InvalidInput
from threadloom.server.schemas import items
from threadloom.server.schemas.formats import TextConfig
from threadloom.server.schemas.ids import ResponseId
from threadloom.server.schemas.limits import MAX_ITEMS, Temperature, TopP

MetadataKey = Annotated[str, Meta(min_length=1, max_length=64)]
MetadataValue = Annotated[str, Meta(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=16)]
Status = Literal["completed", "incomplete", "failed", "in_progress"]

# ---- request ---------------------------------------------------------------------------------


class InputTextPart(msgspec.Struct, tag="input_text", tag_field="type", forbid_unknown_fields=True):
    text: str


class OutputTextPartIn(
    msgspec.Struct, tag="output_text", tag_field="type", forbid_unknown_fields=True
):
    """An assistant message's text, when a client sends earlier output back as input."""

    text: str
    annotations: list[Any] = []
    logprobs: list[Any] | None = None


ITEM_TYPES = ("message", items.FUNCTION_CALL, items.FUNCTION_CALL_OUTPUT, COMPACTION)
# Which fields belong to which item type (besides type, id and status).
_FIELDS = {
    "message": ("role", "content"),
    items.FUNCTION_CALL: ("call_id", "name", "arguments", "namespace"),
    items.FUNCTION_CALL_OUTPUT: ("call_id", "output", "name", "namespace"),
    COMPACTION: ("encrypted_content",),
}
_REQUIRED = {
    "message": ("role", "content"),
    items.FUNCTION_CALL: ("call_id", "name", "arguments"),
    items.FUNCTION_CALL_OUTPUT: ("output",),
    COMPACTION: ("encrypted_content",),
}

# Opens a compaction item's `encrypted_content` for the caller: (sealed, field) -> its text.
Opener = Callable[[str, str], str]


class InputItemParam(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One input item: a message (`type` may be left out), a `function_call` or a
    `function_call_output` (checked by `turn`, which names the offending field)."""

    type: Literal["message", "function_call", "function_call_output", "compaction"] = "message"
    id: str | None = None
    status: items.ItemStatus | None = None
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: str | list[InputTextPart | OutputTextPartIn] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    namespace: str | None = None
    output: str | list[InputTextPart] | None = None
    encrypted_content: str | None = None

    def turn(self, where: str, opener: Opener | None = None) -> dict[str, str]:
        """The item as a stored turn (`developer` is the system role to the templates);
        `where` (`input[3]`) names the item in errors. A compaction item needs `opener`."""
        for name in _REQUIRED[self.type]:
            if getattr(self, name) is None:
                raise InvalidInput(
                    f"{where}.{name} is required in a {self.type} item", param=f"{where}.{name}"
                )
        fields = ("role", "content", "call_id", "name", "arguments", "namespace", "output")
        for name in (*fields, "encrypted_content"):
            if getattr(self, name) is not None and name not in _FIELDS[self.type]:
                raise InvalidInput(
                    f"{where}.{name} does not belong in a {self.type} item",
                    param=f"{where}.{name}",
                )
        if self.type == COMPACTION:
            assert self.encrypted_content is not None
            if opener is None:
                raise InvalidInput(f"{where}: compaction items are not taken here", param=where)
            return compaction_turn(opener(self.encrypted_content, where))
        if self.type == items.FUNCTION_CALL:
            assert self.call_id is not None and self.name is not None
            assert self.arguments is not None
            return items.call_turn(
                self.call_id, self.name, self.arguments, self.status, self.namespace
            )
        if self.type == items.FUNCTION_CALL_OUTPUT:
            return items.output_turn(
                self.call_id, _text(self.output), self.status, self.name, self.namespace
            )
        role = "system" if self.role == "developer" else self.role
        return {"role": role or "user", "content": self.text()}

    def text(self) -> str:
        return _text(self.content)


_Content = str | list[InputTextPart | OutputTextPartIn] | list[InputTextPart] | None


def _text(content: _Content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text for part in content)


def unsupported_item(body: bytes, field: str) -> InvalidInput | None:
    """After a body failed to decode: the clearer error when the cause is an item type that is
    not supported (`items[2].type`), else None."""
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    given = value.get(field) if isinstance(value, dict) else None
    if not isinstance(given, list):
        return None
    for i, item in enumerate(given):
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if isinstance(kind, str) and kind not in ITEM_TYPES:
            return InvalidInput(
                f"{field}[{i}].type: {kind!r} items are not supported; supported: "
                + ", ".join(ITEM_TYPES),
                param=f"{field}[{i}].type",
            )
    return None


class ContextManagement(
    msgspec.Struct, tag="compaction", tag_field="type", kw_only=True, forbid_unknown_fields=True
):
    """Compact on the server when the rendered prompt would cross `compact_threshold` tokens
    (none: half the model's context)."""

    compact_threshold: Annotated[int, Meta(ge=1)] | None = None


class CreateResponse(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input: str | Annotated[list[InputItemParam], Meta(min_length=1, max_length=MAX_ITEMS)]
    model: str | None = None
    instructions: str | None = None
    previous_response_id: ResponseId | None = None
    store: bool = True
    stream: bool = False
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    metadata: Metadata | None = None
    # Documented by OpenAI and accepted; these change nothing here.
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: Annotated[int, Meta(ge=0)] | None = None
    stream_options: dict[str, Any] | None = None
    # Function tools (server/schemas/tools.py reads them; other tool types are a 400).
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # Accepted only in their neutral form (routes/compat.py says which).
    include: list[str] | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    context_management: Annotated[list[ContextManagement], Meta(max_length=1)] | None = None


# ---- response object -------------------------------------------------------------------------


class OutputText(msgspec.Struct, tag="output_text", tag_field="type", kw_only=True):
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputMessage(msgspec.Struct, tag="message", tag_field="type", kw_only=True):
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


# A response's output: its message, and any calls next to it.
OutputItem = OutputMessage | items.FunctionCallItem | items.CompactionItem


class InputTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class IncompleteDetails(msgspec.Struct, kw_only=True):
    reason: Literal["max_output_tokens", "content_filter"]


class ConversationRef(msgspec.Struct, kw_only=True):
    id: str


class ResponseObject(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    model: str
    output: list[OutputItem]
    usage: ResponseUsage | None
    previous_response_id: str | None
    store: bool
    metadata: dict[str, str]
    instructions: str | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    parallel_tool_calls: bool = True
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[Any] = msgspec.field(default_factory=list)
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    background: bool = False
    user: str | None = None
    conversation: ConversationRef | None = None


class DeletedResponse(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputTokens(msgspec.Struct, kw_only=True):
    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int


class InputItem(msgspec.Struct, tag="message", tag_field="type", kw_only=True):
    id: str
    role: str
    status: Literal["completed"] = "completed"
    content: list[InputTextPart]


class InputItemList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[
        InputItem | items.FunctionCallItem | items.FunctionCallOutputItem | items.CompactionItem
    ]
    first_id: str | None
    last_id: str | None
    has_more: bool


class InputItemsQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=100)] = 20
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    include: str | None = None


# ---- stream events ---------------------------------------------------------------------------


class _Event(msgspec.Struct, tag_field="type", kw_only=True):
    sequence_number: int


class ResponseCreated(_Event, tag="response.created"):
    response: ResponseObject


class ResponseInProgress(_Event, tag="response.in_progress"):
    response: ResponseObject


class ResponseCompleted(_Event, tag="response.completed"):
    response: ResponseObject


class ResponseIncomplete(_Event, tag="response.incomplete"):
    response: ResponseObject


class ResponseFailed(_Event, tag="response.failed"):
    response: ResponseObject


class OutputItemAdded(_Event, tag="response.output_item.added"):
    output_index: int
    item: OutputItem


class OutputItemDone(_Event, tag="response.output_item.done"):
    output_index: int
    item: OutputItem


class FunctionCallArgumentsDelta(_Event, tag="response.function_call_arguments.delta"):
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDone(_Event, tag="response.function_call_arguments.done"):
    item_id: str
    output_index: int
    name: str
    arguments: str


class ContentPartAdded(_Event, tag="response.content_part.added"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class ContentPartDone(_Event, tag="response.content_part.done"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class OutputTextDelta(_Event, tag="response.output_text.delta"):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputTextDone(_Event, tag="response.output_text.done"):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class StreamError(_Event, tag="error"):
    code: str | None
    message: str
    param: str | None = None


StreamEvent = (
    ResponseCreated
    | ResponseInProgress
    | ResponseCompleted
    | ResponseIncomplete
    | ResponseFailed
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | OutputTextDelta
    | OutputTextDone
    | FunctionCallArgumentsDelta
    | FunctionCallArgumentsDone
    | StreamError
)
