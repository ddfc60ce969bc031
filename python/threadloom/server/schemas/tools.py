"""Function tools on the wire: the tool definitions and `tool_choice` of chat completions and
Responses (which spell them differently), the calls in chat messages and stream deltas, and
their conversion into the engine's `ToolSpec`. Only function tools are built: any other type
is a 400 naming `tools[i].type`."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from threadloom import tools
from threadloom.server.errors import ApiError
from threadloom.server.schemas.formats import convert


class FunctionDef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(msgspec.Struct, tag="function", tag_field="type", forbid_unknown_fields=True):
    """Chat completions' form: the function nested under `function`."""

    function: FunctionDef


class ResponsesTool(
    msgspec.Struct, tag="function", tag_field="type", kw_only=True, forbid_unknown_fields=True
):
    """Responses' form: the function's fields next to `type`."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class ChatNamedChoice(msgspec.Struct, tag="function", tag_field="type"):
    function: NamedFunction


class ResponsesNamedChoice(msgspec.Struct, tag="function", tag_field="type"):
    name: str


Mode = Literal["none", "auto", "required"]


class CallFunction(msgspec.Struct, kw_only=True):
    name: str
    arguments: str


class ChatToolCall(msgspec.Struct, tag="function", tag_field="type", kw_only=True):
    """A call in a chat message: the reply's `message.tool_calls`, or an assistant message's
    calls sent back in the history."""

    id: str
    function: CallFunction


class DeltaFunction(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A call's piece in a stream: its first names it (`id`, `type`, `function.name`), the
    others carry `function.arguments` in order; `index` says which call."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction


def _function_types(values: list[Any]) -> None:
    for i, value in enumerate(values):
        kind = value.get("type") if isinstance(value, dict) else None
        if kind != "function":
            raise ApiError(
                400,
                f"tools[{i}].type {kind!r} is not supported: only function tools are built",
                param=f"tools[{i}].type",
                code="unsupported_parameter",
            )


def _spec(functions: list[FunctionDef], mode: Mode | str, parallel: bool | None) -> tools.ToolSpec:
    spec = tools.ToolSpec(
        functions=tuple(
            tools.FunctionTool(
                name=f.name, description=f.description, parameters=f.parameters, strict=f.strict
            )
            for f in functions
        ),
        choice=mode,
        parallel=parallel is not False,
    )
    return tools.check(spec)


def _mode(choice: Any, named: Any, has_tools: bool) -> Mode | str:
    """`tool_choice` as "none", "auto", "required" or a function's name."""
    if choice is None:
        return "auto" if has_tools else "none"
    if isinstance(choice, str):
        mode: Mode = convert(choice, Mode, "tool_choice")
        if mode == "required" and not has_tools:
            raise ApiError(
                400, "tool_choice is required but no tools are given", param="tool_choice"
            )
        return mode
    picked = convert(choice, named, "tool_choice")
    name: str = picked.function.name if isinstance(picked, ChatNamedChoice) else picked.name
    if not has_tools:
        raise ApiError(
            400, f"tool_choice names {name!r} but no tools are given", param="tool_choice"
        )
    return name


def chat_spec(
    values: list[Any] | None, choice: Any, parallel: bool | None
) -> tools.ToolSpec | None:
    """Chat completions' `tools`, `tool_choice` and `parallel_tool_calls` (None: no tools)."""
    _function_types(values or [])
    mode = _mode(choice, ChatNamedChoice, bool(values))
    if not values or mode == "none":
        return None
    defs: list[ChatTool] = convert(values, list[ChatTool], "tools")
    return _spec([d.function for d in defs], mode, parallel)


def responses_spec(
    values: list[Any] | None, choice: Any, parallel: bool | None
) -> tools.ToolSpec | None:
    """Responses' `tools`, `tool_choice` and `parallel_tool_calls` (None: no tools)."""
    _function_types(values or [])
    mode = _mode(choice, ResponsesNamedChoice, bool(values))
    if not values or mode == "none":
        return None
    defs: list[ResponsesTool] = convert(values, list[ResponsesTool], "tools")
    functions = [
        FunctionDef(
            name=d.name, description=d.description, parameters=d.parameters, strict=d.strict
        )
        for d in defs
    ]
    return _spec(functions, mode, parallel)
