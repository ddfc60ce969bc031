"""Every field OpenAI documents is accepted: neutral values change nothing, values asking for
something this server does not do get a 400 naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from server_support import scripted_app

pytestmark = pytest.mark.asyncio


async def test_responses_accept_the_agents_sdk_request_and_neutral_fields(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await aiohttp_client(scripted_app(tmp_path))
    # The Agents SDK's first request through OpenAIResponsesModel.
    first = {
        "model": "default",
        "include": [],
        "input": "hi",
        "instructions": "Be brief.",
        "tools": [],
    }
    r = await client.post("/v1/responses", json=first)
    assert r.status == 200, await r.text()
    neutral = {
        "input": "hi",
        "parallel_tool_calls": False,
        "user": "u1",
        "safety_identifier": "s1",
        "prompt_cache_key": "k",
        "service_tier": "auto",
        "background": False,
        "reasoning": {"effort": None},
        "text": {"format": {"type": "text"}},
        "top_logprobs": 0,
        "max_tool_calls": 3,
        "stream_options": {"include_obfuscation": False},
    }
    r = await client.post("/v1/responses", json=neutral)
    assert r.status == 200, await r.text()


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ],
)
async def test_responses_refuse_what_they_cannot_do(
    aiohttp_client: Any, tmp_path: Path, extra: dict[str, Any], param: str
) -> None:
    client = await aiohttp_client(scripted_app(tmp_path))
    r = await client.post("/v1/responses", json={"input": "hi", **extra})
    body = await r.json()
    assert r.status == 400, body
    assert body["error"]["param"] == param and "not supported" in body["error"]["message"]
    assert body["error"]["code"] == "unsupported_parameter"


async def test_chat_completions_accept_neutral_and_refuse_the_rest(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await aiohttp_client(scripted_app(tmp_path))
    messages = [{"role": "user", "content": "hi"}]
    neutral = {
        "tools": [],
        "logprobs": False,
        "response_format": {"type": "text"},
        "modalities": ["text"],
        "parallel_tool_calls": True,
        "store": False,
        "metadata": {"a": "b"},
        "prompt_cache_key": "k",
        "safety_identifier": "s",
    }
    r = await client.post("/v1/chat/completions", json={"messages": messages, **neutral})
    assert r.status == 200, await r.text()
    for extra, param in [
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].type"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"logprobs": True}, "logprobs"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
    ]:
        r = await client.post("/v1/chat/completions", json={"messages": messages, **extra})
        body = await r.json()
        assert r.status == 400 and body["error"]["param"] == param, (extra, body)
