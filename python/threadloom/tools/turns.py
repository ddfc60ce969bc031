"""Calls and their outputs as stored turns. A call is an assistant turn with no content whose
tool data (a JSON object, the store's `tool` field) holds the call; an output is a `tool` turn
whose content is the output and whose tool data holds the call id. Chat templates see them as
OpenAI's chat format does: `tool_calls` and `tool_call_id` (rust/src/prompt/tools.rs)."""

from __future__ import annotations

from typing import Literal

import msgspec

ItemStatus = Literal["in_progress", "completed", "incomplete"]
FUNCTION_CALL = "function_call"
FUNCTION_CALL_OUTPUT = "function_call_output"


class ToolData(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A turn's tool data as stored (unknown keys are ignored when read back)."""

    type: str
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    namespace: str | None = None
    status: ItemStatus | None = None


encode = msgspec.json.Encoder().encode
decode = msgspec.json.Decoder(ToolData).decode


def call_turn(
    call_id: str,
    name: str,
    arguments: str,
    status: str | None = None,
    namespace: str | None = None,
) -> dict[str, str]:
    """A call as the turn to store."""
    tool = ToolData(
        type=FUNCTION_CALL,
        call_id=call_id,
        name=name,
        arguments=arguments,
        namespace=namespace,
        status=status,  # type: ignore[arg-type]
    )
    return {"role": "assistant", "content": "", "tool": encode(tool).decode()}


def output_turn(
    call_id: str | None,
    output: str,
    status: str | None = None,
    name: str | None = None,
    namespace: str | None = None,
) -> dict[str, str]:
    """A call's output as the turn to store."""
    tool = ToolData(
        type=FUNCTION_CALL_OUTPUT,
        call_id=call_id,
        name=name,
        namespace=namespace,
        status=status,  # type: ignore[arg-type]
    )
    return {"role": "tool", "content": output, "tool": encode(tool).decode()}


def read(tool: str | None) -> ToolData | None:
    """A turn's tool data, or None when it has none (or none this version reads)."""
    if tool is None:
        return None
    try:
        return decode(tool)
    except msgspec.DecodeError:  # also ValidationError
        return None
