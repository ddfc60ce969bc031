"""Fields OpenAI documents that this server accepts only in their neutral form.

SDKs send every field they know (the Agents SDK's first request carries `include: []` and
`tools: []`), so refusing unknown fields would refuse them. Each dialect's schema declares the
documented fields; this module decides, in one table per endpoint, which values mean "nothing
asked for" (accepted and ignored) and answers anything else with a 400 naming the field."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from threadloom.server.errors import ApiError

Neutral = Callable[[Any], bool]


def _empty(value: Any) -> bool:
    return not value


def _false(value: Any) -> bool:
    return value is False


def _no_reasoning(value: Any) -> bool:
    return isinstance(value, dict) and value.get("effort") is None and not value.get("summary")


# POST /v1/responses
RESPONSES: Mapping[str, Neutral] = {
    "include": _empty,
    "prompt": _empty,
    "reasoning": _no_reasoning,
    "top_logprobs": _empty,
}

# POST /v1/chat/completions
CHAT: Mapping[str, Neutral] = {
    "functions": _empty,
    "function_call": lambda v: v in ("none", "auto"),
    "logprobs": _false,
    "top_logprobs": _empty,
    "logit_bias": _empty,
    "audio": _empty,
    "modalities": lambda v: v == ["text"],
    "prediction": _empty,
    "reasoning_effort": _empty,
    "web_search_options": _empty,
}

_WHY = {
    "functions": "the legacy functions API is not built; use tools",
    "function_call": "the legacy functions API is not built; use tool_choice",
}


def refuse_unsupported(request: msgspec.Struct, table: Mapping[str, Neutral]) -> None:
    """400 for the first field of `table` set to something other than its neutral form."""
    for field, neutral in table.items():
        value = getattr(request, field)
        if value is None:
            continue
        plain = msgspec.to_builtins(value)
        if not neutral(plain):
            why = _WHY.get(field, "this server does not support it")
            raise ApiError(
                400,
                f"{field} is not supported: {why}",
                param=field,
                code="unsupported_parameter",
            )
