"""Tokenization (`/api/v1/tokenize`, `/api/v1/tokenize/count`) and the Responses API's input
token count (`/v1/responses/input_tokens`) on a real loopback server with the scripted backend:
every count is checked against the tokenizer, the prompt engine, or the usage a real
generation then reports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("aiohttp")
from aiohttp import web
from aiohttp.test_utils import TestClient
from server_support import EchoScript, attach_tokenizer, config, scripted
from threadloom.engine import Engine
from threadloom.server.app import init_app
from threadloom.server.keys import ENGINE

pytestmark = pytest.mark.asyncio

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

TEXT = "Hello world: tokenizers split café, naïve, 日本語 and 🦙 in odd places."
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is 2+2?"},
]


def make_app(tmp_path: Path, **kwargs: Any) -> web.Application:
    script = EchoScript()
    factory_kwargs = {k: kwargs.pop(k) for k in ("context_length",) if k in kwargs}
    app = init_app(config(tmp_path, **kwargs), backend=scripted(script, **factory_kwargs))
    attach_tokenizer(app, script)
    return app


@pytest_asyncio.fixture
async def make_client(aiohttp_client: Any, tmp_path: Path) -> MakeClient:
    async def make(**kwargs: Any) -> Client:
        return await aiohttp_client(make_app(tmp_path, **kwargs))  # type: ignore[no-any-return]

    return make


@pytest_asyncio.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


def engine_of(client: Client) -> Engine:
    return client.app[ENGINE]


def stored(client: Client) -> dict[str, int]:
    """What the store holds. Not its size: assembly caches the token counts of stored turns
    (a count warms that cache too)."""
    stats = engine_of(client).store.stats()
    return {k: stats[k] for k in ("threads", "responses", "turns")}


async def post(client: Client, path: str, status: int = 200, **body: Any) -> dict[str, Any]:
    headers = body.pop("headers", None)
    r = await client.post(path, json=body, headers=headers)
    data = await r.json()
    assert r.status == status, data
    assert r.content_type == "application/json"
    return data  # type: ignore[no-any-return]


async def error(client: Client, path: str, status: int, **body: Any) -> dict[str, Any]:
    data = await post(client, path, status, **body)
    assert set(data) == {"error"}
    assert set(data["error"]) == {"message", "type", "param", "code"}
    return data["error"]  # type: ignore[no-any-return]


# ---- /api/v1/tokenize ----------------------------------------------------------------------


async def test_text_ids_are_the_tokenizers(client: Client) -> None:
    tokenizer = engine_of(client).tokenizer
    data = await post(client, "/api/v1/tokenize", text=TEXT)
    ids = tokenizer.encode(TEXT)
    assert data == {"tokens": ids, "count": len(ids)}
    special = await post(client, "/api/v1/tokenize", text=TEXT, add_special=True)
    ids = tokenizer.encode(TEXT, add_special=True)
    assert special == {"tokens": ids, "count": len(ids)}


async def test_empty_text_has_no_tokens(client: Client) -> None:
    assert await post(client, "/api/v1/tokenize", text="") == {"tokens": [], "count": 0}


async def test_pieces_are_each_tokens_bytes(client: Client) -> None:
    tokenizer = engine_of(client).tokenizer
    data = await post(client, "/api/v1/tokenize", text=TEXT, with_pieces=True)
    assert set(data) == {"tokens", "count", "pieces"}
    assert len(data["pieces"]) == data["count"] == len(data["tokens"])
    joined = b""
    for token, piece in zip(data["tokens"], data["pieces"], strict=True):
        raw = tokenizer.piece(token)
        if isinstance(piece, str):
            assert piece.encode() == raw
            joined += piece.encode()
        else:  # not UTF-8 on its own: the bytes
            assert bytes(piece) == raw and isinstance(piece, list)
            joined += bytes(piece)
    assert joined.decode() == TEXT


async def test_messages_are_rendered_with_the_models_template(client: Client) -> None:
    engine = engine_of(client)
    data = await post(client, "/api/v1/tokenize", messages=MESSAGES)
    assembly = engine.prompt.assemble_messages(MESSAGES, strategy="none", max_tokens=0)
    assert data == {"tokens": assembly.ids, "count": assembly.prompt_tokens}
    prompt = engine.tokenizer.decode(data["tokens"])
    assert prompt.endswith("<|im_start|>assistant\n")
    for message in MESSAGES:
        assert f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>" in prompt
    bare = await post(client, "/api/v1/tokenize", messages=MESSAGES, add_generation_prompt=False)
    assembly = engine.prompt.assemble_messages(
        MESSAGES, strategy="none", max_tokens=0, add_generation_prompt=False
    )
    assert bare["tokens"] == assembly.ids and bare["count"] < data["count"]


async def test_message_count_is_what_a_chat_completion_uses(client: Client) -> None:
    data = await post(client, "/api/v1/tokenize/count", messages=MESSAGES)
    chat = await post(client, "/v1/chat/completions", messages=MESSAGES)
    assert data == {"count": chat["usage"]["prompt_tokens"]}


async def test_developer_and_content_parts_render_like_system_and_text(client: Client) -> None:
    parts = [
        {"role": "developer", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]},
    ]
    plain = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    assert await post(client, "/api/v1/tokenize", messages=parts) == await post(
        client, "/api/v1/tokenize", messages=plain
    )


async def test_count_only(client: Client) -> None:
    tokenizer = engine_of(client).tokenizer
    data = await post(client, "/api/v1/tokenize/count", text=TEXT, with_pieces=True)
    assert data == {"count": len(tokenizer.encode(TEXT))}
    full = await post(client, "/api/v1/tokenize", messages=MESSAGES)
    assert await post(client, "/api/v1/tokenize/count", messages=MESSAGES) == {
        "count": full["count"]
    }


async def test_model_name_is_checked(client: Client) -> None:
    name = engine_of(client).model_name
    assert (await post(client, "/api/v1/tokenize/count", text="x", model=name))["count"] == 1
    e = await error(client, "/api/v1/tokenize", 404, text="x", model="other")
    assert e["code"] == "model_not_found" and e["param"] == "model"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, None),
        ({"text": "x", "messages": MESSAGES}, None),
        ({"messages": []}, "messages"),
        ({"text": 5}, "text"),
        ({"text": "x", "extra": True}, "extra"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ],
)
async def test_invalid_requests(client: Client, body: dict[str, Any], param: str | None) -> None:
    for path in ("/api/v1/tokenize", "/api/v1/tokenize/count"):
        e = await error(client, path, 400, **body)
        assert e["param"] == param and e["code"] == "invalid_value"


async def test_conversation_longer_than_the_context(make_client: MakeClient) -> None:
    client = await make_client(context_length=64)
    long = [{"role": "user", "content": "word " * 200}]
    e = await error(client, "/api/v1/tokenize", 400, messages=long)
    assert e["code"] == "context_length_exceeded"
    # Plain text is not bound by the context.
    text = "word" + " word" * 199
    assert await post(client, "/api/v1/tokenize/count", text=text) == {"count": 200}


# ---- /v1/responses/input_tokens -----------------------------------------------------------


async def count(client: Client, status: int = 200, **body: Any) -> int:
    data = await post(client, "/v1/responses/input_tokens", status, **body)
    assert set(data) == {"object", "input_tokens"}
    assert data["object"] == "response.input_tokens"
    return data["input_tokens"]  # type: ignore[no-any-return]


async def create(client: Client, **body: Any) -> dict[str, Any]:
    return await post(client, "/v1/responses", **body)


@pytest.mark.parametrize(
    "body",
    [
        {"input": "Hello there"},
        {"input": "Hello there", "instructions": "Be brief.", "model": "default"},
        {
            "input": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "And now?"},
            ]
        },
    ],
)
async def test_input_tokens_equal_the_usage_of_a_real_create(
    client: Client, body: dict[str, Any]
) -> None:
    before = stored(client)
    n = await count(client, **body)
    assert stored(client) == before  # counting stores nothing
    assert n == (await create(client, **body))["usage"]["input_tokens"]


async def test_input_tokens_include_the_previous_responses_history(client: Client) -> None:
    first = await create(client, input="first question", instructions="Be brief.")
    second = await create(client, input="second question", previous_response_id=first["id"])
    body = {"input": "third question", "previous_response_id": second["id"]}
    before = stored(client)
    n = await count(client, **body)
    assert stored(client) == before
    alone = await count(client, input="third question")
    assert n > alone
    third = await create(client, **body)
    assert n == third["usage"]["input_tokens"]
    assert third["output"][0]["content"][0]["text"] == (
        "[first question | second question | third question]"
    )


async def test_input_tokens_trim_like_the_create(make_client: MakeClient) -> None:
    client = await make_client(context_length=200)
    previous = None
    for i in range(4):
        r = await create(
            client,
            input=f"turn {i} " + "word " * 30,
            previous_response_id=previous,
            truncation="auto",
            max_output_tokens=20,
        )
        previous = r["id"]
    body: dict[str, Any] = {
        "input": "last",
        "previous_response_id": previous,
        "truncation": "auto",
        "max_output_tokens": 20,
    }
    n = await count(client, **body)
    assert n <= 200 - 20
    assert n == (await create(client, **body))["usage"]["input_tokens"]
    # Without trimming neither fits.
    body["truncation"] = "disabled"
    e = await error(client, "/v1/responses/input_tokens", 400, **body)
    assert e["code"] == "context_length_exceeded"
    e = await error(client, "/v1/responses", 400, **body)
    assert e["code"] == "context_length_exceeded"


async def test_input_tokens_of_another_tenants_response_is_not_found(
    make_client: MakeClient,
) -> None:
    client = await make_client(api_keys={"key-alice": "alice", "key-bob": "bob"})
    alice = {"Authorization": "Bearer key-alice"}
    bob = {"Authorization": "Bearer key-bob"}
    r = await create(client, input="secret", headers=alice)
    body = {"input": "more", "previous_response_id": r["id"]}
    assert await count(client, headers=alice, **body) > 0
    e = await error(client, "/v1/responses/input_tokens", 404, headers=bob, **body)
    assert e["param"] == "previous_response_id" and e["code"] == "not_found"
    e = await error(client, "/v1/responses/input_tokens", 401, **body)
    assert e["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": "x", "previous_response_id": "resp_" + "0" * 26}, 404, "previous_response_id"),
        ({"input": "x", "previous_response_id": "nope"}, 400, "previous_response_id"),
        ({"input": "x", "model": "other"}, 404, "model"),
        ({"input": []}, 400, "input"),
        ({"input": "x", "max_output_tokens": 8192}, 400, "max_output_tokens"),
        ({"instructions": "x"}, 400, "input"),
    ],
)
async def test_input_tokens_errors(
    client: Client, body: dict[str, Any], status: int, param: str | None
) -> None:
    e = await error(client, "/v1/responses/input_tokens", status, **body)
    assert e["param"] == param
