"""OpenAI's Conversations API: a conversation is a threadloom thread, its items are the
thread's turns. Shapes as the `openai` SDK's types expect."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from threadloom.server.schemas.items import CompactionItem, FunctionCallItem, FunctionCallOutputItem
from threadloom.server.schemas.responses import InputItemParam, Metadata, OutputText

# Items one create or add call may carry (OpenAI's limit).
MAX_NEW_ITEMS = 20


class CreateConversation(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    items: Annotated[list[InputItemParam], Meta(max_length=MAX_NEW_ITEMS)] | None = None
    metadata: Metadata | None = None


class UpdateConversation(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    metadata: Metadata


class AddItems(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    items: Annotated[list[InputItemParam], Meta(min_length=1, max_length=MAX_NEW_ITEMS)]


class ItemsQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=100)] = 20
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    include: str | None = None


class ListQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=100)] = 20
    after: str | None = None


class Conversation(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["conversation"] = "conversation"
    created_at: int
    metadata: dict[str, str]


class ConversationDeleted(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: bool = True


class InputText(msgspec.Struct, tag="input_text", tag_field="type", kw_only=True):
    text: str


class Item(msgspec.Struct, tag="message", tag_field="type", kw_only=True):
    id: str
    role: Literal["user", "assistant", "system", "developer"]
    status: Literal["completed", "incomplete", "in_progress"] = "completed"
    content: list[InputText | OutputText]


# What a conversation's item is: a message, or a function call or its output.
AnyItem = Item | FunctionCallItem | FunctionCallOutputItem | CompactionItem


class ItemList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[AnyItem]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ConversationList(msgspec.Struct, kw_only=True):
    """Beyond OpenAI (which cannot list conversations): the tenant's, newest activity first."""

    object: Literal["list"] = "list"
    data: list[Conversation]
    has_more: bool
    next_cursor: str | None = None
