"""Freddy-style threads dialect: model responses with thread state and the threads API.

Field names are camelCase on the wire, as Freddy's documentation spells them; the Python
attributes stay snake_case (`rename="camel"`). `organization_id` is the one snake_case field the
documentation sends, so it keeps its spelling. Every struct is keyword-only, so a defaulted field
(`object`) may come first as it reads on the wire; request structs refuse unknown fields, so a
misspelled field is an error rather than silently ignored."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from threadloom.server.schemas.ids import ResponseId, ThreadId
from threadloom.server.schemas.limits import MAX_ITEMS, Temperature, TopP

ThreadState = Literal["open", "locked", "archived"]
# Any JSON object; its 16 KB limit is the store's (it measures the encoded form).
Metadata = dict[str, Any]


# ---- model responses -------------------------------------------------------------------------


class Text(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    text: str


class InputMessage(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    role: Literal["user", "system", "assistant"]
    texts: Annotated[list[Text], Meta(min_length=1, max_length=MAX_ITEMS)]

    def content(self) -> str:
        return "\n".join(t.text for t in self.texts)


class ThreadRef(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """`thread` as an object: the thread to use, created with `metadata` when it is new."""

    id: ThreadId | None = None
    metadata: Metadata | None = None


class CreateModelResponse(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    inputs: Annotated[list[InputMessage], Meta(min_length=1, max_length=MAX_ITEMS)]
    model: str | None = None
    thread: ThreadId | ThreadRef | None = None
    thread_state: ThreadState | None = None
    store: bool = True
    previous_response_id: ResponseId | None = None
    # Tenancy comes from the API key; the documented organization is accepted and not used.
    organization_id: str | None = msgspec.field(default=None, name="organization_id")
    # Not in Freddy's documentation: sampling controls as the other dialects offer them.
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None


class OutputMessage(msgspec.Struct, kw_only=True, rename="camel"):
    """Shaped like an input message, so a client can send it back in `inputs`."""

    role: Literal["assistant"] = "assistant"
    texts: list[Text]


class Usage(msgspec.Struct, kw_only=True, rename="camel"):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_tokens: int


class ResponseError(msgspec.Struct, kw_only=True, rename="camel"):
    code: str
    message: str


class ModelResponse(msgspec.Struct, kw_only=True, rename="camel"):
    id: str | None
    object: Literal["model.response"] = "model.response"
    created_at: int
    model: str
    status: Literal["completed", "incomplete", "failed"]
    thread_id: str | None
    previous_response_id: str | None
    output: list[OutputMessage]
    usage: Usage
    error: ResponseError | None = None


# ---- threads ---------------------------------------------------------------------------------


class CreateThread(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    id: ThreadId | None = None
    metadata: Metadata | None = None


class UpdateThread(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    metadata: Metadata | None = None
    state: ThreadState | None = None


class ListThreadsQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Query parameters, spelled as Freddy's documentation spells `visible_in_ui`."""

    limit: Annotated[int, Meta(ge=1, le=100)] = 20
    cursor: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    visible_in_ui: bool = True


class ThreadObject(msgspec.Struct, kw_only=True, rename="camel"):
    id: str
    object: Literal["thread"] = "thread"
    state: ThreadState
    visible_in_ui: bool
    metadata: Metadata
    message_count: int
    created_at: int
    last_activity_at: int


class ThreadList(msgspec.Struct, kw_only=True, rename="camel"):
    object: Literal["list"] = "list"
    data: list[ThreadObject]
    has_more: bool
    next_cursor: str | None


class DeletedThread(msgspec.Struct, kw_only=True, rename="camel"):
    id: str
    object: Literal["thread.deleted"] = "thread.deleted"
    deleted: bool = True


class ThreadMessage(msgspec.Struct, kw_only=True, rename="camel"):
    id: str
    object: Literal["thread.message"] = "thread.message"
    role: str
    texts: list[Text]
    created_at: int


class MessagesQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    before: str | None = None


class MessageList(msgspec.Struct, kw_only=True, rename="camel"):
    object: Literal["list"] = "list"
    thread_id: str
    data: list[ThreadMessage]
    # Older messages exist: ask again with `before` = `firstId`.
    has_more: bool = False
    first_id: str | None = None
