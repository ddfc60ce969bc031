"""Choosing the conversation store: an LMDB directory (the default) or a PostgreSQL database.

`open_store("./data")` opens the LMDB `threadloom.Store`; `open_store("postgresql://...")` opens
a `PostgresStore` with the same methods, records and errors. Everything above the store (the
engine, the server, the CLI) goes through here and works with either.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias, cast
from urllib.parse import urlsplit, urlunsplit

from threadloom._core import Assembly, PromptEngine, Retention, Store, Turn
from threadloom.errors import InvalidInput

# Either backend. `PostgresStore` mirrors `Store` method for method and its records mirror the
# core's attribute for attribute, so callers are typed against the core's classes alone.
ConversationStore: TypeAlias = Store

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(spec: str | os.PathLike[str]) -> bool:
    return isinstance(spec, str) and spec.startswith(POSTGRES_SCHEMES)


def describe(spec: str | os.PathLike[str]) -> str:
    """The store location for logs and errors: a path, or a URL without its password."""
    if not is_postgres_url(spec):
        return os.fspath(spec)
    parts = urlsplit(str(spec))
    if parts.password is None:
        return str(spec)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


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
    return cast(Store, PostgresStore(str(spec), retention=retention))


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


def assemble(
    prompt: PromptEngine,
    store: ConversationStore,
    inputs: Iterable[Mapping[str, str | None]],
    *,
    owner: str = "default",
    thread: str | None = None,
    response: str | None = None,
    turn: str | None = None,
    cache_key: str | None = None,
    **options: Any,
) -> Assembly:
    """`PromptEngine.assemble` from either store. LMDB is read in place by the Rust core (no
    copy, token counts cached in the store); other stores hand over the history they return."""
    if isinstance(store, Store):
        return prompt.assemble(
            store,
            inputs,
            owner=owner,
            thread=thread,
            response=response,
            turn=turn,
            cache_key=cache_key,
            **options,
        )
    history = (
        store.history(owner=owner, thread=thread, response=response, turn=turn)
        if (thread is not None or response is not None or turn is not None)
        else []
    )
    messages = turn_messages(history)
    new = list(inputs)
    messages.extend(new)
    # The same prefix-cache key the Rust path picks: the thread, else the conversation's root.
    key = cache_key or (history[0].id if history else None)
    # The new inputs are never trimmed, as on the LMDB path.
    return prompt.assemble_messages(
        messages, owner=owner, cache_key=key, protected=len(new), **options
    )
