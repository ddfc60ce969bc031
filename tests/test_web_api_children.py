"""A branch made outside the web page (the Responses API's `previous_response_id` of an older
response) is in the thread's tree: the tree reads the store's children index, not only the
branches the page recorded. On both stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("aiohttp")
from aiohttp import web
from aiohttp.test_utils import TestClient
from server_support import scripted_app

pytestmark = pytest.mark.asyncio

ALICE = {"X-API-Key": "key-alice"}
BOB = {"X-API-Key": "key-bob"}
Client = TestClient[web.Request, web.Application]


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, tmp_path: Path, store_spec: str) -> Client:
    keys = {"key-alice": "alice", "key-bob": "bob"}
    app = scripted_app(tmp_path, api_keys=keys, store=store_spec)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


async def post(client: Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(path, json=body, headers=ALICE)
    data = await r.json()
    assert r.status == 200, data
    return data  # type: ignore[no-any-return]


async def get(client: Client, path: str, headers: Any = ALICE) -> dict[str, Any]:
    r = await client.get(path, headers=headers)
    data = await r.json()
    assert r.status == 200, data
    return data  # type: ignore[no-any-return]


async def say(client: Client, text: str) -> dict[str, Any]:
    body = {"input": [{"role": "user", "content": text}], "after": "head"}
    return await post(client, "/v1/threads/t1/continue", body)


async def test_a_responses_api_branch_of_an_older_response_is_in_the_tree(
    client: Client,
) -> None:
    await post(client, "/v1/threads", {"id": "t1"})
    first = await say(client, "one")
    second = await say(client, "two")
    off = await post(
        client,
        "/v1/responses",
        {"model": "default", "input": "other", "previous_response_id": first["response_id"]},
    )
    tree = await get(client, "/v1/threads/t1/tree")
    by_id = {n["id"]: n for n in tree["nodes"]}
    # The API branch hangs off the first reply, beside the thread's own continuation.
    kids = by_id[first["turn_id"]]["children"]
    assert [by_id[k]["content"] for k in kids] == ["two", "other"]
    assert [by_id[k]["on_thread"] for k in kids] == [True, False]
    assert tree["branch_points"] == [first["turn_id"]] and tree["head"] == second["turn_id"]
    reply = by_id[by_id[kids[1]]["children"][0]]
    assert reply["content"] == "[one | other]" and not reply["children"]
    assert off["previous_response_id"] == first["response_id"]
    r = await client.get(f"/v1/threads/t1/turns/{first['turn_id']}/children", headers=ALICE)
    assert [c["content"] for c in (await r.json())["data"]] == ["two", "other"]
    # Continuations are the owner's: another tenant's thread of the same id has none of them.
    await client.post("/v1/threads", json={"id": "t1"}, headers=BOB)
    assert (await get(client, "/v1/threads/t1/tree", headers=BOB))["nodes"] == []
