"""A thread's branch tree: its own turns (root to head) plus every branch continued from one of
its turns, read from the store in the engine's worker threads.

The store's children index (`ConversationStore.children`) finds every continuation of a turn,
whichever route made it. A reply that rewrites the first message has no parent, though, so the
store also records a thread's branches next to it (`Store.add_branch` / `branches`): a
branch's newest response is its record; continuing a branch's newest turn replaces the record.
A record whose response has expired or been deleted drops out of the tree (and is removed at
the next registration). The records are the owner's and go with the thread: a thread deleted
and made again under the same id starts with none.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable

import msgspec

from threadloom._core import Thread, Tokenizer, Turn
from threadloom.errors import InvalidInput, NotFound, StateConflict
from threadloom.storage import ConversationStore

# Where a branch starts: after a turn of the tree, or before its first message ("root").
ROOT = "root"
HEAD = "head"


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


# Before the store recorded branches, a thread's were kept in a hidden thread of this id prefix
# (and a digest of the thread id); one found is moved into the store's records and deleted.
LEGACY_PREFIX = "threadloom.branches."


def legacy_registry_id(thread_id: str) -> str:
    return LEGACY_PREFIX + hashlib.sha256(thread_id.encode()).hexdigest()[:40]


def _adopt_legacy(store: ConversationStore, owner: str, t: Thread) -> None:
    registry = legacy_registry_id(t.id)
    try:
        meta = store.get_thread(registry, owner=owner).metadata
    except NotFound:
        return
    # A registry of an earlier thread under the same id is dropped, not adopted.
    if meta.get("threadloom_branches_of") == t.id and meta.get("thread_created_ms") == t.created_ms:
        for entry in meta.get("branches", []):
            if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str):
                after = entry[1] if isinstance(entry[1], str) else None
                with contextlib.suppress(InvalidInput):
                    store.add_branch(t.id, entry[0], owner=owner, after_turn=after)
    with contextlib.suppress(NotFound):
        store.delete_thread(registry, owner=owner)


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
    of the thread. The record it continues (whose response ended at `after`) is replaced, and
    records whose responses are gone are dropped."""
    _adopt_legacy(store, owner, store.get_thread(thread_id, owner=owner))
    replaces = []
    for rid, _ in store.branches(thread_id, owner=owner):
        last = _alive(store, owner, rid)
        if last is None or (after is not None and last == after):
            replaces.append(rid)
    store.add_branch(thread_id, response_id, owner=owner, after_turn=after, replaces=replaces)


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


def _add_continuations(store: ConversationStore, owner: str, nodes: dict[str, Turn]) -> None:
    """Adds every turn that continues one of `nodes`, down to the leaves: the store's children
    index knows each branch made after a turn, whichever route made it (the Responses API's
    `previous_response_id`, a turn anchor), not only those the records hold. One store read
    per level of the walk, plus one per turn added."""
    level = list(nodes)
    while level:
        found = store.children(level, owner=owner)
        level = [c for kids in found for c in kids if c not in nodes]
        for child in level:
            nodes[child] = store.history(owner=owner, turn=child, limit=1)[-1]


def build(
    store: ConversationStore, owner: str, thread_id: str, tokenizer: Tokenizer | None
) -> Tree:
    """The thread's tree. Raises NotFound for a missing (or another tenant's) thread."""
    t = store.get_thread(thread_id, owner=owner)
    _adopt_legacy(store, owner, t)
    nodes: dict[str, Turn] = {}
    main: set[str] = set()
    if t.head is not None:
        for turn in store.history(owner=owner, thread=thread_id):
            nodes[turn.id] = turn
            main.add(turn.id)
    responses: dict[str, str] = {}
    for rid, _ in store.branches(thread_id, owner=owner):
        try:
            path = store.history(owner=owner, response=rid)
        except NotFound:
            continue  # still generating, expired or deleted
        for turn in path:
            nodes.setdefault(turn.id, turn)
        if path:
            responses[path[-1].id] = rid
    _add_continuations(store, owner, nodes)
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
        raise NotFound(f"no turn {after!r} in thread {thread_id!r}", kind="turn", id=after)
    return after
