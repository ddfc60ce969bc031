"""OpenAI's Conversations API on the thread store: a conversation is a thread (any thread, made
by any dialect), its items are the thread's turns, newest at the thread's head. Tenancy,
states (a locked or archived thread refuses new items with 409), limits and retention are the
threads' own.

Items are messages, function calls and their outputs (schemas/items.py); a conversation's first
item page newest first (the default) reads only that page; `order=asc` and a cursor (`after`)
read the conversation's path once, so a cursor is checked to lie on it (one from another
conversation is a 400). Appends and deletes take the conversation's turn (`Engine.in_turn`), so
they never land under a reply being generated. Turns are immutable and shared by the responses that
reached them, so deleting an item moves the conversation to a new path without it: the items
after it are stored again (new ids) after its parent, and the thread's head moves there, in one
store transaction and in the thread's turn (`Engine.remove_turn`); responses keep the old path.
An item id read is checked to be the tenant's, not to lie on this conversation's path (ids are
unguessable, and a tenant may read all of its own turns anyway); a delete needs it on the path.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from threadloom import Thread, Turn
from threadloom.errors import InvalidInput, NotFound
from threadloom.server.errors import ApiError
from threadloom.server.keys import OWNER
from threadloom.server.routes.common import (
    about,
    decode_body,
    decode_items_body,
    json_response,
    mint_id,
    not_found,
    opener,
    path_id,
    sealer,
    store_engine,
)
from threadloom.server.schemas import conversations as c
from threadloom.server.schemas.ids import THREAD_ID
from threadloom.server.schemas.items import Seal, tool_item
from threadloom.server.schemas.responses import OutputText
from threadloom.storage import ConversationStore, cursor_index

_create = msgspec.json.Decoder(c.CreateConversation)
_update = msgspec.json.Decoder(c.UpdateConversation)
_add = msgspec.json.Decoder(c.AddItems)


def conversation_object(t: Thread) -> c.Conversation:
    return c.Conversation(
        id=t.id,
        created_at=t.created_ms // 1000,
        metadata={k: str(v) for k, v in t.metadata.items()},
    )


def item(t: Turn, seal: Seal) -> c.AnyItem:
    return _item(t.id, t.role, t.content, t.tool, seal)


def _item(turn_id: str, role: str, content: str, tool: str | None, seal: Seal) -> c.AnyItem:
    called = tool_item(turn_id, role, content, tool, seal)
    if called is not None:
        return called
    part: c.InputText | OutputText = (
        OutputText(text=content) if role == "assistant" else c.InputText(text=content)
    )
    return c.Item(id=turn_id, role=role, content=[part])  # type: ignore[arg-type]


def _conversation_id(request: web.Request) -> str:
    return path_id(request, "conversation_id", THREAD_ID, "conversation")


def _not_found(cid: str) -> ApiError:
    return not_found("conversation", cid, "conversation_id")


def _item_not_found(item_id: str) -> ApiError:
    return not_found("item", item_id, "item_id")


async def create(request: web.Request) -> web.Response:
    engine, owner = await store_engine(request), request[OWNER]
    body = await request.read()
    req = decode_items_body(_create, body, "items") if body.strip() else c.CreateConversation()
    new = [m.turn(f"items[{i}]", opener(engine, owner)) for i, m in enumerate(req.items or ())]
    cid = mint_id("conv")

    def make(store: ConversationStore) -> Thread:
        t = store.create_thread(cid, owner=owner, metadata=req.metadata or None)
        if new:
            t = store.append(new, owner=owner, thread=cid).thread or t
        return t

    return json_response(conversation_object(await engine.offload(lambda: make(engine.store))))


async def get(request: web.Request) -> web.Response:
    engine, owner, cid = await store_engine(request), request[OWNER], _conversation_id(request)
    try:
        t = await engine.offload(lambda: engine.store.get_thread(cid, owner=owner))
    except NotFound:
        raise _not_found(cid) from None
    return json_response(conversation_object(t))


async def update(request: web.Request) -> web.Response:
    engine, owner, cid = await store_engine(request), request[OWNER], _conversation_id(request)
    req = decode_body(_update, await request.read())
    try:
        t = await engine.offload(
            lambda: engine.store.update_thread(cid, owner=owner, metadata=req.metadata)
        )
    except NotFound:
        raise _not_found(cid) from None
    return json_response(conversation_object(t))


async def delete(request: web.Request) -> web.Response:
    engine, owner, cid = await store_engine(request), request[OWNER], _conversation_id(request)
    try:
        await engine.delete_thread(owner, cid)
    except NotFound:
        raise _not_found(cid) from None
    return json_response(c.ConversationDeleted(id=cid))


async def list_conversations(request: web.Request) -> web.Response:
    engine, owner = await store_engine(request), request[OWNER]
    query = msgspec.convert(dict(request.query), c.ListQuery, strict=False)
    try:
        page = await engine.offload(
            lambda: engine.store.list_threads(owner=owner, limit=query.limit, after=query.after)
        )
    except InvalidInput as e:
        raise about(e, "after") from None
    return json_response(
        c.ConversationList(
            data=[conversation_object(t) for t in page.threads],
            has_more=page.next_cursor is not None,
            next_cursor=page.next_cursor,
        )
    )


def _page(
    store: ConversationStore, owner: str, cid: str, query: c.ItemsQuery
) -> tuple[list[Turn], bool]:
    """The items of one page in the order asked for, and whether more follow. The first page
    newest first reads only that page; a cursor is looked up on the conversation's path."""
    n = query.limit
    if query.after is None and query.order == "desc":
        store.get_thread(cid, owner=owner)  # NotFound for a missing or foreign conversation
        newest = store.history(owner=owner, thread=cid, limit=n + 1)
        return list(reversed(newest[-n:])), len(newest) > n
    turns = store.history(owner=owner, thread=cid)
    if query.order == "desc":
        turns.reverse()
    if query.after is not None:
        turns = turns[cursor_index(turns, query.after, "item") + 1 :]
    return turns[:n], len(turns) > n


def _item_list(data: list[c.AnyItem], more: bool) -> c.ItemList:
    return c.ItemList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=more,
    )


async def list_items(request: web.Request) -> web.Response:
    engine, owner, cid = await store_engine(request), request[OWNER], _conversation_id(request)
    query = msgspec.convert(dict(request.query), c.ItemsQuery, strict=False)
    try:
        turns, more = await engine.offload(lambda: _page(engine.store, owner, cid, query))
    except NotFound:
        raise _not_found(cid) from None
    except InvalidInput as e:
        raise about(e, "after") from None
    seal = sealer(engine, owner)
    return json_response(_item_list([item(t, seal) for t in turns], more))


async def add_items(request: web.Request) -> web.Response:
    engine, owner, cid = await store_engine(request), request[OWNER], _conversation_id(request)
    req = decode_items_body(_add, await request.read(), "items")
    new = [m.turn(f"items[{i}]", opener(engine, owner)) for i, m in enumerate(req.items)]

    # In the conversation's turn: after a reply generating on it is stored, never under it.
    try:
        appended = await engine.in_turn(
            owner, cid, lambda store: store.append(new, owner=owner, thread=cid)
        )
    except NotFound:
        raise _not_found(cid) from None
    # The answer is what this append wrote (its own ids), never a re-read that could hold
    # another request's items.
    items = [
        _item(turn_id, m["role"], m["content"], m.get("tool"), sealer(engine, owner))
        for turn_id, m in zip(appended.turn_ids, new, strict=True)
    ]
    return json_response(_item_list(items, False))


async def get_item(request: web.Request) -> web.Response:
    engine, owner, cid = await store_engine(request), request[OWNER], _conversation_id(request)
    item_id = request.match_info["item_id"]

    def find(store: ConversationStore) -> Turn:
        store.get_thread(cid, owner=owner)
        [turn] = store.history(owner=owner, turn=item_id, limit=1)
        return turn

    try:
        turn = await engine.offload(lambda: find(engine.store))
    except (NotFound, InvalidInput):
        raise _item_not_found(item_id) from None
    return json_response(item(turn, sealer(engine, owner)))


async def delete_item(request: web.Request) -> web.Response:
    """Takes an item out of the conversation and answers the conversation. The items after it
    come back under new ids (the conversation moves to a new path of the turn tree); responses
    that reached the item keep it."""
    engine, owner, cid = await store_engine(request), request[OWNER], _conversation_id(request)
    item_id = request.match_info["item_id"]
    try:
        t = await engine.remove_turn(owner, cid, item_id)
    except NotFound:
        raise _not_found(cid) from None
    if t is None:
        raise _item_not_found(item_id)
    return json_response(conversation_object(t))


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/conversations", create)
    app.router.add_get("/v1/conversations", list_conversations)
    app.router.add_get("/v1/conversations/{conversation_id}", get)
    app.router.add_post("/v1/conversations/{conversation_id}", update)
    app.router.add_delete("/v1/conversations/{conversation_id}", delete)
    app.router.add_get("/v1/conversations/{conversation_id}/items", list_items)
    app.router.add_post("/v1/conversations/{conversation_id}/items", add_items)
    app.router.add_get("/v1/conversations/{conversation_id}/items/{item_id}", get_item)
    app.router.add_delete("/v1/conversations/{conversation_id}/items/{item_id}", delete_item)
