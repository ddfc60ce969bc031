"""A conversation's stored calls shown to a template that renders no `tool_calls`: each run of
call turns becomes the text the model writes calls as, joined to the assistant message before
it, so the model sees its earlier calls (and learns the format from them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from threadloom.tools.families import Family, call_text
from threadloom.tools.turns import FUNCTION_CALL, read

Message = Mapping[str, str | None]


def calls_as_text(messages: Iterable[Message], family: Family) -> list[Message]:
    out: list[Message] = []
    calls: list[tuple[str, str]] = []
    before: dict[str, str | None] | None = None  # the assistant text the calls follow

    def flush() -> None:
        nonlocal before
        if calls:
            text = call_text(family, calls)
            if before is not None and before.get("content"):
                text = f"{before['content']}{text}"
            out.append({**(before or {"role": "assistant"}), "content": text})
        elif before is not None:
            out.append(before)
        calls.clear()
        before = None

    for m in messages:
        data = read(m.get("tool")) if m.get("role") == "assistant" else None
        if data is not None and data.type == FUNCTION_CALL:
            calls.append((data.name or "", data.arguments or "{}"))
            continue
        flush()
        if m.get("role") == "assistant" and m.get("tool") is None:
            before = dict(m)
        else:
            out.append(m)
    flush()
    return out
