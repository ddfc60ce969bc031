"""`POST /v1/chat/completions` (stateless) on a real loopback server with the scripted backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("aiohttp")
from aiohttp.test_utils import TestClient
from server_support import EchoScript, attach_tokenizer, config, scripted
from threadloom.server.app import init_app
from threadloom.server.keys import ENGINE

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> TestClient:
    script = EchoScript()
    app = init_app(config(tmp_path), backend=scripted(script))
    attach_tokenizer(app, script)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "one"},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": [{"type": "text", "text": "two"}]},
]


async def test_completion_sees_the_whole_conversation_and_stores_nothing(
    client: TestClient,
) -> None:
    before = client.app[ENGINE].store.stats()  # type: ignore[index]
    r = await client.post("/v1/chat/completions", json={"model": "default", "messages": MESSAGES})
    assert r.status == 200
    body = await r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl_")
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "[one | two]"}
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert client.app[ENGINE].store.stats() == before  # type: ignore[index]


async def test_length_and_stop(client: TestClient) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "long:20"}], "max_tokens": 4},
    )
    body = await r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    # llama.cpp's timings: the scheduler's figures for this request.
    timings = body["timings"]
    assert timings["predicted_n"] == 4
    assert timings["prompt_n"] == body["usage"]["prompt_tokens"]  # a fresh slot: nothing reused
    assert timings["prompt_ms"] >= 0 and timings["queue_ms"] >= 0
    assert timings["predicted_per_second"] is None or timings["predicted_per_second"] > 0
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "abc|def"}], "stop": ["|"]},
    )
    body = await r.json()
    assert body["choices"][0]["message"]["content"] == "[abc"
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_stream_chunks(client: TestClient) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert r.status == 200 and r.content_type == "text/event-stream"
    raw = await r.text()
    blocks = raw.split("\n\n")
    assert blocks[-1] == "" and blocks[-2] == "data: [DONE]"
    chunks = [json.loads(b.removeprefix("data: ")) for b in blocks[:-2]]
    assert all(b.startswith("data: ") for b in blocks[:-2])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2])
    assert text == "[one | two]"
    assert chunks[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "finish_reason": "stop",
        "logprobs": None,
    }
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


async def test_bad_requests(client: TestClient) -> None:
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -2}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, "stop"),
        (
            {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "f"}]},
            "tools[0].type",
        ),
    ]
    for body, param in cases:
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status == 400, body
        error = (await r.json())["error"]
        assert error["param"] == param, (body, error)
