"""The Responses API on a real loopback server with the scripted backend: aiohttp as the client
for every endpoint and error path, and the official `openai` SDK unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("aiohttp")
from aiohttp.test_utils import TestClient
from server_support import (
    parse_sse,
    scripted_app,
)
from threadloom.server.keys import ENGINE

pytestmark = pytest.mark.asyncio

KEYS = {"key-alice": "alice", "key-bob": "bob"}
ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"X-API-Key": "key-bob"}

MakeClient = Callable[..., Awaitable[TestClient]]


make_app = scripted_app


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> TestClient:
    return await aiohttp_client(make_app(tmp_path))  # type: ignore[no-any-return]


@pytest_asyncio.fixture
async def make_client(aiohttp_client: Any, tmp_path: Path) -> MakeClient:
    async def make(**kwargs: Any) -> TestClient:
        return await aiohttp_client(make_app(tmp_path, **kwargs))  # type: ignore[no-any-return]

    return make


async def create(client: TestClient, status: int = 200, **body: Any) -> dict[str, Any]:
    headers = body.pop("headers", None)
    r = await client.post("/v1/responses", json=body, headers=headers)
    data = await r.json()
    assert r.status == status, data
    return data  # type: ignore[no-any-return]


def text(response: dict[str, Any]) -> str:
    [item] = response["output"]
    assert item["type"] == "message" and item["role"] == "assistant"
    [part] = item["content"]
    assert part["type"] == "output_text" and part["annotations"] == []
    return part["text"]  # type: ignore[no-any-return]


def stats(client: TestClient) -> dict[str, int]:
    return client.app[ENGINE].store.stats()  # type: ignore[index]


async def expect_error(
    client: TestClient,
    method: str,
    path: str,
    status: int,
    param: str | None = None,
    code: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    r = await client.request(method, path, **kwargs)
    assert r.status == status, await r.text()
    assert r.content_type == "application/json"
    body = await r.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error  # type: ignore[no-any-return]


# ---- basics ----------------------------------------------------------------------------------


async def test_health_and_models(client: TestClient) -> None:
    r = await client.get("/health")
    assert r.status == 200
    health = await r.json()
    assert health["status"] == "ok" and health["backend"] == "scripted" and health["slots"] == 4
    assert health["threads"] >= 1
    r = await client.get("/v1/models")
    models = await r.json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [client.app[ENGINE].model_name]  # type: ignore[index]


async def test_alias_names_the_model(make_client: MakeClient) -> None:
    client = await make_client(alias="gpt-4o-mini")
    models = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["gpt-4o-mini"]
    ok = await create(client, model="gpt-4o-mini", input="Hi")
    assert ok["model"] == "gpt-4o-mini"
    await create(client, model="default", input="Hi")
    error = await expect_error(
        client,
        "POST",
        "/v1/responses",
        404,
        json={"model": "SmolLM2-135M-Instruct.Q4_1", "input": "Hi"},
    )
    assert error["code"] == "model_not_found" and error["param"] == "model"


async def test_create_returns_an_openai_shaped_response(client: TestClient) -> None:
    r = await create(client, model="default", input="Hello there")
    assert r["object"] == "response" and r["status"] == "completed"
    assert r["id"].startswith("resp_") and r["output"][0]["id"].startswith("msg_")
    assert text(r) == "[Hello there]"
    assert r["store"] is True and r["previous_response_id"] is None and r["metadata"] == {}
    assert r["error"] is None and r["incomplete_details"] is None
    usage = r["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"] == {"cached_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}

    got = await (await client.get(f"/v1/responses/{r['id']}")).json()
    assert got["id"] == r["id"] and got["status"] == "completed"
    assert text(got) == "[Hello there]" and got["output"][0]["id"] == r["output"][0]["id"]
    assert got["usage"] == usage


async def test_continue_carries_history(client: TestClient) -> None:
    first = await create(client, input="My name is Ada.")
    second = await create(
        client,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is my name?"}]}],
        previous_response_id=first["id"],
    )
    assert text(second) == "[My name is Ada. | What is my name?]"
    assert second["previous_response_id"] == first["id"]
    assert second["usage"]["input_tokens_details"]["cached_tokens"] > 0
    third = await create(client, input="And again?", previous_response_id=second["id"])
    assert text(third) == "[My name is Ada. | What is my name? | And again?]"
    got = await (await client.get(f"/v1/responses/{third['id']}")).json()
    assert got["previous_response_id"] == second["id"]


async def test_branch_from_an_older_response(client: TestClient) -> None:
    root = await create(client, input="root")
    await create(client, input="left", previous_response_id=root["id"])
    right = await create(client, input="right", previous_response_id=root["id"])
    assert text(right) == "[root | right]"
    deeper = await create(client, input="deeper", previous_response_id=right["id"])
    assert text(deeper) == "[root | right | deeper]"


async def test_instructions_and_input_items(client: TestClient) -> None:
    r = await create(
        client,
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Rules."},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            {"role": "user", "content": "two"},
        ],
    )
    assert r["instructions"] == "Be brief." and text(r) == "[one | two]"
    items = await (await client.get(f"/v1/responses/{r['id']}/input_items")).json()
    assert items["object"] == "list" and items["has_more"] is False
    roles = [(i["role"], i["content"][0]["text"]) for i in items["data"]]
    assert roles == [
        ("user", "two"),
        ("assistant", "ok"),
        ("user", "one"),
        ("system", "Rules."),
        ("system", "Be brief."),
    ]
    assert all(
        i["type"] == "message" and i["content"][0]["type"] == "input_text" for i in items["data"]
    )
    assert items["first_id"] == items["data"][0]["id"]
    page = await (await client.get(f"/v1/responses/{r['id']}/input_items?order=asc&limit=2")).json()
    assert [i["content"][0]["text"] for i in page["data"]] == ["Be brief.", "Rules."]
    assert page["has_more"] is True
    rest = await (
        await client.get(
            f"/v1/responses/{r['id']}/input_items?order=asc&limit=10&after={page['last_id']}"
        )
    ).json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["one", "ok", "two"]
    await expect_error(
        client, "GET", f"/v1/responses/{r['id']}/input_items?limit=0", 400, param="limit"
    )
    await expect_error(
        client, "GET", f"/v1/responses/{r['id']}/input_items?order=up", 400, param="order"
    )


async def test_store_false_is_not_retrievable(client: TestClient) -> None:
    before = stats(client)
    r = await create(client, input="secret", store=False)
    assert r["store"] is False and text(r) == "[secret]" and r["id"].startswith("resp_")
    assert stats(client) == before
    await expect_error(client, "GET", f"/v1/responses/{r['id']}", 404, code="not_found")
    await expect_error(
        client,
        "POST",
        "/v1/responses",
        404,
        param="previous_response_id",
        json={"input": "x", "previous_response_id": r["id"]},
    )
    # store=false may still continue a stored response, and leaves it unchanged.
    stored = await create(client, input="kept")
    off = await create(client, input="peek", previous_response_id=stored["id"], store=False)
    assert text(off) == "[kept | peek]"
    assert stats(client)["responses"] == before["responses"] + 1


async def test_delete(client: TestClient) -> None:
    r = await create(client, input="bye")
    resp = await client.delete(f"/v1/responses/{r['id']}")
    assert resp.status == 200
    assert await resp.json() == {"id": r["id"], "object": "response", "deleted": True}
    await expect_error(client, "GET", f"/v1/responses/{r['id']}", 404)
    await expect_error(client, "DELETE", f"/v1/responses/{r['id']}", 404)
    await expect_error(client, "GET", "/v1/responses/not-an-id", 400, param="response_id")


async def test_max_output_tokens_gives_incomplete(client: TestClient) -> None:
    r = await create(client, input="long:50", max_output_tokens=5)
    assert r["status"] == "incomplete" and r["usage"]["output_tokens"] == 5
    assert r["incomplete_details"] == {"reason": "max_output_tokens"}
    assert r["max_output_tokens"] == 5
    got = await (await client.get(f"/v1/responses/{r['id']}")).json()
    assert got["status"] == "incomplete" and text(got) == text(r)
    # An incomplete response is still an anchor.
    nxt = await create(client, input="go on", previous_response_id=r["id"])
    assert text(nxt) == "[long:50 | go on]"


# ---- streaming -------------------------------------------------------------------------------

STREAM_ORDER_HEAD = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
STREAM_ORDER_TAIL = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


async def test_stream_event_sequence(client: TestClient) -> None:
    first = await create(client, input="remember me")
    r = await client.post(
        "/v1/responses",
        json={"input": "streamed", "stream": True, "previous_response_id": first["id"]},
    )
    assert r.status == 200 and r.content_type == "text/event-stream"
    frames = parse_sse(await r.text())
    names = [name for name, _ in frames]
    assert [data["type"] for _, data in frames] == names
    assert [data["sequence_number"] for _, data in frames] == list(range(len(frames)))
    n_deltas = len(frames) - len(STREAM_ORDER_HEAD) - len(STREAM_ORDER_TAIL) - 1
    assert n_deltas >= 1
    assert names == [
        *STREAM_ORDER_HEAD,
        *["response.output_text.delta"] * n_deltas,
        *STREAM_ORDER_TAIL,
        "response.completed",
    ]
    created, in_progress = frames[0][1]["response"], frames[1][1]["response"]
    assert created["status"] == in_progress["status"] == "in_progress"
    assert created["output"] == [] and created["usage"] is None
    added = frames[2][1]
    assert added["output_index"] == 0 and added["item"]["status"] == "in_progress"
    item_id = added["item"]["id"]
    deltas = "".join(d["delta"] for _, d in frames[4 : 4 + n_deltas])
    assert deltas == "[remember me | streamed]"
    for _, d in frames[3:-2]:
        assert d["item_id"] == item_id and d["output_index"] == 0 and d["content_index"] == 0
    assert frames[-4][1]["text"] == deltas
    assert frames[-3][1]["part"] == {
        "type": "output_text",
        "text": deltas,
        "annotations": [],
        "logprobs": [],
    }
    assert frames[-2][1]["item"]["status"] == "completed"
    done = frames[-1][1]["response"]
    assert done["status"] == "completed" and text(done) == deltas
    assert done["previous_response_id"] == first["id"]
    got = await (await client.get(f"/v1/responses/{done['id']}")).json()
    assert text(got) == deltas
    # The ids the stream announced first are the stored ones: continuable before it ends.
    assert created["id"] == done["id"] == got["id"]
    assert item_id == done["output"][0]["id"] == got["output"][0]["id"]


async def test_stream_incomplete_ends_with_response_incomplete(client: TestClient) -> None:
    r = await client.post(
        "/v1/responses", json={"input": "long:8", "stream": True, "max_output_tokens": 3}
    )
    frames = parse_sse(await r.text())
    assert frames[-1][0] == "response.incomplete"
    assert frames[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_stream_errors_before_start_are_json(client: TestClient) -> None:
    await expect_error(
        client,
        "POST",
        "/v1/responses",
        404,
        param="previous_response_id",
        json={"input": "x", "stream": True, "previous_response_id": "resp_" + "0" * 26},
    )


async def test_disconnect_mid_stream_stores_incomplete_and_frees_the_slot(
    make_client: MakeClient,
) -> None:
    client = await make_client(delay_s=0.01, slots=1)
    engine = client.app[ENGINE]  # type: ignore[index]
    before = engine.store.stats()["responses"]
    r = await client.post("/v1/responses", json={"input": "long:2000", "stream": True})
    seen = 0
    async for line in r.content:
        if line.startswith(b"event: response.output_text.delta"):
            seen += 1
            if seen == 3:
                break
    r.close()  # drops the connection
    for _ in range(300):
        if engine.store.stats()["responses"] == before + 1 and engine.scheduler.busy == 0:
            break
        await asyncio.sleep(0.02)
    assert engine.store.stats()["responses"] == before + 1
    assert engine.scheduler.busy == 0
    # The slot is usable again at once.
    after = await create(client, input="next")
    assert text(after) == "[next]"


# ---- auth and tenants ------------------------------------------------------------------------


async def test_auth_and_tenant_isolation(make_client: MakeClient) -> None:
    client = await make_client(api_keys=KEYS)
    assert (await client.get("/health")).status == 200
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "key-alic"}):
        error = await expect_error(
            client, "POST", "/v1/responses", 401, json={"input": "x"}, headers=headers
        )
        assert error["type"] == "authentication_error"
    await expect_error(client, "GET", "/v1/models", 401)
    before = stats(client)
    mine = await create(client, input="alice's", headers=ALICE)
    assert before["responses"] + 1 == stats(client)["responses"]
    # Bob gets 404 for Alice's response everywhere, never 403.
    for method, path in (
        ("GET", f"/v1/responses/{mine['id']}"),
        ("GET", f"/v1/responses/{mine['id']}/input_items"),
        ("DELETE", f"/v1/responses/{mine['id']}"),
    ):
        await expect_error(client, method, path, 404, headers=BOB)
    await expect_error(
        client,
        "POST",
        "/v1/responses",
        404,
        param="previous_response_id",
        json={"input": "steal", "previous_response_id": mine["id"]},
        headers=BOB,
    )
    theirs = await create(client, input="bob's", headers=BOB)
    assert text(theirs) == "[bob's]"
    ok = await client.get(f"/v1/responses/{mine['id']}", headers=ALICE)
    assert ok.status == 200


# ---- bad input -------------------------------------------------------------------------------


async def test_bad_input_is_a_400_naming_the_field(client: TestClient) -> None:
    before = stats(client)
    cases: list[tuple[Any, int, str | None, str | None]] = [
        (b"{not json", 400, None, "invalid_json"),
        (b"", 400, None, "invalid_json"),
        (b"[]", 400, None, None),
        ({}, 400, None, None),
        ({"input": 5}, 400, "input", None),
        ({"input": []}, 400, "input", None),
        ({"input": "x", "max_output_tokens": -1}, 400, "max_output_tokens", None),
        ({"input": "x", "max_output_tokens": 0}, 400, "max_output_tokens", None),
        ({"input": "x", "max_output_tokens": 10**9}, 400, "max_output_tokens", None),
        ({"input": "x", "max_output_tokens": "9"}, 400, "max_output_tokens", None),
        ({"input": "x", "temperature": 3}, 400, "temperature", None),
        ({"input": "x", "top_p": 0}, 400, "top_p", None),
        ({"input": "x", "store": "yes"}, 400, "store", None),
        ({"input": "x", "truncation": "sometimes"}, 400, "truncation", None),
        ({"input": "x", "frobnicate": True}, 400, "frobnicate", None),
        ({"input": "x", "previous_response_id": "abc"}, 400, "previous_response_id", None),
        ({"input": "x", "metadata": {"k": 1}}, 400, "metadata[...]", None),
        ({"input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata", None),
        ({"input": [{"role": "robot", "content": "x"}]}, 400, "input[0].role", None),
        ({"input": [{"role": "user"}]}, 400, None, None),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "url": "x"}]}]},
            400,
            "input[0].content[0].type",
            None,
        ),
        ({"input": "x", "tools": [{"type": "function"}]}, 400, "tools", None),
        ({"input": "x", "model": "gpt-9"}, 404, "model", "model_not_found"),
    ]
    for body, status, param, code in cases:
        kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
        error = await expect_error(
            client, "POST", "/v1/responses", status, param=param, code=code, **kwargs
        )
        assert error["type"] in ("invalid_request_error", "not_found_error"), (body, error)
    assert stats(client) == before


async def test_oversize_body_is_413(make_client: MakeClient) -> None:
    client = await make_client(max_body_bytes=4096)
    await expect_error(
        client, "POST", "/v1/responses", 413, code="body_too_large", json={"input": "x" * 5000}
    )


async def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    await expect_error(client, "GET", "/v1/nothing", 404)
    error = await expect_error(client, "PUT", "/v1/responses", 405)
    assert error["type"] == "invalid_request_error"


async def test_truncation_disabled_overflow_is_context_length_exceeded(
    client: TestClient,
) -> None:
    before = stats(client)
    await expect_error(
        client,
        "POST",
        "/v1/responses",
        400,
        code="context_length_exceeded",
        json={"input": "word " * 9000, "max_output_tokens": 16},
    )
    assert stats(client) == before


async def test_truncation_auto_drops_the_oldest_turns(make_client: MakeClient) -> None:
    client = await make_client(context_length=256)
    previous = None
    for i in range(4):
        r = await create(
            client,
            input=f"turn{i} " + "filler " * 40,
            previous_response_id=previous,
            truncation="auto",
            max_output_tokens=100,
        )
        previous = r["id"]
    assert r["truncation"] == "auto"
    assert "turn3" in text(r) and "turn0" not in text(r)


async def test_queue_full_is_429_with_retry_after(make_client: MakeClient) -> None:
    client = await make_client(delay_s=0.01, slots=1, max_queue=0)
    busy = await client.post("/v1/responses", json={"input": "long:500", "stream": True})
    await busy.content.readline()
    r = await client.post("/v1/responses", json={"input": "x"})
    assert r.status == 429 and r.headers["Retry-After"] == "1"
    assert (await r.json())["error"]["type"] == "rate_limit_error"
    busy.close()


async def test_failed_generation(make_client: MakeClient) -> None:
    client = await make_client(fail_after=2)
    r = await create(client, input="long:10")
    assert r["status"] == "failed" and r["error"]["code"] == "server_error"
    got = await (await client.get(f"/v1/responses/{r['id']}")).json()
    assert got["status"] == "failed"
    # Failed responses are not anchors.
    await expect_error(
        client,
        "POST",
        "/v1/responses",
        409,
        json={"input": "x", "previous_response_id": r["id"]},
    )
