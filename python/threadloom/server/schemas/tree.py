"""A thread's branch tree and replies continued from any of its turns (`routes/tree.py`).

Snake_case on the wire, like the OpenAI-shaped dialects; request structs refuse unknown fields.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from threadloom.server.schemas.freddy import ThreadState
from threadloom.server.schemas.items import ItemKind
from threadloom.server.schemas.limits import MAX_ITEMS, Temperature, TopP

# `head` (the thread's newest turn: the reply goes into the thread), `root` (a new first
# message: a branch beside the whole conversation) or a turn id of the thread's tree.
After = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_]+$")]


class TreeNode(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["thread.turn"] = "thread.turn"
    parent_id: str | None
    role: str
    content: str
    reasoning: str | None
    created_at: int
    # Tokens of content and reasoning in the served model's tokenizer.
    tokens: int
    # On the thread's own line (root to head), rather than only on a branch.
    on_thread: bool
    # The ids of the turns that continue this one, oldest first (the thread's own first).
    children: list[str]
    # The response whose reply this turn is, when it ends a recorded branch.
    response_id: str | None = None
    # What the turn is: a message, a tool call or its output, or a compaction (a summary that
    # stands in for every turn before it; the page folds it).
    kind: ItemKind = "message"


class ThreadTree(msgspec.Struct, kw_only=True):
    object: Literal["thread.tree"] = "thread.tree"
    thread_id: str
    state: ThreadState
    head: str | None
    # Turns without a parent: the thread's first message first, then rewritten first messages.
    roots: list[str]
    # Turns with more than one continuation.
    branch_points: list[str]
    # Depth-first, children oldest first.
    nodes: list[TreeNode]


class TurnChildren(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    thread_id: str
    turn_id: str
    data: list[TreeNode]


class Message(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: Literal["user", "system", "assistant"]
    content: Annotated[str, Meta(max_length=4_000_000)]


class ContinueRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input: Annotated[list[Message], Meta(min_length=1, max_length=MAX_ITEMS)]
    after: After = "head"
    stream: bool = False
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    # The model of this reply (a declared name or alias); None: the default model.
    model: str | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class ContinueResult(msgspec.Struct, kw_only=True):
    object: Literal["thread.reply"] = "thread.reply"
    response_id: str | None
    # The thread, when the reply went into it; null for a branch.
    thread_id: str | None
    turn_id: str | None
    # The turn the reply continues (null: a new first message).
    after: str | None
    branch: bool
    status: Literal["completed", "incomplete", "failed"]
    finish_reason: Literal["stop", "length", "cancelled", "error"]
    text: str
    reasoning: str | None
    model: str
    usage: Usage
    # How many of the oldest messages the trimming strategy left out of the prompt.
    messages_dropped: int
    time_to_first_token_s: float | None
    decode_tokens_per_s: float | None
    total_s: float
    error: str | None = None


# ---- stream events (`"stream": true`): `event: <type>` then `data: <this>` -------------------


class StreamStarted(msgspec.Struct, kw_only=True, tag="reply.started", tag_field="type"):
    response_id: str | None
    after: str | None
    branch: bool
    prompt_tokens: int
    cached_tokens: int


class StreamDelta(msgspec.Struct, kw_only=True, tag="reply.delta", tag_field="type"):
    text: str
    reasoning: bool = False


class StreamDone(msgspec.Struct, kw_only=True, tag="reply.done", tag_field="type"):
    reply: ContinueResult


class StreamError(msgspec.Struct, kw_only=True, tag="reply.error", tag_field="type"):
    message: str
    code: str | None = None


StreamEvent = StreamStarted | StreamDelta | StreamDone | StreamError
