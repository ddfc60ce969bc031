"""Choosing the conversation store: an LMDB directory (the default) or a PostgreSQL database.

`open_store("./data")` opens the LMDB `threadloom.Store`; `open_store("postgresql://...")` opens
a `PostgresStore`. Both satisfy `ConversationStore` and return the core's record classes.
Everything above the store (the engine, the server, the CLI) goes through here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from threadloom._core import (
    Appended,
    Assembly,
    PromptEngine,
    Response,
    ResponseInfo,
    Retention,
    Store,
    Thread,
    ThreadPage,
    Turn,
)
from threadloom.errors import InvalidInput
from threadloom.locations import describe, is_postgres_url
from threadloom.store_counts import StoreStats, SweepCounts

__all__ = [
    "ConversationStore",
    "StoreStats",
    "SweepCounts",
    "assemble",
    "close_store",
    "describe",
    "is_postgres_url",
    "open_store",
    "turn_messages",
]


class ConversationStore(Protocol):
    """What a conversation store offers; `threadloom.Store` (LMDB) and `PostgresStore` both
    do, with the same arguments, records and errors (see `threadloom.Store` for each)."""

    @property
    def path(self) -> str | Path: ...
    @property
    def retention(self) -> Retention: ...
    @property
    def format_version(self) -> int: ...
    def create_thread(
        self,
        thread_id: str | None = None,
        *,
        owner: str = "default",
        metadata: Mapping[str, Any] | str | bytes | None = None,
        visible: bool = True,
        exist_ok: bool = False,
    ) -> Thread: ...
    def get_thread(self, thread_id: str, *, owner: str = "default") -> Thread: ...
    def list_threads(
        self,
        *,
        owner: str = "default",
        visible: bool = True,
        limit: int = 20,
        after: str | None = None,
    ) -> ThreadPage: ...
    def update_thread(
        self,
        thread_id: str,
        *,
        owner: str = "default",
        metadata: Mapping[str, Any] | str | bytes | None = None,
        state: str | None = None,
    ) -> Thread: ...
    def delete_thread(self, thread_id: str, *, owner: str = "default") -> None: ...
    def append(
        self,
        turns: Iterable[Mapping[str, str | None]],
        *,
        owner: str = "default",
        thread: str | None = None,
        previous_response_id: str | None = None,
        after_turn: str | None = None,
        response: ResponseInfo | None = None,
        expected_head: str | None = None,
        anchor_window: bool = False,
        settle_pending: bool = False,
    ) -> Appended: ...
    def rebase_thread(
        self,
        thread_id: str,
        turns: Iterable[Mapping[str, str | None]] | None = None,
        *,
        owner: str = "default",
        after_turn: str | None = None,
        expected_head: str | None = None,
    ) -> Thread: ...
    def add_branch(
        self,
        thread_id: str,
        response_id: str,
        *,
        owner: str = "default",
        after_turn: str | None = None,
        replaces: Sequence[str] = (),
    ) -> None: ...
    def branches(
        self, thread_id: str, *, owner: str = "default"
    ) -> list[tuple[str, str | None]]: ...
    def children(self, turn_ids: Sequence[str], *, owner: str = "default") -> list[list[str]]: ...
    def history(
        self,
        *,
        owner: str = "default",
        thread: str | None = None,
        response: str | None = None,
        turn: str | None = None,
        limit: int | None = None,
    ) -> list[Turn]: ...
    def get_response(self, response_id: str, *, owner: str = "default") -> Response: ...
    def delete_response(self, response_id: str, *, owner: str = "default") -> None: ...
    def put_pending(self, response_id: str, payload: bytes, *, owner: str) -> None: ...
    def remove_pending(self, response_id: str, *, owner: str) -> None: ...
    def put_summary(self, name: str, text: str, *, owner: str) -> None: ...
    def get_summary(self, name: str, *, owner: str) -> str | None: ...
    def get_pending(self, response_id: str, *, owner: str) -> bytes | None: ...
    def pending(self) -> list[tuple[str, str, bytes]]: ...
    def sweep(self) -> SweepCounts: ...
    def stats(self) -> StoreStats: ...
    def verify(self) -> None: ...


def open_store(
    spec: str | os.PathLike[str] | ConversationStore,
    *,
    retention: Retention | None = None,
    **lmdb_options: Any,
) -> ConversationStore:
    """A store for `spec`: an open store is returned as is, a `postgresql://` URL opens
    PostgreSQL, anything else is the LMDB directory. `lmdb_options` (map_size, max_map_size)
    apply to LMDB only."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    if not is_postgres_url(spec):
        return Store(spec, retention=retention, **lmdb_options)
    if lmdb_options:
        raise InvalidInput(f"{', '.join(lmdb_options)} apply to LMDB stores only")
    try:
        from threadloom.pgstore import PostgresStore
    except ImportError as e:
        raise InvalidInput(
            "a postgresql:// store needs the PostgreSQL driver: "
            f"pip install 'threadloom[postgres]' ({e})"
        ) from None
    return PostgresStore(str(spec), retention=retention)


def close_store(store: ConversationStore) -> None:
    """Releases the store's connections (PostgreSQL); an LMDB store closes when dropped."""
    close = getattr(store, "close", None)
    if close is not None:
        close()


def turn_messages(turns: Iterable[Turn]) -> list[Mapping[str, str | None]]:
    """Stored turns as the message dicts prompt assembly takes."""
    return [
        {"role": t.role, "content": t.content, "reasoning": t.reasoning, "tool": t.tool}
        for t in turns
    ]


def cursor_index(turns: Sequence[Turn], cursor: str, what: str) -> int:
    """Where a paging cursor (a turn id from a page already read) lies on a thread's path:
    a cursor pages only the conversation it came from, in either direction, so an id of
    another conversation (or of a turn the thread moved away from) is InvalidInput."""
    for i, turn in enumerate(turns):
        if turn.id == cursor:
            return i
    raise InvalidInput(f"no {what} {cursor!r} in this conversation")


def assemble(
    prompt: PromptEngine,
    store: ConversationStore,
    inputs: Iterable[Mapping[str, str | None]],
    *,
    owner: str = "default",
    thread: str | None = None,
    response: str | None = None,
    turn: str | None = None,
    **options: Any,
) -> Assembly:
    """`PromptEngine.assemble` from either store: LMDB is read in place by the Rust core (no
    copy, token counts cached in the store); another store's history is handed over, and the
    core assembles it by the same rules."""
    if isinstance(store, Store):
        return prompt.assemble(
            store, inputs, owner=owner, thread=thread, response=response, turn=turn, **options
        )
    anchored = thread is not None or response is not None or turn is not None
    history = (
        store.history(owner=owner, thread=thread, response=response, turn=turn) if anchored else []
    )
    return prompt.assemble_history(history, inputs, owner=owner, **options)
