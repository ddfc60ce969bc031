"""A thread's branch tree: its own turns (root to head) plus every branch continued from one of
its turns (`Request.after_turn`), read from the store in the engine's worker threads.

The store keeps turns as a forest with parent links only, so the branches that grew out of a
thread are recorded next to it: a hidden *branch registry* thread per thread (id
`REGISTRY_PREFIX` + a digest of the thread id, metadata `{"threadloom_branches_of": <thread>,
"thread_created_ms": ..., "branches": [[response id, turn it continues or null], ...]}`). A
branch's newest response is its entry; continuing a branch's newest turn replaces the entry. An
entry whose response has expired or been deleted simply drops out of the tree. The registry is
under the same owner as the thread, so it is exactly as private, and a thread deleted and made
again under the same id starts with an empty registry (its creation time no longer matches).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterable
from typing import Any

import msgspec

from threadloom._core import MAX_METADATA_BYTES, Thread, Tokenizer, Turn
from threadloom.errors import LimitExceeded, NotFound, StateConflict
from threadloom.storage import ConversationStore

REGISTRY_PREFIX = "threadloom.branches."
REGISTRY_MARK = "threadloom_branches_of"
# Where a branch starts: after a turn of the tree, or before its first message ("root").
ROOT = "root"
HEAD = "head"

# Registrations of one thread take turns (read, then write the registry) within this process:
# a fixed set of locks, picked by the thread's digest.
_LOCKS = tuple(threading.Lock() for _ in range(64))


class TreeNode(msgspec.Struct, kw_only=True):
    turn: Turn
    children: list[str]
    on_thread: bool
    tokens: int
    response_id: str | None = None


class Tree(msgspec.Struct, kw_only=True):
    """`nodes` in depth-first order (children oldest first); `roots` are the turns without a
    parent (the thread's first message, and each branch that rewrote it)."""

    thread: Thread
    nodes: list[TreeNode]
    roots: list[str]


def registry_id(thread_id: str) -> str:
    digest = hashlib.sha256(thread_id.encode()).hexdigest()[:40]
    return REGISTRY_PREFIX + digest


def is_registry(t: Thread) -> bool:
    return t.id.startswith(REGISTRY_PREFIX) and REGISTRY_MARK in t.metadata


def _lock(owner: str, thread_id: str) -> threading.Lock:
    digest = hashlib.sha256(f"{owner}\0{thread_id}".encode()).digest()
    return _LOCKS[digest[0] % len(_LOCKS)]


def _entries(store: ConversationStore, owner: str, t: Thread) -> list[tuple[str, str | None]]:
    try:
        reg = store.get_thread(registry_id(t.id), owner=owner)
    except NotFound:
        return []
    meta = reg.metadata
    if meta.get(REGISTRY_MARK) != t.id or meta.get("thread_created_ms") != t.created_ms:
        return []  # a registry of an earlier thread under the same id
    out: list[tuple[str, str | None]] = []
    for entry in meta.get("branches", []):
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str):
            out.append((entry[0], entry[1] if isinstance(entry[1], str) else None))
    return out


def _alive(store: ConversationStore, owner: str, response_id: str) -> str | None:
    """The last turn of a stored response; "" while it still generates; None when gone."""
    try:
        return store.get_response(response_id, owner=owner).last_turn
    except NotFound:
        return "" if store.get_pending(response_id, owner=owner) is not None else None


def register(
    store: ConversationStore, owner: str, thread_id: str, response_id: str, after: str | None
) -> None:
    """Records `response_id` (a reply stored after turn `after`, or as a new root) as a branch
    of the thread. An entry it continues (whose response ended at `after`) is replaced, and
    entries whose responses are gone are dropped."""
    with _lock(owner, thread_id):
        t = store.get_thread(thread_id, owner=owner)
        kept: list[list[Any]] = []
        for rid, at in _entries(store, owner, t):
            last = _alive(store, owner, rid)
            if last is None or (after is not None and last == after) or rid == response_id:
                continue
            kept.append([rid, at])
        kept.append([response_id, after])
        meta = {REGISTRY_MARK: t.id, "thread_created_ms": t.created_ms, "branches": kept}
        if len(json.dumps(meta, separators=(",", ":"))) > MAX_METADATA_BYTES:
            raise LimitExceeded(
                f"thread {thread_id!r} has as many branches as it can record ({len(kept) - 1})",
                param="after",
            )
        rid = registry_id(thread_id)
        try:
            store.update_thread(rid, owner=owner, metadata=meta)
        except NotFound:
            store.create_thread(rid, owner=owner, metadata=meta, visible=False)


def forget(store: ConversationStore, owner: str, thread_id: str) -> None:
    """Deletes the thread's branch registry (the branches' turns stay until they expire)."""
    with contextlib.suppress(NotFound):
        store.delete_thread(registry_id(thread_id), owner=owner)


def _count(tokenizer: Tokenizer | None, turn: Turn) -> int:
    if tokenizer is None:
        return 0
    text = turn.content + (turn.reasoning or "")
    # As prompts count it: control tokens in stored text stay text.
    return tokenizer.count(text, parse_special=False)


def _order(nodes: dict[str, Turn], roots: list[str], children: dict[str, list[str]]) -> list[str]:
    order: list[str] = []
    stack = list(reversed(roots))
    while stack:
        tid = stack.pop()
        order.append(tid)
        stack.extend(reversed(children.get(tid, [])))
    return order


def _sorted(ids: Iterable[str], nodes: dict[str, Turn]) -> list[str]:
    return sorted(ids, key=lambda i: (nodes[i].created_ms, i))


def build(
    store: ConversationStore, owner: str, thread_id: str, tokenizer: Tokenizer | None
) -> Tree:
    """The thread's tree. Raises NotFound for a missing (or another tenant's) thread."""
    t = store.get_thread(thread_id, owner=owner)
    nodes: dict[str, Turn] = {}
    main: set[str] = set()
    if t.head is not None:
        for turn in store.history(owner=owner, thread=thread_id):
            nodes[turn.id] = turn
            main.add(turn.id)
    responses: dict[str, str] = {}
    for rid, _ in _entries(store, owner, t):
        try:
            path = store.history(owner=owner, response=rid)
        except NotFound:
            continue  # still generating, expired or deleted
        for turn in path:
            nodes.setdefault(turn.id, turn)
        if path:
            responses[path[-1].id] = rid
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    for turn in nodes.values():
        if turn.parent_id is None or turn.parent_id not in nodes:
            roots.append(turn.id)
        else:
            children.setdefault(turn.parent_id, []).append(turn.id)
    children = {k: _sorted(v, nodes) for k, v in children.items()}
    # The thread's own line first, then branches oldest first.
    roots = sorted(_sorted(roots, nodes), key=lambda i: i not in main)
    for k, v in children.items():
        children[k] = sorted(v, key=lambda i: i not in main)
    out = [
        TreeNode(
            turn=nodes[i],
            children=children.get(i, []),
            on_thread=i in main,
            tokens=_count(tokenizer, nodes[i]),
            response_id=responses.get(i),
        )
        for i in _order(nodes, roots, children)
    ]
    return Tree(thread=t, nodes=out, roots=roots)


def resolve(store: ConversationStore, owner: str, thread_id: str, after: str) -> str | None:
    """Where a reply to the thread goes: None for the thread itself (`head`, or its head turn);
    else the turn id to branch after, or `ROOT`. The thread must be open (a locked or archived
    thread takes no branch either) and the turn must be in its tree (else NotFound)."""
    t = store.get_thread(thread_id, owner=owner)
    if t.state != "open":
        raise StateConflict(f"thread {thread_id!r} is {t.state} and accepts no new messages")
    if after == HEAD or (t.head is not None and after == t.head):
        return None
    if after == ROOT:
        return ROOT
    tree = build(store, owner, thread_id, None)
    if not any(n.turn.id == after for n in tree.nodes):
        raise NotFound(f"no turn {after!r} in thread {thread_id!r}")
    return after
