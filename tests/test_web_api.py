"""The JSON endpoints behind the web page (`routes/tree.py`) and the page's own routes, on the
scripted backend (it echoes every user message it saw, so a reply shows the history the model
got): a thread's tree, branches from any turn and from the root, the children of a turn,
streamed replies, a stopped reply stored as incomplete, states, and tenancy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("aiohttp")
from aiohttp import web
from aiohttp.test_utils import TestClient
from server_support import parse_sse, scripted_app

pytestmark = pytest.mark.asyncio

KEYS = {"key-alice": "alice", "key-bob": "bob"}
ALICE = {"X-API-Key": "key-alice"}
BOB = {"Authorization": "Bearer key-bob"}

Client = TestClient[web.Request, web.Application]
LONG = {"role": "user", "content": "long:500"}


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Client:
    app = scripted_app(tmp_path, api_keys=KEYS)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


async def say(
    client: Client, tid: str, text: str, after: str = "head", status: int = 200, **body: Any
) -> dict[str, Any]:
    body = {"input": [{"role": "user", "content": text}], "after": after, **body}
    r = await client.post(f"/v1/threads/{tid}/continue", json=body, headers=ALICE)
    data = await r.json()
    assert r.status == status, data
    return data  # type: ignore[no-any-return]


async def tree(client: Client, tid: str, headers: Any = ALICE) -> dict[str, Any]:
    r = await client.get(f"/v1/threads/{tid}/tree", headers=headers)
    data = await r.json()
    assert r.status == 200, data
    return data  # type: ignore[no-any-return]


async def new_thread(client: Client, tid: str = "t1") -> None:
    r = await client.post("/v1/threads", json={"id": tid, "metadata": {"t": 1}}, headers=ALICE)
    assert r.status == 200, await r.text()


async def test_replies_into_the_thread_then_a_branch_from_the_first_turn(client: Client) -> None:
    await new_thread(client)
    first = await say(client, "t1", "one")
    assert first["text"] == "[one]" and first["thread_id"] == "t1" and not first["branch"]
    second = await say(client, "t1", "two")
    assert second["text"] == "[one | two]"
    t = await tree(client, "t1")
    assert [n["content"] for n in t["nodes"]] == ["one", "[one]", "two", "[one | two]"]
    assert all(n["on_thread"] for n in t["nodes"]) and t["branch_points"] == []
    assert t["head"] == second["turn_id"] and all(n["tokens"] > 0 for n in t["nodes"])

    answer = t["nodes"][1]["id"]
    branch = await say(client, "t1", "other", after=answer)
    # The model saw the history up to the branch point only.
    assert branch["text"] == "[one | other]" and branch["branch"] and branch["thread_id"] is None
    t = await tree(client, "t1")
    assert t["branch_points"] == [answer] and t["head"] == second["turn_id"]
    by_id = {n["id"]: n for n in t["nodes"]}
    kids = by_id[answer]["children"]
    assert [by_id[k]["content"] for k in kids] == ["two", "other"]
    assert [by_id[k]["on_thread"] for k in kids] == [True, False]
    assert by_id[branch["turn_id"]]["response_id"] == branch["response_id"]

    r = await client.get(f"/v1/threads/t1/turns/{answer}/children", headers=ALICE)
    children = await r.json()
    assert r.status == 200 and [c["content"] for c in children["data"]] == ["two", "other"]

    # Continuing the branch's newest turn grows that branch (one entry, not two).
    more = await say(client, "t1", "more", after=branch["turn_id"])
    assert more["text"] == "[one | other | more]"
    t = await tree(client, "t1")
    assert len(t["nodes"]) == 8 and t["branch_points"] == [answer]
    leaves = [n for n in t["nodes"] if not n["children"]]
    assert [n["content"] for n in leaves] == ["[one | two]", "[one | other | more]"]
    # The thread itself did not move.
    r = await client.get("/v1/threads/t1/messages", headers=ALICE)
    assert [m["texts"][0]["text"] for m in (await r.json())["data"]][-1] == "[one | two]"


async def test_a_new_first_message_is_a_second_root(client: Client) -> None:
    await new_thread(client)
    await say(client, "t1", "one")
    edited = await say(client, "t1", "uno", after="root")
    assert edited["text"] == "[uno]" and edited["after"] is None and edited["branch"]
    t = await tree(client, "t1")
    assert len(t["roots"]) == 2 and t["branch_points"] == ["root"]
    assert [t["nodes"][0]["content"], t["nodes"][2]["content"]] == ["one", "uno"]


async def test_streamed_reply(client: Client) -> None:
    await new_thread(client)
    body = {"input": [{"role": "user", "content": "hi"}], "stream": True}
    r = await client.post("/v1/threads/t1/continue", json=body, headers=ALICE)
    assert r.status == 200 and r.content_type == "text/event-stream"
    frames = parse_sse(await r.text())
    names = [name for name, _ in frames]
    assert names[0] == "reply.started" and names[-1] == "reply.done"
    assert set(names[1:-1]) == {"reply.delta"}
    assert "".join(d["text"] for n, d in frames if n == "reply.delta") == "[hi]"
    done = frames[-1][1]["reply"]
    assert done["status"] == "completed" and done["text"] == "[hi]"
    assert done["response_id"] == frames[0][1]["response_id"]
    assert done["messages_dropped"] == 0 and done["usage"]["completion_tokens"] > 0


async def test_a_stopped_branch_is_stored_incomplete_and_stays_in_the_tree(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await aiohttp_client(scripted_app(tmp_path, api_keys=KEYS, delay_s=0.02))
    await new_thread(client)
    await say(client, "t1", "one")
    question = (await tree(client, "t1"))["nodes"][0]["id"]
    body = {
        "input": [{"role": "assistant", "content": "a rewritten answer"}, LONG],
        "after": question,
        "stream": True,
    }
    r = await client.post("/v1/threads/t1/continue", json=body, headers=ALICE)
    line = await r.content.readline()
    assert line.startswith(b"event: reply.started")
    data = await r.content.readline()
    rid = data.split(b'"response_id":"')[1].split(b'"')[0].decode()
    await r.content.readline()
    await r.content.readline()  # a first delta
    r.close()  # the stop button
    for _ in range(200):
        got = await client.get(f"/v1/responses/{rid}", headers=ALICE)
        status = (await got.json())["status"]
        if status != "in_progress":
            break
        await asyncio.sleep(0.05)
    assert status == "incomplete"
    t = await tree(client, "t1")
    assert any(n["response_id"] == rid for n in t["nodes"])
    assert t["branch_points"] == [question] and len(t["nodes"]) == 5


async def test_errors_name_their_field(client: Client) -> None:
    await new_thread(client)
    await say(client, "t1", "one")
    err = await say(client, "t1", "x", after="msg_00000000000000000000000000", status=404)
    assert err["error"]["param"] == "after"
    err = await say(client, "missing", "x", status=404)
    assert err["error"]["param"] == "thread_id"
    r = await client.get("/v1/threads/t1/turns/msg_nope/children", headers=ALICE)
    assert r.status == 404 and (await r.json())["error"]["param"] == "turn_id"
    r = await client.patch("/v1/threads/t1", json={"state": "locked"}, headers=ALICE)
    assert r.status == 200
    err = await say(client, "t1", "x", status=409)
    assert err["error"]["code"] == "conflict"
    first = (await tree(client, "t1"))["nodes"][0]["id"]
    await say(client, "t1", "x", after=first, status=409)
    r = await client.post("/v1/threads/t1/continue", json={"input": []}, headers=ALICE)
    assert r.status == 400


async def test_another_tenant_sees_nothing(client: Client) -> None:
    await new_thread(client)
    first = await say(client, "t1", "one")
    turn = first["turn_id"]
    for path in ("/v1/threads/t1/tree", f"/v1/threads/t1/turns/{turn}/children"):
        r = await client.get(path, headers=BOB)
        assert r.status == 404, path
    body = {"input": [{"role": "user", "content": "x"}], "after": turn}
    r = await client.post("/v1/threads/t1/continue", json=body, headers=BOB)
    assert r.status == 404
    # Bob's own thread of the same name cannot reach Alice's turn either.
    r = await client.post("/v1/threads", json={"id": "t1"}, headers=BOB)
    assert r.status == 200
    r = await client.post("/v1/threads/t1/continue", json=body, headers=BOB)
    assert r.status == 404 and (await r.json())["error"]["param"] == "after"
    r = await client.get("/v1/threads/t1/tree", headers=BOB)
    assert (await r.json())["nodes"] == []
    r = await client.get("/v1/threads/t1/tree")
    assert r.status == 401


async def test_a_thread_made_again_under_its_id_has_no_old_branches(client: Client) -> None:
    await new_thread(client)
    await say(client, "t1", "one")
    await say(client, "t1", "two", after="root")
    assert (await tree(client, "t1"))["branch_points"] == ["root"]
    assert len((await tree(client, "t1"))["roots"]) == 2
    # The branches are recorded by the store, not in a thread of their own.
    r = await client.get("/v1/threads?visible_in_ui=false", headers=ALICE)
    assert (await r.json())["data"] == []
    r = await client.delete("/v1/threads/t1", headers=ALICE)
    assert r.status == 200
    await new_thread(client)
    assert (await tree(client, "t1"))["nodes"] == []


async def test_the_page_and_its_files_are_served_without_a_key(client: Client) -> None:
    r = await client.get("/")
    assert r.status == 200 and r.content_type == "text/html"
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    html = await r.text()
    assert "/ui/app.js" in html
    for name in ("app.js", "app.css", "markdown.js"):
        r = await client.get(f"/ui/{name}")
        assert r.status == 200, name
    for bad in ("/ui/nope.js", "/ui/..%2Fapp.py", "/ui/app.py"):
        r = await client.get(bad)
        assert r.status == 404, bad
