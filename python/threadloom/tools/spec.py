"""What a request offers the model as tools, and the calls it gets back: plain typed values
every dialect builds (`Request.tools`) and reads (`Result.tool_calls`)."""

from __future__ import annotations

import re
import secrets
from typing import Any, Literal

import msgspec

from threadloom.errors import InvalidInput

# OpenAI's rule for a function's name; also what keeps a name safe inside the call grammar.
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionTool(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str | None = None
    # The arguments' JSON schema; None: any JSON object.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def schema(self) -> dict[str, Any]:
        """The arguments' schema: always an object's, as OpenAI's `parameters` are (a schema
        without a `type`, or none at all, would otherwise admit any JSON value)."""
        parameters = self.parameters or {}
        return parameters if "type" in parameters else {"type": "object", **parameters}


# "auto": text or calls; "required": one call or more; a name: calls of that function only.
Choice = Literal["auto", "required"] | str


def _call_prefix() -> str:
    return "call_" + secrets.token_hex(8)


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The tools of one request. `tool_choice="none"` never reaches here: a request that
    offers no tools has `Request.tools` None. `field` names the dialect's own field in
    errors."""

    functions: tuple[FunctionTool, ...]
    choice: Choice = "auto"
    parallel: bool = True
    field: str = "tools"
    # Call ids are this prefix plus the call's index, so a stream names each call before the
    # reply is parsed and the stored result names it the same.
    call_prefix: str = msgspec.field(default_factory=_call_prefix)

    @property
    def forced(self) -> bool:
        """Whether the whole reply must be calls (no text)."""
        return self.choice != "auto"

    def offered(self) -> tuple[FunctionTool, ...]:
        """The functions the reply may call: the named one alone, else all."""
        if self.choice in ("auto", "required"):
            return self.functions
        return tuple(f for f in self.functions if f.name == self.choice)

    def call_id(self, index: int) -> str:
        return f"{self.call_prefix}_{index}"


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """One call the model made: `arguments` is the JSON text it wrote (a JSON object)."""

    id: str
    name: str
    arguments: str


def check(spec: ToolSpec) -> ToolSpec:
    """`InvalidInput` naming the field for a spec no grammar can serve: a bad or repeated
    name, a named choice that is not offered, parameters that are not a schema object."""
    seen: set[str] = set()
    for i, f in enumerate(spec.functions):
        if not re.fullmatch(NAME_PATTERN, f.name):
            raise InvalidInput(
                f"{spec.field}[{i}].name must be 1 to 64 of [A-Za-z0-9_-]",
                param=f"{spec.field}[{i}].name",
            )
        if f.name in seen:
            raise InvalidInput(
                f"{spec.field}[{i}].name {f.name!r} is given twice", param=f"{spec.field}[{i}].name"
            )
        seen.add(f.name)
    if not spec.functions:
        raise InvalidInput(f"{spec.field} is empty", param=spec.field)
    if spec.choice not in ("auto", "required") and spec.choice not in seen:
        raise InvalidInput(
            f"tool_choice names {spec.choice!r}, which is not in {spec.field}", param="tool_choice"
        )
    return spec
