"""`Request`: everything one generation is asked to do, in one typed value. Every dialect
builds one; `Engine.stream_request`, `respond`, `assemble_prompt`, `compact_request` and
`run_batch` take it (`Engine.stream` is the keyword form, for the Python API)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from threadloom.backends.base import SamplingParams
from threadloom.errors import InvalidInput
from threadloom.limits import check_input_chars, check_message_count
from threadloom.tools.spec import ToolSpec

Message = Mapping[str, str | None]
Strategy = Literal["tokens", "window", "summarize", "none"]


class Request(msgspec.Struct, kw_only=True):
    """A generation request. The conversation is named by at most one of `thread`,
    `previous_response_id`, `after_turn` and `history` (a history given in full: stateless,
    nothing is stored); none starts a new conversation.

    `add_generation_prompt=False` renders the conversation without opening a new assistant
    message, so the model continues the last one. `split_reasoning=False` leaves a thinking
    model's `<think>` block inline in the text (for dialects that stream raw tokens)."""

    inputs: list[dict[str, str]] | str
    owner: str = "default"
    thread: str | None = None
    previous_response_id: str | None = None
    # Continue after any stored turn (a branch): the reply is stored after it, in no thread.
    after_turn: str | None = None
    history: list[dict[str, str]] | None = None
    # The caller's wish to keep the reply (the dialects' `store` field); `keeps_reply` says
    # whether it is kept. Not to be confused with `Engine.store`, the conversation store.
    store: bool = True
    sampling: SamplingParams | None = None
    strategy: Strategy = "tokens"
    window: int | None = None
    enable_thinking: bool | None = None
    # Continue `previous_response_id` only within the store's anchor window (Freddy).
    anchor_window: bool = False
    # The stored response's metadata; a thread created by this request gets `thread_metadata`.
    metadata: dict[str, Any] | None = None
    thread_metadata: dict[str, Any] | None = None
    # Whether a missing `thread` is created (Freddy's threads), or is NotFound (a
    # conversation, which must exist, also when it was deleted while the request waited).
    create_thread: bool = True
    # Whether a thread this request creates is listed (the store's `visible`).
    visible: bool = True
    add_generation_prompt: bool = True
    split_reasoning: bool = True
    # A JSON schema the reply must match (`{"type": "object"}`: any JSON object), enforced
    # token by token; `output_schema_field` names it in errors (the dialect's own field).
    output_schema: dict[str, Any] | None = None
    output_schema_field: str = "output_schema"
    # Functions the model may call (None: none offered); the reply's calls come back as
    # `Result.tool_calls`, and the stored reply keeps each as a call turn.
    tools: ToolSpec | None = None
    # Whether the reply's id is shown before the reply is stored (a stream's first frame, a
    # background response): it is then recorded as pending first, so the id answers while the
    # reply generates and a restart stores it. A caller that shows the id only with the stored
    # reply says False and saves a durable write per turn.
    announce: bool = True

    @property
    def params(self) -> SamplingParams:
        return self.sampling or SamplingParams()

    @property
    def stateless(self) -> bool:
        return self.history is not None

    @property
    def keeps_reply(self) -> bool:
        """Whether the reply is written to the conversation store: `store` was asked and the
        request is not stateless (a history given in full is never stored)."""
        return self.store and not self.stateless

    def new_messages(self) -> list[dict[str, str]]:
        return normalize(self.inputs, "input")

    def check(self, context_length: int) -> list[dict[str, str]]:
        """Everything that can be refused without reading the store; returns the new
        messages."""
        params = self.params
        params.validate()
        new = self.new_messages()
        if not new:
            raise InvalidInput("inputs is empty", param="input")
        past = self.history or []
        check_message_count(len(new) + len(past))
        check_input_chars(
            sum(len(m.get("content") or "") + len(m.get("tool") or "") for m in (*new, *past))
        )
        anchors = (self.thread, self.previous_response_id, self.after_turn, self.history)
        if sum(x is not None for x in anchors) > 1:
            raise InvalidInput(
                "give at most one of thread, previous_response_id, after_turn and history"
            )
        if params.max_tokens >= context_length:
            raise InvalidInput(
                f"max_tokens ({params.max_tokens}) must be smaller than the context "
                f"({context_length})",
                param="max_tokens",
            )
        return new


def normalize(messages: str | Iterable[Message], field: str) -> list[dict[str, str]]:
    """Messages as plain `{"role", "content"}` dicts; a string is one user message."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out = []
    for i, m in enumerate(messages):
        role, content, tool = m.get("role"), m.get("content"), m.get("tool")
        if not isinstance(role, str) or not isinstance(content, str):
            raise InvalidInput(f"{field}[{i}] needs string role and content", param=field)
        if tool is None:
            out.append({"role": role, "content": content})
        elif isinstance(tool, str):  # a tool call or result (see `Store.append`)
            out.append({"role": role, "content": content, "tool": tool})
        else:
            raise InvalidInput(f"{field}[{i}].tool must be a string", param=field)
    return out


def make_request(inputs: str | Iterable[Message], options: Mapping[str, Any]) -> Request:
    """A `Request` from keyword arguments (the Python API's convenience form)."""
    history = options.get("history")
    fields = dict(options)
    if history is not None:
        fields["history"] = normalize(history, "history")
    given = inputs if isinstance(inputs, str) else normalize(inputs, "input")
    try:
        return Request(inputs=given, **fields)
    except TypeError as e:
        raise InvalidInput(str(e)) from None
