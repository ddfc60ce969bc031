"""The PostgreSQL store's rows to and from the core's records: the column lists, the mappers,
the keyed reads every operation starts from (expired and other owners' records read as
missing), and the not-found errors."""

from __future__ import annotations

import uuid
from typing import Any

from threadloom import _core
from threadloom._core import Response, ResponseInfo, Retention, Thread, Turn
from threadloom.errors import NotFound
from threadloom.pgstore.connection import Conn

THREAD_COLUMNS = (
    "owner, id, head, metadata, state, visible, created_ms, last_activity_ms, message_count"
)
RESPONSE_COLUMNS = (
    "id, owner, status, model, last_turn, parent_turn, input_count, output_count, thread_id, "
    "previous_response_id, prompt_tokens, completion_tokens, cached_tokens, error, created_ms, "
    "metadata"
)


def to_uuid(key: bytes | None) -> uuid.UUID | None:
    return None if key is None else uuid.UUID(bytes=key)


def turn_id(value: uuid.UUID | None) -> str | None:
    return None if value is None else _core.turn_id_string(value.bytes)


def thread(row: tuple[Any, ...]) -> Thread:
    owner, tid, head, metadata, state, visible, created, activity, count = row
    return Thread(
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
        last_turn=_core.turn_id_string(last.bytes),
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
        role=_core.ROLES[role],
        content=content.decode("utf-8"),
        reasoning=None if reasoning is None else reasoning.decode("utf-8"),
        tool=None if tool is None else tool.decode("utf-8"),
        depth=depth,
        created_ms=created,
    )


def thread_not_found(thread_id: str) -> NotFound:
    return _core.not_found("thread", thread_id)


def response_not_found(response_id: str) -> NotFound:
    return _core.not_found("response", response_id)


def turn_not_found(key: bytes) -> NotFound:
    return _core.not_found("turn", key)


def load_thread(
    conn: Conn, retention: Retention, owner: str, thread_id: str, now: int, *, lock: bool = False
) -> Thread:
    """The live thread, or NotFound; `lock` holds its row until the transaction ends."""
    _core.validate_owner(owner)
    _core.validate_thread_id(thread_id)
    row = conn.execute(
        f"SELECT {THREAD_COLUMNS} FROM threadloom_threads WHERE owner = %s AND id = %s"
        + (" FOR UPDATE" if lock else ""),
        (owner, thread_id),
    ).fetchone()
    if row is None:
        raise thread_not_found(thread_id)
    t = thread(row)
    if retention.thread_expired(t, now):
        raise thread_not_found(thread_id)
    return t


def load_response(
    conn: Conn, retention: Retention, owner: str, response_id: str, now: int, *, lock: str = ""
) -> Response:
    """The owner's live response, or NotFound; `lock` is a row-locking clause."""
    _core.validate_owner(owner)
    _core.validate_response_id(response_id)
    row = conn.execute(
        f"SELECT {RESPONSE_COLUMNS} FROM threadloom_responses WHERE id = %s {lock}",
        (response_id,),
    ).fetchone()
    if row is None:
        raise response_not_found(response_id)
    r = response(row)
    # Another tenant's response reads exactly like a missing one.
    if r.owner != owner or retention.response_expired(r, now):
        raise response_not_found(response_id)
    return r


class InfoRow:
    """The fields of a `ResponseInfo`, read once, its metadata checked."""

    def __init__(self, info: ResponseInfo) -> None:
        if not isinstance(info, ResponseInfo):
            raise TypeError(f"response must be a ResponseInfo, not {type(info).__name__}")
        self.id: str | None = info.id
        if self.id is not None:
            _core.validate_response_id(self.id)
        self.model = info.model
        self.status = info.status
        self.output_count = info.output_count
        self.prompt_tokens = info.prompt_tokens
        self.completion_tokens = info.completion_tokens
        self.cached_tokens = info.cached_tokens
        self.error = info.error
        self.metadata = _core.normalize_metadata(info.metadata_json) or "{}"
