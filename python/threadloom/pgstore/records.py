"""The records the PostgreSQL store returns: the attributes of `threadloom.Thread`, `Response`,
`Turn`, `Appended` and `ThreadPage`, so callers cannot tell the backends apart."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from threadloom.pgstore.checks import turn_id_string


class Thread(msgspec.Struct, frozen=True, kw_only=True):
    """A thread: a named, mutable pointer to the newest turn of a conversation."""

    id: str
    owner: str
    head: str | None
    metadata_json: str
    state: str
    visible: bool
    created_ms: int
    last_activity_ms: int
    message_count: int

    @property
    def metadata(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.metadata_json)
        return value

    def __repr__(self) -> str:
        return (
            f"Thread(id={self.id!r}, state={self.state!r}, visible={self.visible}, "
            f"message_count={self.message_count})"
        )


class Response(msgspec.Struct, frozen=True, kw_only=True):
    """A stored response: the turns one generation added, its status and usage."""

    id: str
    owner: str
    status: str
    model: str
    last_turn: str
    parent_turn: str | None
    input_count: int
    output_count: int
    thread_id: str | None
    previous_response_id: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    error: str | None
    created_ms: int
    metadata_json: str

    @property
    def metadata(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.metadata_json)
        return value

    def __repr__(self) -> str:
        return f"Response(id={self.id!r}, status={self.status!r}, model={self.model!r})"


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    """One turn of a history. Its ids are formatted when read, as the core's are: a history
    walk builds thousands of turns and most callers only want their text."""

    key: bytes
    parent_key: bytes | None
    role: str
    content: str
    reasoning: str | None
    depth: int
    created_ms: int
    tool: str | None = None

    @property
    def id(self) -> str:
        return turn_id_string(self.key)

    @property
    def parent_id(self) -> str | None:
        return None if self.parent_key is None else turn_id_string(self.parent_key)

    def __repr__(self) -> str:
        preview = self.content[:40] + ("…" if len(self.content) > 40 else "")
        return f"Turn(role={self.role!r}, content={preview!r})"


class Appended(msgspec.Struct, frozen=True, kw_only=True):
    """What an append wrote."""

    turn_ids: list[str]
    response: Response | None
    thread: Thread | None


class ThreadPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of `list_threads`, most recently active first."""

    threads: list[Thread]
    next_cursor: str | None
