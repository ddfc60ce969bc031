"""Compaction (`POST /v1/responses/compact`, `compaction` items): the summary stands in for
everything before it, stateless and stored, on both stores; an item opens only for the tenant
and the server key that sealed it, unchanged."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from server_support import SDK_KEYS, EchoScript, attach_tokenizer, scripted
from support import POSTGRES_URL, create_pg_schema, drop_pg_schema
from threadloom._core import open_compaction
from threadloom.compaction import store_key
from threadloom.server.app import init_app
from threadloom.server.config import ServerConfig

pytestmark = pytest.mark.asyncio

ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"Authorization": "Bearer key-bob"}


def make_app(store: str, **config: Any) -> web.Application:
    script = EchoScript()
    app = init_app(ServerConfig(store=store, api_keys=SDK_KEYS, **config), backend=scripted(script))
    attach_tokenizer(app, script)
    return app


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


async def post(
    client: Any, path: str, body: dict[str, Any], headers: dict[str, str] = ALICE
) -> Any:
    r = await client.post(path, json=body, headers=headers)
    return r.status, await r.json()


def answer(body: dict[str, Any]) -> str:
    return str(body["output"][-1]["content"][0]["text"])


async def test_compact_then_continue_stateless(aiohttp_client: Any, store_spec: str) -> None:
    client = await aiohttp_client(make_app(store_spec))
    history = [user("My name is Ada."), user("I live in Oslo.")]
    status, compacted = await post(client, "/v1/responses/compact", {"input": history})
    assert status == 200, compacted
    assert compacted["object"] == "response.compaction"
    *kept, item = compacted["output"]
    assert [m["content"][0]["text"] for m in kept] == ["My name is Ada.", "I live in Oslo."]
    assert item["type"] == "compaction" and item["encrypted_content"].startswith("tlc1.")
    assert "Oslo" not in item["encrypted_content"]
    assert compacted["usage"]["input_tokens"] > 0 and compacted["usage"]["output_tokens"] > 0
    # What the client keeps, then a new message: the model sees the summary and the new
    # message only (the echo script repeats every user message of its prompt).
    body = {"input": [*kept, item, user("Where do I live?")], "store": False}
    status, reply = await post(client, "/v1/responses", body)
    assert status == 200, reply
    assert answer(reply) == "[Where do I live?]"


async def test_compacted_stored_conversation_continues(
    aiohttp_client: Any, store_spec: str
) -> None:
    client = await aiohttp_client(make_app(store_spec))
    _, first = await post(client, "/v1/responses", {"input": "one"})
    _, second = await post(
        client, "/v1/responses", {"input": "two", "previous_response_id": first["id"]}
    )
    assert answer(second) == "[one | two]"
    status, compacted = await post(
        client, "/v1/responses/compact", {"previous_response_id": second["id"]}
    )
    assert status == 200, compacted
    item = compacted["output"][-1]
    _, third = await post(
        client,
        "/v1/responses",
        {"input": [item, user("three")], "previous_response_id": second["id"]},
    )
    assert answer(third) == "[three]"
    _, fourth = await post(
        client, "/v1/responses", {"input": "four", "previous_response_id": third["id"]}
    )
    assert answer(fourth) == "[three | four]"  # compacted once, continued after it
    r = await client.get(f"/v1/responses/{third['id']}/input_items?order=asc", headers=ALICE)
    listed = (await r.json())["data"]
    assert [i["type"] for i in listed] == ["compaction", "message"]
    # The listed item is sealed afresh for the caller and opens again.
    _, again = await post(
        client, "/v1/responses", {"input": [listed[0], user("five")], "store": False}
    )
    assert answer(again) == "[five]"


async def test_compaction_items_in_a_conversation(aiohttp_client: Any, store_spec: str) -> None:
    client = await aiohttp_client(make_app(store_spec))
    _, compacted = await post(client, "/v1/responses/compact", {"input": "Remember: blue."})
    item = compacted["output"][-1]
    _, conv = await post(client, "/v1/conversations", {"items": [user("old"), item]})
    r = await client.get(f"/v1/conversations/{conv['id']}/items?order=asc", headers=ALICE)
    listed = (await r.json())["data"]
    assert [i["type"] for i in listed] == ["message", "compaction"]
    _, reply = await post(client, "/v1/responses", {"input": "new", "conversation": conv["id"]})
    assert answer(reply) == "[new]"


def tamper(sealed: str) -> str:
    i = len(sealed) // 2
    return sealed[:i] + ("A" if sealed[i] != "A" else "B") + sealed[i + 1 :]


@pytest.mark.parametrize(
    ("who", "change"),
    [("bob", lambda s: s), ("alice", tamper), ("alice", lambda s: s[:-4]), ("alice", str.upper)],
)
async def test_an_item_opens_only_unchanged_for_its_tenant(
    aiohttp_client: Any, store_spec: str, who: str, change: Callable[[str], str]
) -> None:
    client = await aiohttp_client(make_app(store_spec))
    _, compacted = await post(client, "/v1/responses/compact", {"input": "secret plans"})
    item = {**compacted["output"][-1]}
    item["encrypted_content"] = change(item["encrypted_content"])
    headers = BOB if who == "bob" else ALICE
    _, conv = await post(client, "/v1/conversations", {}, headers)
    status, body = await post(
        client,
        "/v1/responses",
        {"input": [user("x"), item, user("y")], "conversation": conv["id"]},
        headers,
    )
    assert status == 400, body
    assert body["error"]["param"] == "input[1]"
    r = await client.get(f"/v1/conversations/{conv['id']}/items", headers=headers)
    assert (await r.json())["data"] == []  # nothing stored


async def test_another_server_key_refuses_and_the_store_keeps_its_key(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    store = str(tmp_path / "store")
    first = await aiohttp_client(make_app(store))
    _, compacted = await post(first, "/v1/responses/compact", {"input": "hello"})
    item = compacted["output"][-1]
    key_file = Path(store) / "compaction.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    # A restart reads the same key from the store directory: the item still opens.
    key = store_key(SimpleNamespace(path=store))
    assert open_compaction(key, "alice", item["encrypted_content"]).endswith("hello]")
    other = await aiohttp_client(make_app(str(tmp_path / "other"), compaction_key="ab" * 32))
    status, body = await post(other, "/v1/responses", {"input": [item, user("x")], "store": False})
    assert status == 400 and body["error"]["param"] == "input[0]", body


@pytest.mark.skipif(POSTGRES_URL is None, reason="THREADLOOM_TEST_POSTGRES_URL is not set")
async def test_servers_on_one_database_share_the_key(aiohttp_client: Any) -> None:
    assert POSTGRES_URL is not None
    schema, url = create_pg_schema(POSTGRES_URL)
    try:
        one = await aiohttp_client(make_app(url))
        two = await aiohttp_client(make_app(url))
        _, compacted = await post(one, "/v1/responses/compact", {"input": "shared"})
        body = {"input": [compacted["output"][-1], user("x")], "store": False}
        status, reply = await post(two, "/v1/responses", body)
        assert status == 200 and answer(reply) == "[x]", reply
    finally:
        drop_pg_schema(POSTGRES_URL, schema)


async def test_compact_refuses_bad_input(aiohttp_client: Any, store_spec: str) -> None:
    client = await aiohttp_client(make_app(store_spec))
    status, body = await post(client, "/v1/responses/compact", {"instructions": "be brief"})
    assert status == 400 and body["error"]["param"] == "input", body
    status, body = await post(
        client, "/v1/responses/compact", {"previous_response_id": "resp_" + "0" * 26}
    )
    assert status == 404 and body["error"]["param"] == "previous_response_id", body
    status, body = await post(client, "/v1/responses/compact", {"input": "x", "model": "nope"})
    assert status == 404, body
    status, body = await post(
        client,
        "/v1/responses/compact",
        {"input": [{"type": "compaction", "encrypted_content": "tlc1.AAAA"}]},
    )
    assert status == 400 and body["error"]["param"] == "input[0]", body
