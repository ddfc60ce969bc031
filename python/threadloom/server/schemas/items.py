"""Function-call items (`function_call`, `function_call_output`) of the Responses and
Conversations APIs, as stored turns and back. A `function_call` is an assistant turn with no
content whose tool data (a JSON object, the store's `tool` field) holds the call; a
`function_call_output` is a `tool` turn whose content is the output and whose tool data holds
the call id. Chat templates see them as OpenAI's chat format does: the assistant message's
`tool_calls` and the tool message's `tool_call_id` (rust/src/prompt/tools.rs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec

from threadloom.compaction import COMPACTION
from threadloom.tools.turns import (
    FUNCTION_CALL,
    FUNCTION_CALL_OUTPUT,
    ItemStatus,
    call_turn,
    output_turn,
    read,
)

ItemKind = Literal["message", "function_call", "function_call_output", "compaction"]

# The turns themselves are built in `threadloom.tools.turns` (the engine stores calls too).
__all__ = [
    "FUNCTION_CALL",
    "FUNCTION_CALL_OUTPUT",
    "CompactionItem",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "ItemKind",
    "ItemStatus",
    "Seal",
    "call_turn",
    "output_turn",
    "tool_item",
]


class FunctionCallItem(msgspec.Struct, tag=FUNCTION_CALL, tag_field="type", kw_only=True):
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus
    namespace: str | None = None


class FunctionCallOutputItem(
    msgspec.Struct, tag=FUNCTION_CALL_OUTPUT, tag_field="type", kw_only=True
):
    id: str
    call_id: str | None
    output: str
    status: ItemStatus
    name: str | None = None
    namespace: str | None = None


class CompactionItem(msgspec.Struct, tag=COMPACTION, tag_field="type", kw_only=True):
    """A compaction turn, sealed for the caller (`threadloom.compaction`)."""

    id: str
    encrypted_content: str


Seal = Callable[[str], str]


def tool_item(
    turn_id: str, role: str, content: str, tool: str | None, seal: Seal | None = None
) -> FunctionCallItem | FunctionCallOutputItem | CompactionItem | None:
    """The function-call or compaction item a stored turn is, or None for a message. A `tool`
    turn is always an output (one stored without tool data has no call id); a compaction's
    summary goes out sealed by `seal` for the caller."""
    data = read(tool)
    status = (data.status if data is not None else None) or "completed"
    if role == "system" and data is not None and data.type == COMPACTION and seal is not None:
        return CompactionItem(id=turn_id, encrypted_content=seal(content))
    if role == "assistant" and data is not None and data.type == FUNCTION_CALL:
        return FunctionCallItem(
            id=turn_id,
            call_id=data.call_id or "",
            name=data.name or "",
            arguments=data.arguments or "",
            status=status,
            namespace=data.namespace,
        )
    if role == "tool":
        known = data is not None and data.type == FUNCTION_CALL_OUTPUT
        return FunctionCallOutputItem(
            id=turn_id,
            call_id=data.call_id if known and data is not None else None,
            output=content,
            status=status,
            name=data.name if known and data is not None else None,
            namespace=data.namespace if known and data is not None else None,
        )
    return None


def item_kind(role: str, tool: str | None) -> ItemKind:
    """What a stored turn is as an item."""
    if role == "tool":
        return "function_call_output"
    data = read(tool)
    if data is not None and role == "assistant" and data.type == FUNCTION_CALL:
        return "function_call"
    if data is not None and role == "system" and data.type == COMPACTION:
        return "compaction"
    return "message"
