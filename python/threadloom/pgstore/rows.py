"""The PostgreSQL store's records to and from table rows, the turn inserts every append
shares, list cursors and the not-found errors."""

from __future__ import annotations

import uuid
from typing import Any

from threadloom._core import ResponseInfo
from threadloom.errors import InvalidInput, LimitExceeded, NotFound
from threadloom.pgstore import checks
from threadloom.pgstore.checks import debug_str
from threadloom.pgstore.connection import Conn
from threadloom.pgstore.records import Response, Turn
from threadloom.pgstore.records import Thread as ThreadRecord


def to_uuid(key: bytes | None) -> uuid.UUID | None:
    return None if key is None else uuid.UUID(bytes=key)


def turn_id(value: uuid.UUID | None) -> str | None:
    return None if value is None else checks.turn_id_string(value.bytes)


def thread(row: tuple[Any, ...]) -> ThreadRecord:
    owner, tid, head, metadata, state, visible, created, activity, count = row
    return ThreadRecord(
        id=tid,
        owner=owner,
        head=turn_id(head),
        metadata_json=metadata,
        state=state,
        visible=visible,
        created_ms=created,
        last_activity_ms=activity,
        message_count=count,
    )


def response(row: tuple[Any, ...]) -> Response:
    (rid, owner, status, model, last, parent, n_in, n_out, thread_id, previous, prompt,
     completion, cached, error, created, metadata) = row  # fmt: skip
    return Response(
        id=rid,
        owner=owner,
        status=status,
        model=model,
        last_turn=checks.turn_id_string(last.bytes),
        parent_turn=turn_id(parent),
        input_count=n_in,
        output_count=n_out,
        thread_id=thread_id,
        previous_response_id=previous,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        error=error,
        created_ms=created,
        metadata_json=metadata,
    )


def turn(row: tuple[Any, ...]) -> Turn:
    key, parent, role, depth, created, content, reasoning, tool = row
    return Turn(
        key=key.bytes,
        parent_key=None if parent is None else parent.bytes,
        role=checks.ROLES[role],
        content=content.decode("utf-8"),
        reasoning=None if reasoning is None else reasoning.decode("utf-8"),
        depth=depth,
        created_ms=created,
        tool=None if tool is None else tool.decode("utf-8"),
    )


def check_sizes(new: list[checks.NewTurn]) -> None:
    for t in new:
        if t.size > checks.MAX_TURN_BYTES:
            raise LimitExceeded(
                f"a turn holds {t.size} bytes of text; the limit is {checks.MAX_TURN_BYTES}"
            )


def insert_turns(
    conn: Conn,
    owner: str,
    parent: bytes | None,
    depth: int,
    new: list[checks.NewTurn],
    last_refs: int,
    now: int,
) -> list[bytes]:
    """Writes `new` as a chain after `parent` (at `depth`), each referenced by its child and
    the last by `last_refs` holders; returns their keys. The parent's reference from the first
    is the caller's to count."""
    keys: list[bytes] = []
    prev = parent
    for _ in new:
        prev = checks.new_turn_key(now, prev)
        keys.append(prev)
    conn.execute(
        "INSERT INTO threadloom_turns "
        "(id, parent, owner, role, depth, created_ms, refs, content, reasoning, tool) "
        "SELECT id, parent, %s, role, depth, %s, refs, content, reasoning, tool FROM unnest("
        "%s::uuid[], %s::uuid[], %s::smallint[], %s::integer[], %s::integer[], "
        "%s::bytea[], %s::bytea[], %s::bytea[]) "
        "AS x(id, parent, role, depth, refs, content, reasoning, tool)",
        (
            owner,
            now,
            [to_uuid(k) for k in keys],
            [to_uuid(parent), *(to_uuid(k) for k in keys[:-1])],
            [t.role for t in new],
            list(range(depth + 1, depth + len(new) + 1)),
            [1] * (len(new) - 1) + [last_refs],
            [t.content for t in new],
            [t.reasoning for t in new],
            [t.tool for t in new],
        ),
    )
    return keys


def thread_not_found(thread_id: str) -> NotFound:
    return NotFound(f"thread {debug_str(thread_id)} not found")


def response_not_found(response_id: str) -> NotFound:
    return NotFound(f"response {debug_str(response_id)} not found")


def turn_not_found(key: bytes) -> NotFound:
    return NotFound(f"turn {debug_str(checks.turn_id_string(key))} not found")


def ms(seconds: float) -> int:
    return round(seconds * 1000)


class InfoRow:
    """The fields of a `ResponseInfo`, read once."""

    def __init__(self, info: ResponseInfo) -> None:
        if not isinstance(info, ResponseInfo):
            raise TypeError(f"response must be a ResponseInfo, not {type(info).__name__}")
        self.id: str | None = info.id
        self.model = info.model
        self.status = info.status
        self.output_count = info.output_count
        self.prompt_tokens = info.prompt_tokens
        self.completion_tokens = info.completion_tokens
        self.cached_tokens = info.cached_tokens
        self.error = info.error
        self.metadata: str | None = info.metadata_json


# ---- list cursors: the LMDB store's, so a cursor means the same on both ------------------------

_U64 = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1


def cursor(t: ThreadRecord) -> str:
    inverted = _U64 - max(t.last_activity_ms, 0)
    return (inverted.to_bytes(8, "big") + t.id.encode("utf-8")).hex()


def parse_cursor(text: str) -> tuple[int, str]:
    """(last activity ms, thread id) of the last thread of the previous page."""
    bad = InvalidInput(f"invalid cursor {debug_str(text)}")
    if len(text) % 2 or not all(c in "0123456789abcdefABCDEF" for c in text):
        raise bad
    raw = bytes.fromhex(text)
    if len(raw) <= 8:
        raise bad
    try:
        thread_id = raw[8:].decode("utf-8")
    except UnicodeDecodeError:
        raise bad from None
    ms = _U64 - int.from_bytes(raw[:8], "big")
    return min(ms, _I64_MAX), thread_id
