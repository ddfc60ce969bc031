"""Failures stay per request: a Rust panic (a BaseException, like PyO3's PanicException) in a
handler is a logged 500 naming the request id, and every response carries `X-Request-Id`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from server_support import scripted_app
from threadloom.server.keys import ENGINE

pytestmark = pytest.mark.asyncio


class FakePanic(BaseException):
    """What PyO3 raises when Rust code panics: not an `Exception`."""


async def test_a_panic_is_a_logged_500_and_the_server_goes_on(
    aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = scripted_app(tmp_path)

    async def boom(request: web.Request) -> web.Response:
        raise FakePanic("called `Option::unwrap()` on a `None` value")

    app.router.add_get("/boom", boom)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR, logger="threadloom.server"):
        r = await client.get("/boom", headers={"X-Request-Id": "trace-42"})
    assert r.status == 500
    assert (await r.json())["error"]["code"] == "internal_error"
    assert r.headers["X-Request-Id"] == "trace-42"
    assert any("trace-42" in rec.getMessage() for rec in caplog.records)
    # The next request is served as usual.
    r = await client.post("/v1/responses", json={"input": "hi"})
    assert r.status == 200


async def test_every_response_names_its_request_id(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(scripted_app(tmp_path))
    ok = await client.get("/health")
    missing = await client.get("/v1/responses/resp_00000000000000000000000000")
    streamed = await client.post("/v1/responses", json={"input": "hi", "stream": True})
    await streamed.read()
    ids = [r.headers["X-Request-Id"] for r in (ok, missing, streamed)]
    assert all(i.startswith("req_") for i in ids) and len(set(ids)) == 3
    # A client's id with characters that do not belong in a log line is replaced.
    r = await client.get("/health", headers={"X-Request-Id": "bad id\tinjected"})
    assert r.headers["X-Request-Id"].startswith("req_")


async def test_request_limits_name_the_field(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(scripted_app(tmp_path))
    messages = [{"role": "user", "content": "hi"}]
    cases = [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ["x" * 257]}, "stop[0]"),
        ({"stop": ""}, "stop"),
        ({"seed": 2**40}, "seed"),
    ]
    for extra, param in cases:
        r = await client.post("/v1/chat/completions", json={"messages": messages, **extra})
        assert r.status == 400, extra
        assert (await r.json())["error"]["param"] == param, extra
    many = [{"role": "user", "content": "x"}] * 10_001
    r = await client.post("/v1/responses", json={"input": many})
    assert r.status == 400 and (await r.json())["error"]["param"] == "input"


async def test_the_conversation_limit_is_checked_before_generating(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    app = scripted_app(tmp_path)
    client = await aiohttp_client(app)
    engine = app[ENGINE]
    from threadloom import MAX_THREAD_MESSAGES

    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"}
        for i in range(MAX_THREAD_MESSAGES - 1)
    ]
    engine.store.create_thread("full")
    engine.store.append(turns, thread="full")
    generated = engine.scheduler.backend.prompt_tokens_evaluated  # type: ignore[attr-defined]
    r = await client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status == 200
    r = await client.post("/api/v1/chat", json={"input": "one more", "thread_id": "full"})
    body = await r.json()
    assert r.status == 400, body
    assert engine.store.get_thread("full").message_count == MAX_THREAD_MESSAGES - 1
    # Nothing was evaluated for the refused request (only the chat completion above).
    assert engine.scheduler.backend.prompt_tokens_evaluated > generated  # type: ignore[attr-defined]
    before = engine.scheduler.backend.prompt_tokens_evaluated  # type: ignore[attr-defined]
    r = await client.post("/api/v1/chat", json={"input": "one more", "thread_id": "full"})
    assert r.status == 400
    assert engine.scheduler.backend.prompt_tokens_evaluated == before  # type: ignore[attr-defined]
