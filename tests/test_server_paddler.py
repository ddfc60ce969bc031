"""Paddler's `POST /api/v1/continue_from_conversation_history` on a real loopback server: the
scripted backend for the exact NDJSON frames, errors before and after the stream opens, and
statelessness; one run with the real default model."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("aiohttp")
from aiohttp import web
from aiohttp.test_utils import TestClient
from server_support import EOS, EchoScript, config, scripted_app
from threadloom.server.app import init_app
from threadloom.server.keys import ENGINE

pytestmark = pytest.mark.asyncio

PATH = "/api/v1/continue_from_conversation_history"
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{21}$")
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


make_app = scripted_app


@pytest_asyncio.fixture
async def make_client(aiohttp_client: Any, tmp_path: Path) -> MakeClient:
    async def make(script: Any = None, **kwargs: Any) -> Client:
        return await aiohttp_client(make_app(tmp_path, script, **kwargs))  # type: ignore[no-any-return]

    return make


@pytest_asyncio.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


def body(history: list[dict[str, str]], **overrides: Any) -> dict[str, Any]:
    return {
        "add_generation_prompt": True,
        "enable_thinking": False,
        "max_tokens": 100,
        "conversation_history": history,
        **overrides,
    }


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def parse_ndjson(raw: bytes) -> list[dict[str, Any]]:
    """One JSON object per line, every line terminated; strict about the framing."""
    assert raw.endswith(b"\n"), raw[-200:]
    lines = raw[:-1].split(b"\n")
    assert all(lines), raw
    return [json.loads(line) for line in lines]


def tokens_of(frames: list[dict[str, Any]]) -> tuple[str, list[str], int]:
    """Checks every frame's full structure: token frames, then exactly one closing Done frame,
    all with one request id and one slot. Returns (request id, token texts, slot)."""
    request_id = frames[0]["Response"]["request_id"]
    slot = frames[0]["Response"]["response"]["GeneratedToken"]["slot"]
    assert REQUEST_ID.match(request_id), request_id
    assert isinstance(slot, int)
    texts = []
    for frame in frames[:-1]:
        token = frame["Response"]["response"]["GeneratedToken"]["generated_token_result"]
        assert set(token) == {"Token"}
        texts.append(token["Token"])
        assert frame == {
            "Response": {
                "request_id": request_id,
                "response": {"GeneratedToken": {"generated_token_result": token, "slot": slot}},
            }
        }
    assert frames[-1] == {
        "Response": {
            "request_id": request_id,
            "response": {"GeneratedToken": {"generated_token_result": "Done", "slot": slot}},
        }
    }
    assert all(texts)
    return request_id, texts, slot


async def run(client: Client, payload: Any, **kwargs: Any) -> list[dict[str, Any]]:
    r = await client.post(PATH, json=payload, **kwargs)
    raw = await r.read()
    assert r.status == 200, raw
    assert r.content_type == "application/json"
    assert r.headers["Cache-Control"] == "no-cache"
    return parse_ndjson(raw)


async def expect_error(
    client: Client, status: int, method: str = "POST", **kwargs: Any
) -> dict[str, Any]:
    """A failure before the stream opens: the HTTP status, and one Paddler Error frame."""
    r = await client.request(method, PATH, **kwargs)
    raw = await r.read()
    assert r.status == status, raw
    assert r.content_type == "application/json"
    frame = json.loads(raw)
    error = frame["Error"]
    assert set(frame) == {"Error"} and set(error) == {"request_id", "error"}
    assert REQUEST_ID.match(error["request_id"])
    assert set(error["error"]) == {"code", "description"}
    assert error["error"]["code"] == status and error["error"]["description"]
    return error["error"]  # type: ignore[no-any-return]


def prompt_ids(client: Client, history: list[dict[str, str]], **kwargs: Any) -> list[int]:
    return client.app[ENGINE].prompt.assemble_messages(history, **kwargs).ids


# ---- success -----------------------------------------------------------------------------------


async def test_streams_exact_token_frames_then_done(client: Client) -> None:
    frames = await run(client, body([SYSTEM, user("Hello there")]))
    _, texts, slot = tokens_of(frames)
    assert "".join(texts) == "[Hello there]"
    assert slot in (0, 1)
    # One frame per generated token: the reply's tokens, without the end-of-sequence.
    tokenizer = client.app[ENGINE].tokenizer
    assert len(texts) == len(tokenizer.encode("[Hello there]"))


async def test_each_request_gets_its_own_id(client: Client) -> None:
    first, _, _ = tokens_of(await run(client, body([user("a")])))
    second, _, _ = tokens_of(await run(client, body([user("b")])))
    assert first != second


async def test_slot_is_the_slot_that_generated(make_client: MakeClient) -> None:
    client = await make_client(delay_s=0.01, slots=2)
    # Two generations at once must run on the two different slots.
    both = await asyncio.gather(
        run(client, body([user("long:20")])), run(client, body([user("long:20")]))
    )
    slots = {tokens_of(frames)[2] for frames in both}
    assert slots == {0, 1}


async def test_multi_turn_history_reaches_the_model_intact(make_client: MakeClient) -> None:
    script = EchoScript()
    client = await make_client(script)
    history = [
        SYSTEM,
        user("first question"),
        assistant("first answer"),
        user("second question"),
        assistant("second answer"),
        user("third question"),
    ]
    _, texts, _ = tokens_of(await run(client, body(history)))
    assert "".join(texts) == "[first question | second question | third question]"
    assert script.prompts[-1] == script.tokenizer.decode(prompt_ids(client, history))
    for message in history:
        assert message["content"] in script.prompts[-1]


async def test_add_generation_prompt_false_continues_the_last_message(
    make_client: MakeClient,
) -> None:
    script = EchoScript()
    client = await make_client(script)
    history = [user("tell me"), assistant("Once upon")]
    await run(client, body(history, add_generation_prompt=False))
    without = script.tokenizer.decode(prompt_ids(client, history, add_generation_prompt=False))
    with_prompt = script.tokenizer.decode(prompt_ids(client, history))
    assert script.prompts[-1] == without
    assert without != with_prompt and with_prompt.startswith(without)
    await run(client, body(history))
    assert script.prompts[-1] == with_prompt


async def test_thinking_streams_raw_with_its_tags(make_client: MakeClient) -> None:
    raw = "<think>\nLet me see.\n</think>\n\nYes."

    class Thinker(EchoScript):
        def __call__(self, ids: Sequence[int]) -> list[int]:
            super().__call__(ids)
            return [*self.tokenizer.encode(raw), EOS]

    client = await make_client(Thinker())
    _, texts, _ = tokens_of(await run(client, body([user("think")], enable_thinking=True)))
    assert "".join(texts) == raw


async def test_max_tokens_caps_the_reply_and_still_ends_with_done(client: Client) -> None:
    _, texts, _ = tokens_of(await run(client, body([user("long:50")], max_tokens=5)))
    assert texts == [" x"] * 5


async def test_nothing_is_stored(client: Client) -> None:
    store = client.app[ENGINE].store
    before = store.stats()
    await run(client, body([SYSTEM, user("a"), assistant("b"), user("c")]))
    assert store.stats() == before


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"enable_thinking": False, "max_tokens": 5, "conversation_history": [user("x")]}, ""),
        (body([]), "conversation_history"),
        (body([user("x")], max_tokens=0), "max_tokens"),
        (body([user("x")], surprise=1), "surprise"),
        (body([{"role": "robot", "content": "x"}]), "role"),
        (body([{"role": "user"}]), "content"),
        (body([user("x")], enable_thinking="yes"), "enable_thinking"),
        (body([user("x")], max_tokens=8192), "max_tokens"),
    ],
)
async def test_invalid_requests_get_an_error_frame(
    client: Client, payload: dict[str, Any], fragment: str
) -> None:
    error = await expect_error(client, 400, json=payload)
    assert fragment in error["description"]


async def test_invalid_json_gets_an_error_frame(client: Client) -> None:
    error = await expect_error(client, 400, data=b"{not json")
    assert "JSON" in error["description"]


async def test_wrong_method_gets_an_error_frame_with_allow(client: Client) -> None:
    r = await client.get(PATH)
    assert r.status == 405 and r.headers["Allow"] == "POST"
    assert set((await r.json())["Error"]["error"]) == {"code", "description"}


async def test_auth_errors_are_paddler_shaped(make_client: MakeClient) -> None:
    client = await make_client(api_keys={"key-alice": "alice"})
    r = await client.post(PATH, json=body([user("x")]))
    assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert (await r.json())["Error"]["error"]["code"] == 401
    headers = {"Authorization": "Bearer key-alice"}
    _, texts, _ = tokens_of(await run(client, body([user("x")]), headers=headers))
    assert "".join(texts) == "[x]"


async def test_overload_keeps_status_and_retry_after(make_client: MakeClient) -> None:
    client = await make_client(delay_s=0.01, slots=1, max_queue=0)
    busy = await client.post(PATH, json=body([user("long:2000")], max_tokens=2000))
    await busy.content.readline()  # the one slot is generating
    r = await client.post(PATH, json=body([user("x")]))
    assert r.status == 429 and r.headers["Retry-After"] == "1"
    frame = await r.json()
    assert frame["Error"]["error"]["code"] == 429
    busy.close()


async def test_failure_after_the_stream_opened_ends_with_an_error_frame(
    make_client: MakeClient,
) -> None:
    client = await make_client(fail_after=2)
    frames = await run(client, body([user("one two three four")]))
    assert len(frames) == 3
    request_id = frames[0]["Response"]["request_id"]
    for frame in frames[:2]:
        assert set(frame["Response"]["response"]["GeneratedToken"]["generated_token_result"]) == {
            "Token"
        }
        assert frame["Response"]["request_id"] == request_id
    assert frames[2] == {
        "Error": {
            "request_id": request_id,
            "error": {"code": 500, "description": "the generation failed"},
        }
    }
    # The slot is free again and the next request works.
    _, texts, _ = tokens_of(await run(client, body([user("x")], max_tokens=1)))
    assert len(texts) == 1


async def test_disconnect_mid_stream_frees_the_slot(make_client: MakeClient) -> None:
    client = await make_client(delay_s=0.01, slots=1)
    engine = client.app[ENGINE]
    r = await client.post(PATH, json=body([user("long:2000")], max_tokens=2000))
    for _ in range(3):
        assert (await r.content.readline()).startswith(b'{"Response"')
    r.close()
    for _ in range(300):
        if engine.scheduler.busy == 0:
            break
        await asyncio.sleep(0.02)
    assert engine.scheduler.busy == 0
    _, texts, _ = tokens_of(await run(client, body([user("next")])))
    assert "".join(texts) == "[next]"


async def test_other_dialects_keep_openai_errors(client: Client) -> None:
    r = await client.post("/v1/chat/completions", data=b"{not json")
    assert r.status == 400
    assert set((await r.json())["error"]) == {"message", "type", "param", "code"}


# ---- the real model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Skips unless ctransformers and the default model are installed; converts it once."""
    pytest.importorskip("ctransformers")
    from threadloom.convert import prepared_model
    from threadloom.errors import ModelNotInstalled
    from threadloom.models import default_model_path

    cache = tmp_path_factory.mktemp("paddler-cache")
    try:
        prepared_model(default_model_path(), cache, progress=False)
    except ModelNotInstalled as err:
        pytest.skip(str(err))
    yield cache


async def test_real_model_end_to_end(aiohttp_client: Any, tmp_path: Path, real_model: Path) -> None:
    # A small context keeps the model's memory small.
    app = init_app(config(tmp_path, cache_dir=str(real_model), slots=1, context_length=1024))
    client: Client = await aiohttp_client(app)
    question = [SYSTEM, user("What is the capital of France?")]
    frames = await run(client, body(question, max_tokens=12))
    _, texts, slot = tokens_of(frames)
    assert slot == 0 and 1 <= len(texts) <= 12
    assert "Paris" in "".join(texts)
    assert client.app[ENGINE].context_length == 1024
