"""The Freddy-style threads dialect on a real loopback server with the scripted backend (it
echoes every user message it saw, so a reply shows the history the model got): model responses
in threads and chained by `previousResponseId`, the threads API, states, visibility, limits,
tenancy, the one store behind every dialect, and one end-to-end run with the real model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("aiohttp")
from aiohttp import web
from aiohttp.test_utils import TestClient
from server_support import config, scripted_app
from threadloom import Retention, Store
from threadloom.server.app import init_app
from threadloom.server.keys import ENGINE

pytestmark = pytest.mark.asyncio

KEYS = {"key-alice": "alice", "key-bob": "bob"}
ALICE = {"X-API-Key": "key-alice"}
BOB = {"Authorization": "Bearer key-bob"}
BIG = "x" * 17_000  # over the 16 KB metadata limit once encoded

Client = TestClient[web.Request, web.Application]


make_app = scripted_app


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Client:
    return await aiohttp_client(make_app(tmp_path, api_keys=KEYS))  # type: ignore[no-any-return]


def user(text: str, role: str = "user") -> dict[str, Any]:
    return {"role": role, "texts": [{"text": text}]}


async def respond(
    client: Client, *texts: str, status: int = 200, headers: Any = ALICE, **body: Any
) -> dict[str, Any]:
    """POSTs a model response with one user input per text."""
    body.setdefault("inputs", [user(t) for t in texts])
    r = await client.post("/v1/model/response", json=body, headers=headers)
    data = await r.json()
    assert r.status == status, data
    return data  # type: ignore[no-any-return]


def reply(response: dict[str, Any]) -> str:
    [message] = response["output"]
    assert message["role"] == "assistant"
    [part] = message["texts"]
    return part["text"]  # type: ignore[no-any-return]


async def call(
    client: Client, method: str, path: str, status: int = 200, headers: Any = ALICE, **kw: Any
) -> Any:
    r = await client.request(method, path, headers=headers, **kw)
    data = await r.json()
    assert r.status == status, data
    return data


async def expect_error(
    client: Client,
    method: str,
    path: str,
    status: int,
    param: str | None,
    headers: Any = ALICE,
    **kw: Any,
) -> dict[str, Any]:
    r = await client.request(method, path, headers=headers, **kw)
    assert r.status == status, await r.text()
    assert r.content_type == "application/json"
    error = (await r.json())["error"]
    assert error["message"] and error["param"] == param, error
    return error  # type: ignore[no-any-return]


async def messages(client: Client, tid: str, headers: Any = ALICE) -> list[tuple[str, str]]:
    data = await call(client, "GET", f"/v1/threads/{tid}/messages", headers=headers)
    assert data["object"] == "list" and data["threadId"] == tid
    for m in data["data"]:
        assert m["id"].startswith("msg_") and m["object"] == "thread.message"
    return [(m["role"], "".join(t["text"] for t in m["texts"])) for m in data["data"]]


def counts(client: Client) -> tuple[int, int, int]:
    stats = client.app[ENGINE].store.stats()
    return stats["threads"], stats["responses"], stats["turns"]


async def list_ids(client: Client, query: str = "", headers: Any = ALICE) -> list[str]:
    data = await call(client, "GET", f"/v1/threads{query}", headers=headers)
    return [t["id"] for t in data["data"]]


# ---- model responses in threads --------------------------------------------------------------


async def test_string_thread_is_created_then_continued(client: Client) -> None:
    first = await respond(client, "What is Python?", thread="thread_chat_001", model="default")
    assert first["object"] == "model.response" and first["status"] == "completed"
    assert first["id"].startswith("resp_") and first["threadId"] == "thread_chat_001"
    assert first["previousResponseId"] is None and first["error"] is None
    assert reply(first) == "[What is Python?]"
    usage = first["usage"]
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"] > 0

    second = await respond(client, "Show an example", thread="thread_chat_001")
    assert reply(second) == "[What is Python? | Show an example]"
    assert second["usage"]["cachedTokens"] > 0  # the slot kept the thread's prefix
    thread = await call(client, "GET", "/v1/threads/thread_chat_001")
    assert thread["object"] == "thread" and thread["state"] == "open"
    assert thread["visibleInUi"] is True and thread["messageCount"] == 4
    assert thread["metadata"] == {} and thread["lastActivityAt"] >= thread["createdAt"] > 0


async def test_thread_object_creates_with_metadata_once(client: Client) -> None:
    meta = {"userId": "user_123", "sessionId": "sess_456", "rating": 5, "tags": ["a"]}
    ref = {"id": "support_user123", "metadata": meta}
    await respond(client, "Hello, I need help", thread=ref)
    # The object form again (as a support bot sends on every message) keeps the first metadata.
    again = await respond(client, "Still there?", thread={**ref, "metadata": {"other": 1}})
    assert reply(again) == "[Hello, I need help | Still there?]"
    thread = await call(client, "GET", "/v1/threads/support_user123")
    assert thread["metadata"] == meta and thread["messageCount"] == 4
    generated = await respond(client, "hi", thread={"metadata": {"k": "v"}})
    assert generated["threadId"].startswith("thread_")
    got = await call(client, "GET", f"/v1/threads/{generated['threadId']}")
    assert got["metadata"] == {"k": "v"}


async def test_no_thread_gets_a_generated_visible_one(client: Client) -> None:
    r = await respond(client, "Hello", organization_id="org_abc123", store=True)
    tid = r["threadId"]
    assert tid.startswith("thread_") and tid in await list_ids(client)
    assert await messages(client, tid) == [("user", "Hello"), ("assistant", "[Hello]")]


async def test_system_inputs_and_sent_back_output_are_stored(client: Client) -> None:
    first = await respond(
        client,
        inputs=[user("You help with onboarding.", "system"), user("step one")],
        thread="onboarding_u1",
    )
    # The output is shaped like an input: a client keeping its own history can send it back.
    inputs = [user("recap"), first["output"][0], user("step two")]
    second = await respond(client, inputs=inputs, thread="onboarding_u1")
    assert reply(second) == "[step one | recap | step two]"
    assert await messages(client, "onboarding_u1") == [
        ("system", "You help with onboarding."),
        ("user", "step one"),
        ("assistant", "[step one]"),
        ("user", "recap"),
        ("assistant", "[step one]"),
        ("user", "step two"),
        ("assistant", "[step one | recap | step two]"),
    ]


async def test_several_texts_make_one_message(client: Client) -> None:
    body = [{"role": "user", "texts": [{"text": "line one"}, {"text": "line two"}]}]
    r = await respond(client, inputs=body, thread="multi")
    assert await messages(client, "multi") == [
        ("user", "line one\nline two"),
        ("assistant", reply(r)),
    ]


# ---- previousResponseId ----------------------------------------------------------------------


async def test_previous_response_id_continues_and_branches(client: Client) -> None:
    root = await respond(client, "Hello")
    tid = root["threadId"]
    # Continuing the newest response of a thread continues that thread.
    follow = await respond(client, "Tell me more", previousResponseId=root["id"])
    assert reply(follow) == "[Hello | Tell me more]"
    assert follow["previousResponseId"] == root["id"] and follow["threadId"] == tid
    # An older response is no longer the thread's newest: continuing it branches off.
    branch = await respond(client, "Other way", previousResponseId=root["id"])
    assert reply(branch) == "[Hello | Other way]" and branch["threadId"] is None
    deeper = await respond(client, "Deeper", previousResponseId=branch["id"])
    assert reply(deeper) == "[Hello | Other way | Deeper]" and deeper["threadId"] is None
    assert await messages(client, tid) == [
        ("user", "Hello"),
        ("assistant", "[Hello]"),
        ("user", "Tell me more"),
        ("assistant", "[Hello | Tell me more]"),
    ]
    # A thread-less chain continues past the branch as well.
    on = await respond(client, "On", previousResponseId=deeper["id"])
    assert reply(on) == "[Hello | Other way | Deeper | On]"


async def test_previous_response_id_refusals(client: Client) -> None:
    root = await respond(client, "Hello", thread="t1")
    before = counts(client)
    both = {"inputs": [user("x")], "thread": "t1", "previousResponseId": root["id"]}
    await expect_error(client, "POST", "/v1/model/response", 400, "previousResponseId", json=both)
    locking = {"inputs": [user("x")], "previousResponseId": root["id"], "threadState": "locked"}
    await expect_error(client, "POST", "/v1/model/response", 400, "threadState", json=locking)
    missing = {"inputs": [user("x")], "previousResponseId": "resp_" + "0" * 26}
    await expect_error(
        client, "POST", "/v1/model/response", 404, "previousResponseId", json=missing
    )
    theirs = {"inputs": [user("x")], "previousResponseId": root["id"]}
    await expect_error(
        client, "POST", "/v1/model/response", 404, "previousResponseId", headers=BOB, json=theirs
    )
    assert counts(client) == before


async def test_previous_response_id_has_a_24_hour_window(client: Client, tmp_path: Path) -> None:
    engine = client.app[ENGINE]
    # The same server on a store whose window is 1 ms, so a response falls out of it at once.
    engine.store = Store(tmp_path / "windowed", retention=Retention(anchor_window_s=0.001))
    root = await respond(client, "Hello")
    await asyncio.sleep(0.01)
    before = counts(client)
    body = {"inputs": [user("late")], "previousResponseId": root["id"]}
    error = await expect_error(
        client, "POST", "/v1/model/response", 404, "previousResponseId", json=body
    )
    assert "window" in error["message"]
    assert counts(client) == before
    # Continuing by thread has no window.
    later = await respond(client, "by thread", thread=root["threadId"])
    assert reply(later) == "[Hello | by thread]"


# ---- visibility ------------------------------------------------------------------------------


async def test_store_false_makes_a_hidden_thread(client: Client) -> None:
    await respond(client, "visible", thread="shown")
    hidden = await respond(client, "Generate a title", store=False)
    tid = hidden["threadId"]
    named = await respond(client, "also hidden", store=False, thread="named_hidden")
    assert named["threadId"] == "named_hidden"
    assert await list_ids(client) == ["shown"]
    assert set(await list_ids(client, "?visible_in_ui=false")) == {tid, "named_hidden"}
    # Hidden threads work like any other by id.
    thread = await call(client, "GET", f"/v1/threads/{tid}")
    assert thread["visibleInUi"] is False
    again = await respond(client, "and a subtitle", thread=tid)
    assert reply(again) == "[Generate a title | and a subtitle]"
    await call(client, "PATCH", f"/v1/threads/{tid}", json={"metadata": {"k": 1}})
    assert await list_ids(client) == ["shown"]


# ---- threads API -----------------------------------------------------------------------------


async def test_create_get_and_paginate_threads(client: Client) -> None:
    made = await call(client, "POST", "/v1/threads", json={"metadata": {"purpose": "support"}})
    assert made["id"].startswith("thread_") and made["messageCount"] == 0
    assert made["metadata"] == {"purpose": "support"} and made["state"] == "open"
    empty = await call(client, "POST", "/v1/threads")  # no body at all
    ids = {made["id"], empty["id"]}
    for i in range(5):
        t = await call(client, "POST", "/v1/threads", json={"id": f"user_{i}:session.{i}-a"})
        ids.add(t["id"])
    assert await call(client, "GET", f"/v1/threads/{made['id']}") == made

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await call(client, "GET", "/v1/threads" + query)
        assert page["object"] == "list" and len(page["data"]) <= 3
        seen += [t["id"] for t in page["data"]]
        pages += 1
        assert page["hasMore"] is (page["nextCursor"] is not None)
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 7 and set(seen) == ids
    assert await list_ids(client, "?limit=100") == seen  # newest first, the same order

    await expect_error(client, "GET", "/v1/threads?limit=0", 400, "limit")
    await expect_error(client, "GET", "/v1/threads?limit=101", 400, "limit")
    await expect_error(client, "GET", "/v1/threads?cursor=garbage", 400, "cursor")
    await expect_error(client, "GET", "/v1/threads?visible_in_ui=maybe", 400, "visible_in_ui")
    await expect_error(client, "GET", "/v1/threads?order=asc", 400, "order")


async def test_create_thread_refusals(client: Client) -> None:
    await call(client, "POST", "/v1/threads", json={"id": "taken"})
    before = counts(client)
    cases: list[tuple[Any, int, str | None]] = [
        ({"id": "taken"}, 409, "id"),
        ({"id": "a b"}, 400, "id"),
        ({"id": "x" * 129}, 400, "id"),
        ({"id": ""}, 400, "id"),
        ({"id": "trailing\n"}, 400, "id"),
        ({"id": 5}, 400, "id"),
        ({"metadata": [1]}, 400, "metadata"),
        ({"metadata": {"k": BIG}}, 400, "metadata"),
        ({"metadata": {"k": 1e400}}, 400, None),
        ({"name": "x"}, 400, "name"),
        ([], 400, None),
    ]
    for body, status, param in cases:
        error = await expect_error(client, "POST", "/v1/threads", status, param, json=body)
        if body == {"metadata": {"k": BIG}}:
            assert "16384" in error["message"]
    await expect_error(client, "POST", "/v1/threads", 400, None, data=b"{not json")
    assert counts(client) == before


async def test_patch_metadata_and_state(client: Client) -> None:
    await respond(client, "Hello", thread="ticket")
    more = {"inputs": [user("more")], "thread": "ticket"}
    t = await call(client, "PATCH", "/v1/threads/ticket", json={"metadata": {"status": "resolved"}})
    assert t["metadata"] == {"status": "resolved"} and t["state"] == "open"
    t = await call(client, "PATCH", "/v1/threads/ticket", json={"metadata": {"rating": 5}})
    assert t["metadata"] == {"rating": 5}  # replaced, not merged
    t = await call(client, "PATCH", "/v1/threads/ticket", json={})
    assert t["metadata"] == {"rating": 5} and t["messageCount"] == 2

    t = await call(client, "PATCH", "/v1/threads/ticket", json={"state": "locked"})
    assert t["state"] == "locked"
    before = counts(client)
    error = await expect_error(client, "POST", "/v1/model/response", 409, "thread", json=more)
    assert "locked" in error["message"]
    assert counts(client) == before
    assert await messages(client, "ticket") == [("user", "Hello"), ("assistant", "[Hello]")]

    await call(client, "PATCH", "/v1/threads/ticket", json={"state": "open"})  # unlock
    assert reply(await respond(client, "unlocked", thread="ticket")) == "[Hello | unlocked]"

    t = await call(client, "PATCH", "/v1/threads/ticket", json={"state": "archived"})
    assert t["state"] == "archived"
    before = counts(client)
    error = await expect_error(client, "POST", "/v1/model/response", 409, "thread", json=more)
    assert "archived" in error["message"]
    for state in ("open", "locked", "archived"):
        await expect_error(
            client, "PATCH", "/v1/threads/ticket", 409, "state", json={"state": state}
        )
    await expect_error(
        client, "PATCH", "/v1/threads/ticket", 409, "metadata", json={"metadata": {}}
    )
    assert counts(client) == before
    got = await call(client, "GET", "/v1/threads/ticket")
    assert got["state"] == "archived" and got["metadata"] == {"rating": 5}
    assert len(await messages(client, "ticket")) == 4  # still readable


async def test_patch_refusals_change_nothing(client: Client) -> None:
    await call(client, "POST", "/v1/threads", json={"id": "p", "metadata": {"keep": True}})
    cases: list[tuple[Any, str | None]] = [
        ({"metadata": {"k": BIG}}, "metadata"),
        ({"metadata": {"k": BIG}, "state": "locked"}, "metadata"),
        ({"state": "closed"}, "state"),
        ({"state": None, "visible": False}, "visible"),
        ({"metadata": "text"}, "metadata"),
        ("[]", None),
    ]
    for body, param in cases:
        await expect_error(client, "PATCH", "/v1/threads/p", 400, param, json=body)
    got = await call(client, "GET", "/v1/threads/p")
    assert got["metadata"] == {"keep": True} and got["state"] == "open"


async def test_thread_state_in_a_model_response(client: Client) -> None:
    last = await respond(client, "final words", thread="closing", threadState="locked")
    assert reply(last) == "[final words]"
    thread = await call(client, "GET", "/v1/threads/closing")
    assert thread["state"] == "locked" and thread["messageCount"] == 2
    body = {"inputs": [user("more")], "thread": "closing"}
    await expect_error(client, "POST", "/v1/model/response", 409, "thread", json=body)
    await respond(client, "archive me", thread="done", threadState="archived")
    assert (await call(client, "GET", "/v1/threads/done"))["state"] == "archived"
    await respond(client, "stay", thread="stays", threadState="open")
    assert (await call(client, "GET", "/v1/threads/stays"))["state"] == "open"


async def test_delete_then_not_found_everywhere(client: Client) -> None:
    await respond(client, "secret", thread="gone")
    deleted = await call(client, "DELETE", "/v1/threads/gone")
    assert deleted == {"id": "gone", "object": "thread.deleted", "deleted": True}
    for method, path, kw in [
        ("GET", "/v1/threads/gone", {}),
        ("GET", "/v1/threads/gone/messages", {}),
        ("PATCH", "/v1/threads/gone", {"json": {"state": "locked"}}),
        ("DELETE", "/v1/threads/gone", {}),
    ]:
        await expect_error(client, method, path, 404, "threadId", **kw)
    assert "gone" not in await list_ids(client)
    # Continuing the deleted conversation is a 404 (the seed's clients then start a new one),
    # not a fresh thread that silently lost its history; nothing is stored.
    before = client.app[ENGINE].store.stats()
    missing = await respond(client, "again", thread="gone", status=404)
    assert missing["error"]["param"] == "thread" and "deleted" in missing["error"]["message"]
    assert client.app[ENGINE].store.stats()["turns"] == before["turns"]
    # An explicit create reuses the id: a new thread under it starts with no history.
    await call(client, "POST", "/v1/threads", json={"id": "gone"})
    fresh = await respond(client, "new start", thread="gone")
    assert reply(fresh) == "[new start]"


async def test_expired_threads_are_not_found(client: Client, tmp_path: Path) -> None:
    engine = client.app[ENGINE]
    engine.store = Store(tmp_path / "expiring", retention=Retention(thread_inactivity_s=0.001))
    await call(client, "POST", "/v1/threads", json={"id": "brief"})
    await asyncio.sleep(0.01)
    await expect_error(client, "GET", "/v1/threads/brief", 404, "threadId")
    await expect_error(client, "GET", "/v1/threads/brief/messages", 404, "threadId")
    assert await list_ids(client) == []


async def test_bad_path_ids(client: Client) -> None:
    for tid in ("a%20b", "x" * 129, "a%0A", "%C3%A4"):
        for method in ("GET", "PATCH", "DELETE"):
            await expect_error(client, method, f"/v1/threads/{tid}", 400, "threadId", json={})
        await expect_error(client, "GET", f"/v1/threads/{tid}/messages", 400, "threadId")


# ---- validation ------------------------------------------------------------------------------


async def test_malformed_model_requests_store_nothing(client: Client) -> None:
    await respond(client, "seed", thread="seed")
    before = counts(client)
    ok = [user("hi")]
    cases: list[tuple[Any, int, str | None]] = [
        ({}, 400, "inputs"),
        ({"inputs": []}, 400, "inputs"),
        ({"inputs": "hi"}, 400, "inputs"),
        ({"inputs": [{"role": "bot", "texts": [{"text": "x"}]}]}, 400, "inputs[0].role"),
        ({"inputs": [{"role": "user", "texts": []}]}, 400, "inputs[0].texts"),
        ({"inputs": [{"role": "user", "texts": [{"text": 1}]}]}, 400, "inputs[0].texts[0].text"),
        ({"inputs": [{"role": "user", "content": "x"}]}, 400, "inputs[0].content"),
        ({"inputs": ok, "thread": "a b"}, 400, "thread"),
        ({"inputs": ok, "thread": "new\n"}, 400, "thread"),
        ({"inputs": ok, "thread": 7}, 400, "thread"),
        ({"inputs": ok, "thread": {"id": "a/b"}}, 400, "thread.id"),
        ({"inputs": ok, "thread": {"id": "fresh", "extra": 1}}, 400, "thread.extra"),
        ({"inputs": ok, "thread": {"id": "fresh", "metadata": [1]}}, 400, "thread.metadata"),
        ({"inputs": ok, "thread": {"id": "fresh", "metadata": {"k": BIG}}}, 400, "thread.metadata"),
        ({"inputs": ok, "threadState": "closed"}, 400, "threadState"),
        ({"inputs": ok, "thread_state": "locked"}, 400, "thread_state"),
        ({"inputs": ok, "store": "no"}, 400, "store"),
        ({"inputs": ok, "previousResponseId": "resp_bad"}, 400, "previousResponseId"),
        ({"inputs": ok, "maxOutputTokens": 0}, 400, "maxOutputTokens"),
        ({"inputs": ok, "maxOutputTokens": 10**6}, 400, "maxOutputTokens"),
        ({"inputs": ok, "temperature": 3}, 400, "temperature"),
        ({"inputs": ok, "model": "gpt-4.1"}, 404, "model"),
        ({"inputs": ok, "stream": True}, 400, "stream"),
        ([ok], 400, None),
    ]
    for body, status, param in cases:
        await expect_error(client, "POST", "/v1/model/response", status, param, json=body)
    nested = b"[" * 100_000 + b"]" * 100_000
    deep = b'{"thread": {"metadata": {"a": ' + nested + b'}}, "inputs": []}'
    await expect_error(client, "POST", "/v1/model/response", 400, None, data=deep)
    await expect_error(client, "POST", "/v1/model/response", 400, None, data=b"not json")
    assert counts(client) == before
    assert await list_ids(client) == ["seed"]


async def test_a_prompt_over_the_context_takes_back_its_new_thread(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await aiohttp_client(make_app(tmp_path, context_length=256))
    before = counts(client)
    body = {"inputs": [user("word " * 400)], "thread": "too_long", "maxOutputTokens": 16}
    await expect_error(client, "POST", "/v1/model/response", 400, "inputs", headers={}, json=body)
    body["thread"] = {"id": "too_long", "metadata": {"k": 1}}
    await expect_error(client, "POST", "/v1/model/response", 400, "inputs", headers={}, json=body)
    del body["thread"]
    await expect_error(client, "POST", "/v1/model/response", 400, "inputs", headers={}, json=body)
    assert counts(client) == before
    await expect_error(client, "GET", "/v1/threads/too_long", 404, "threadId", headers={})


# ---- tenancy and the shared store ------------------------------------------------------------


async def test_tenants_never_see_each_others_threads(client: Client) -> None:
    await respond(client, "alice's secret", thread="shared_name", headers=ALICE)
    hidden = await respond(client, "alice hidden", store=False, headers=ALICE)
    for tid in ("shared_name", hidden["threadId"]):
        for method, path, kw in [
            ("GET", f"/v1/threads/{tid}", {}),
            ("GET", f"/v1/threads/{tid}/messages", {}),
            ("PATCH", f"/v1/threads/{tid}", {"json": {"state": "archived"}}),
            ("DELETE", f"/v1/threads/{tid}", {}),
        ]:
            await expect_error(client, method, path, 404, "threadId", headers=BOB, **kw)
    assert await list_ids(client, headers=BOB) == []
    assert await list_ids(client, "?visible_in_ui=false", headers=BOB) == []
    # Thread ids are per tenant: Bob's "shared_name" is his own, without Alice's history.
    bobs = await respond(client, "bob here", thread="shared_name", headers=BOB)
    assert reply(bobs) == "[bob here]"
    assert await messages(client, "shared_name") == [
        ("user", "alice's secret"),
        ("assistant", "[alice's secret]"),
    ]
    assert (await call(client, "GET", "/v1/threads/shared_name"))["state"] == "open"
    await expect_error(client, "GET", "/v1/threads", 401, None, headers={})
    await expect_error(client, "POST", "/v1/model/response", 401, None, headers={}, json={})


async def test_messages_include_turns_from_every_dialect(client: Client) -> None:
    first = await respond(client, inputs=[user("Be brief.", "system"), user("hi")], thread="mix")
    r = await client.post(
        "/v1/responses",
        json={"input": "from openai", "previous_response_id": first["id"]},
        headers=ALICE,
    )
    openai = await r.json()
    assert r.status == 200, openai
    assert openai["output"][0]["content"][0]["text"] == "[hi | from openai]"
    after = await respond(client, "back in freddy", thread="mix")
    assert reply(after) == "[hi | from openai | back in freddy]"
    assert await messages(client, "mix") == [
        ("system", "Be brief."),
        ("user", "hi"),
        ("assistant", "[hi]"),
        ("user", "from openai"),
        ("assistant", "[hi | from openai]"),
        ("user", "back in freddy"),
        ("assistant", "[hi | from openai | back in freddy]"),
    ]
    data = await call(client, "GET", "/v1/threads/mix/messages")
    stamps = [m["createdAt"] for m in data["data"]]
    assert stamps == sorted(stamps)
    assert (await call(client, "GET", "/v1/threads/mix"))["messageCount"] == 7


# ---- the real model --------------------------------------------------------------------------


async def test_end_to_end_with_the_real_model(aiohttp_client: Any, tmp_path: Path) -> None:
    pytest.importorskip("ctransformers")
    from threadloom.errors import ModelNotInstalled
    from threadloom.models import default_model_path

    try:
        default_model_path()
    except ModelNotInstalled as err:
        pytest.skip(str(err))
    app = init_app(
        config(tmp_path, cache_dir=str(tmp_path / "cache"), slots=1, context_length=1024),
        backend=None,
    )
    client = await aiohttp_client(app)
    system = user("You are a helpful assistant.", "system")
    first = await respond(
        client,
        inputs=[system, user("What is the capital of France?")],
        thread="geo",
        maxOutputTokens=12,
        headers={},
    )
    assert first["status"] in ("completed", "incomplete") and first["threadId"] == "geo"
    assert "Paris" in reply(first)
    assert 0 < first["usage"]["outputTokens"] <= 12
    second = await respond(
        client, "What is that city famous for?", thread="geo", maxOutputTokens=8, headers={}
    )
    assert reply(second) and second["usage"]["cachedTokens"] > 0
    roles = [role for role, _ in await messages(client, "geo", headers={})]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


# ---- the published document ------------------------------------------------------------------


async def test_answers_match_the_openapi_document(client: Client) -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    from threadloom.server import openapi

    doc = openapi.build_document()

    def check(method: str, path: str, status: int, body: Any) -> None:
        schema = doc["paths"][path][method]["responses"][str(status)]["content"]
        validator = jsonschema_rs.Draft202012Validator(
            {**schema["application/json"]["schema"], "components": doc["components"]}
        )
        errors = [e.message for e in validator.iter_errors(body)]
        assert errors == [], (method, path, status, errors)

    one = "/v1/threads/{thread_id}"
    made = await respond(client, "hi", thread={"id": "doc", "metadata": {"n": [1, {"x": None}]}})
    check("post", "/v1/model/response", 200, made)
    check("post", "/v1/threads", 200, await call(client, "POST", "/v1/threads", json={}))
    check("get", "/v1/threads", 200, await call(client, "GET", "/v1/threads?limit=1"))
    check("get", one, 200, await call(client, "GET", "/v1/threads/doc"))
    check("get", one + "/messages", 200, await call(client, "GET", "/v1/threads/doc/messages"))
    patched = await call(client, "PATCH", "/v1/threads/doc", json={"state": "archived"})
    check("patch", one, 200, patched)
    body = {"inputs": [user("x")], "thread": "doc"}
    check(
        "post",
        "/v1/model/response",
        409,
        await call(client, "POST", "/v1/model/response", 409, json=body),
    )
    check("delete", one, 200, await call(client, "DELETE", "/v1/threads/doc"))
    check("get", one, 404, await call(client, "GET", "/v1/threads/doc", 404))
    check("get", one, 400, await call(client, "GET", "/v1/threads/a%20b", 400))


async def test_messages_are_read_a_page_at_a_time(client: Client) -> None:
    for n in range(5):
        await respond(client, f"m{n}", thread="paged")
    everything = await call(client, "GET", "/v1/threads/paged/messages")
    assert len(everything["data"]) == 10 and everything["hasMore"] is False
    newest = await call(client, "GET", "/v1/threads/paged/messages?limit=4")
    assert newest["data"] == everything["data"][-4:] and newest["hasMore"] is True
    older = await call(
        client, "GET", f"/v1/threads/paged/messages?limit=4&before={newest['firstId']}"
    )
    assert older["data"] == everything["data"][2:6] and older["hasMore"] is True
    oldest = await call(
        client, "GET", f"/v1/threads/paged/messages?limit=4&before={older['firstId']}"
    )
    assert oldest["data"] == everything["data"][:2] and oldest["hasMore"] is False
    await expect_error(client, "GET", "/v1/threads/paged/messages?before=nope", 400, "before")
