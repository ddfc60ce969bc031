"""LM Studio's stateful chat (`POST /api/v1/chat`) on a real loopback server: the scripted
backend for every shape, branch, stream and error path, and the real default model once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

pytest.importorskip("aiohttp")
from aiohttp import web
from aiohttp.test_utils import TestClient
from server_support import (
    EOS,
    EchoScript,
    config,
    parse_sse,
    scripted_app,
)
from threadloom.errors import ModelNotInstalled, StoreFull
from threadloom.server.app import init_app
from threadloom.server.keys import ENGINE

pytestmark = pytest.mark.asyncio

PATH = "/api/v1/chat"
KEYS = {"key-alice": "alice", "key-bob": "bob"}
ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"Authorization": "Bearer key-bob"}
UNKNOWN_ID = "resp_" + "0" * 26
RESULT_KEYS = {"model_instance_id", "output", "stats", "thread_id", "response_id"}
STATS_KEYS = {
    "input_tokens",
    "total_output_tokens",
    "reasoning_output_tokens",
    "tokens_per_second",
    "time_to_first_token_seconds",
}

if TYPE_CHECKING:
    Client = TestClient[web.Request, web.Application]
else:  # subscripting it at run time needs a newer aiohttp than the floor
    Client = TestClient
MakeClient = Callable[..., Awaitable[Client]]


class ThinkScript(EchoScript):
    """Thinks first, then answers: a leading `<think>` block the engine routes to reasoning."""

    def __call__(self, ids: Sequence[int]) -> list[int]:
        self.prompts.append(self.tokenizer.decode(list(ids)))
        return [*self.tokenizer.encode("<think>pondering</think>\n\nThe answer."), EOS]


make_app = scripted_app


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Client:
    return await aiohttp_client(make_app(tmp_path))  # type: ignore[no-any-return]


@pytest_asyncio.fixture
async def make_client(aiohttp_client: Any, tmp_path: Path) -> MakeClient:
    async def make(script: EchoScript | None = None, **kwargs: Any) -> Client:
        return await aiohttp_client(make_app(tmp_path, script, **kwargs))  # type: ignore[no-any-return]

    return make


async def chat(client: Client, status: int = 200, **body: Any) -> dict[str, Any]:
    headers = body.pop("headers", None)
    body.setdefault("model", "default")
    r = await client.post(PATH, json=body, headers=headers)
    data = await r.json()
    assert r.status == status, data
    return data  # type: ignore[no-any-return]


def message(result: dict[str, Any]) -> str:
    """The reply text; the message is always the last output item."""
    item = result["output"][-1]
    assert set(item) == {"type", "content"} and item["type"] == "message"
    return item["content"]  # type: ignore[no-any-return]


def stats(client: Client) -> dict[str, int]:
    """What the store holds. File size is left out: reading a history may cache token counts."""
    counts = client.app[ENGINE].store.stats()
    return {k: counts[k] for k in ("threads", "responses", "turns")}


def history(client: Client, response_id: str, owner: str = "default") -> list[tuple[str, str]]:
    turns = client.app[ENGINE].store.history(response=response_id, owner=owner)
    return [(t.role, t.content) for t in turns]


async def expect_error(
    client: Client,
    status: int,
    param: str | None = None,
    code: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    r = await client.post(PATH, **kwargs)
    assert r.status == status, await r.text()
    assert r.content_type == "application/json"
    error = (await r.json())["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error  # type: ignore[no-any-return]


async def stream(client: Client, **body: Any) -> list[tuple[str | None, dict[str, Any]]]:
    body.setdefault("model", "default")
    r = await client.post(PATH, json={**body, "stream": True})
    assert r.status == 200 and r.content_type == "text/event-stream"
    frames = parse_sse(await r.text())
    assert [data["type"] for _, data in frames] == [name for name, _ in frames]
    return frames


# ---- replies and continuation ----------------------------------------------------------------


async def test_reply_has_lmstudio_shape_and_is_stored(client: Client) -> None:
    r = await chat(client, input="Hello there")
    assert set(r) == RESULT_KEYS
    assert r["model_instance_id"] == client.app[ENGINE].model_name
    assert r["output"] == [{"type": "message", "content": "[Hello there]"}]
    assert r["thread_id"].startswith("resp_") and r["response_id"] == r["thread_id"]
    s = r["stats"]
    assert set(s) == STATS_KEYS
    assert s["input_tokens"] > 0 and s["total_output_tokens"] > 0
    assert s["reasoning_output_tokens"] == 0
    assert s["tokens_per_second"] >= 0 and s["time_to_first_token_seconds"] >= 0
    assert history(client, r["thread_id"]) == [
        ("user", "Hello there"),
        ("assistant", "[Hello there]"),
    ]


async def test_continue_by_thread_id_and_by_previous_response_id(client: Client) -> None:
    first = await chat(client, input="My name is Ada.")
    second = await chat(client, input="What is my name?", thread_id=first["thread_id"])
    assert message(second) == "[My name is Ada. | What is my name?]"
    assert second["thread_id"] != first["thread_id"]
    third = await chat(client, input="Again?", previous_response_id=second["thread_id"])
    assert message(third) == "[My name is Ada. | What is my name? | Again?]"
    # Both names for the same id are fine; two different ids are not.
    both = await chat(
        client, input="Both", thread_id=third["thread_id"], previous_response_id=third["thread_id"]
    )
    assert message(both) == "[My name is Ada. | What is my name? | Again? | Both]"
    await expect_error(
        client,
        400,
        param="previous_response_id",
        code="conflicting_parameters",
        json={
            "model": "default",
            "input": "x",
            "thread_id": first["thread_id"],
            "previous_response_id": second["thread_id"],
        },
    )
    assert len({r["thread_id"] for r in (first, second, third, both)}) == 4


async def test_continuing_an_older_thread_id_branches(client: Client) -> None:
    root = await chat(client, input="root")
    left = await chat(client, input="left", thread_id=root["thread_id"])
    right = await chat(client, input="right", thread_id=root["thread_id"])
    assert left["thread_id"] != right["thread_id"]
    assert message(left) == "[root | left]" and message(right) == "[root | right]"
    deeper_left = await chat(client, input="more", thread_id=left["thread_id"])
    deeper_right = await chat(client, input="more", thread_id=right["thread_id"])
    assert message(deeper_left) == "[root | left | more]"
    assert message(deeper_right) == "[root | right | more]"
    assert [c for _, c in history(client, deeper_right["thread_id"])] == [
        "root",
        "[root]",
        "right",
        "[root | right]",
        "more",
        "[root | right | more]",
    ]
    # The branches share the root turns and nothing else.
    assert history(client, left["thread_id"])[:2] == history(client, right["thread_id"])[:2]


async def test_store_false_stores_nothing_and_returns_no_thread_id(client: Client) -> None:
    before = stats(client)
    r = await chat(client, input="secret", store=False)
    assert set(r) == RESULT_KEYS - {"thread_id", "response_id"}
    assert message(r) == "[secret]"
    assert stats(client) == before
    # It may still continue a stored reply, which stays unchanged.
    kept = await chat(client, input="kept")
    after_kept = stats(client)
    peek = await chat(client, input="peek", thread_id=kept["thread_id"], store=False)
    assert message(peek) == "[kept | peek]" and "thread_id" not in peek
    assert stats(client) == after_kept
    frames = await stream(client, input="streamed secret", store=False)
    assert "thread_id" not in frames[-1][1]["result"]
    assert stats(client) == after_kept


async def test_system_prompt_reaches_the_model_and_the_history(make_client: MakeClient) -> None:
    script = EchoScript()
    client = await make_client(script)
    r = await chat(client, input="Hi", system_prompt="Be brief.")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in script.prompts[-1]
    assert history(client, r["thread_id"])[:2] == [("system", "Be brief."), ("user", "Hi")]
    # The continuation carries it from the store; it is not resent.
    await chat(client, input="And?", thread_id=r["thread_id"])
    assert "<|im_start|>system\nBe brief.<|im_end|>" in script.prompts[-1]


async def test_input_items_are_user_turns_and_images_are_refused(client: Client) -> None:
    r = await chat(
        client,
        input=[{"type": "message", "content": "one"}, {"type": "message", "content": "two"}],
    )
    assert message(r) == "[one | two]"
    before = stats(client)
    await expect_error(
        client,
        400,
        param="input[1]",
        code="unsupported_input",
        json={
            "model": "default",
            "input": [
                {"type": "message", "content": "look"},
                {"type": "image", "data_url": "data:image/png;base64,AAAA"},
            ],
        },
    )
    assert stats(client) == before


async def test_sampling_fields_are_accepted(client: Client) -> None:
    r = await chat(
        client,
        input="long:50",
        temperature=0.0,
        top_p=0.9,
        top_k=20,
        repeat_penalty=1.1,
        min_p=0.05,
        context_length=1024,
        reasoning="off",
        integrations=[],
        max_output_tokens=5,
    )
    assert r["stats"]["total_output_tokens"] == 5 and message(r) == " x" * 5
    # A reply cut at max_output_tokens is still a point to continue from.
    nxt = await chat(client, input="go on", thread_id=r["thread_id"])
    assert message(nxt) == "[long:50 | go on]"


async def test_reasoning_is_its_own_output_item(make_client: MakeClient) -> None:
    client = await make_client(ThinkScript())
    r = await chat(client, input="Think first.", reasoning="on")
    assert r["output"] == [
        {"type": "reasoning", "content": "pondering"},
        {"type": "message", "content": "The answer."},
    ]
    s = r["stats"]
    assert 0 < s["reasoning_output_tokens"] < s["total_output_tokens"]


# ---- streaming -------------------------------------------------------------------------------


async def test_stream_events_in_order_and_chat_end_carries_the_result(client: Client) -> None:
    first = await chat(client, input="remember")
    frames = await stream(client, input="streamed", thread_id=first["thread_id"])
    names = [name for name, _ in frames]
    n = len(frames) - 6
    assert n >= 1
    assert names == [
        "chat.start",
        "prompt_processing.start",
        "prompt_processing.end",
        "message.start",
        *["message.delta"] * n,
        "message.end",
        "chat.end",
    ]
    model = client.app[ENGINE].model_name
    assert frames[0][1] == {"type": "chat.start", "model_instance_id": model}
    for _, data in frames[1:4] + frames[-2:-1]:
        assert set(data) == {"type"}
    deltas = [data for _, data in frames[4 : 4 + n]]
    assert all(set(d) == {"type", "content"} for d in deltas)
    text = "".join(d["content"] for d in deltas)
    assert text == "[remember | streamed]"
    end = frames[-1][1]
    assert set(end) == {"type", "result"}
    result = end["result"]
    assert set(result) == RESULT_KEYS and set(result["stats"]) == STATS_KEYS
    assert result["model_instance_id"] == model
    assert result["output"] == [{"type": "message", "content": text}]
    assert result["thread_id"] == result["response_id"] != first["thread_id"]
    nxt = await chat(client, input="after", thread_id=result["thread_id"])
    assert message(nxt) == "[remember | streamed | after]"


async def test_stream_reasoning_events(make_client: MakeClient) -> None:
    client = await make_client(ThinkScript())
    frames = await stream(client, input="Think first.", reasoning="high")
    names = [name for name, _ in frames]
    r_start, r_end = names.index("reasoning.start"), names.index("reasoning.end")
    m_start, m_end = names.index("message.start"), names.index("message.end")
    assert names[:3] == ["chat.start", "prompt_processing.start", "prompt_processing.end"]
    assert 3 == r_start < r_end < m_start < m_end == len(names) - 2
    assert set(names[r_start + 1 : r_end]) == {"reasoning.delta"}
    assert set(names[m_start + 1 : m_end]) == {"message.delta"}
    reasoning = "".join(d["content"] for _, d in frames[r_start + 1 : r_end])
    answer = "".join(d["content"] for _, d in frames[m_start + 1 : m_end])
    assert (reasoning, answer) == ("pondering", "The answer.")
    assert frames[-1][1]["result"]["output"] == [
        {"type": "reasoning", "content": "pondering"},
        {"type": "message", "content": "The answer."},
    ]


async def test_stream_without_reasoning_has_no_reasoning_events(make_client: MakeClient) -> None:
    client = await make_client(ThinkScript())
    frames = await stream(client, input="Think first.", reasoning="off")
    assert not [name for name, _ in frames if name and name.startswith("reasoning.")]
    assert message(frames[-1][1]["result"]).startswith("<think>pondering</think>")


async def test_failed_generation(make_client: MakeClient) -> None:
    client = await make_client(fail_after=2)
    error = await expect_error(
        client, 500, code="server_error", json={"model": "default", "input": "long:10"}
    )
    assert error["type"] == "server_error"
    # Streamed: the error, then the final payload with what was generated and no handle.
    frames = await stream(client, input="long:10")
    names = [name for name, _ in frames]
    assert names == [
        "chat.start",
        "prompt_processing.start",
        "prompt_processing.end",
        "message.start",
        "message.delta",
        "message.delta",
        "message.end",
        "error",
        "chat.end",
    ]
    assert frames[-2][1] == {
        "type": "error",
        "error": {
            "type": "internal_error",
            "message": "the generation failed",
            "code": "server_error",
        },
    }
    result = frames[-1][1]["result"]
    assert message(result) == " x x" and "thread_id" not in result
    # A failed response is kept but is no anchor (here made through the Responses API).
    failed = await (await client.post("/v1/responses", json={"input": "long:10"})).json()
    assert failed["status"] == "failed"
    await expect_error(
        client,
        409,
        param="thread_id",
        json={"model": "default", "input": "x", "thread_id": failed["id"]},
    )


async def test_error_after_the_stream_started_is_an_error_event(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def store_full(*args: Any, **kwargs: Any) -> None:
        raise StoreFull("the store is full")

    monkeypatch.setattr(client.app[ENGINE].recorder, "save", store_full)
    frames = await stream(client, input="doomed")
    assert [name for name, _ in frames][:2] == ["chat.start", "prompt_processing.start"]
    name, data = frames[-1]
    assert name == "error" and data["error"]["type"] == "internal_error"
    assert "chat.end" not in [name for name, _ in frames]


async def test_stream_errors_before_start_are_json(client: Client) -> None:
    await expect_error(
        client,
        404,
        param="thread_id",
        code="not_found",
        json={"model": "default", "input": "x", "stream": True, "thread_id": UNKNOWN_ID},
    )


async def test_disconnect_mid_stream_keeps_the_server_healthy(make_client: MakeClient) -> None:
    client = await make_client(delay_s=0.01, slots=1)
    engine = client.app[ENGINE]
    before = engine.store.stats()["responses"]
    r = await client.post(PATH, json={"model": "default", "input": "long:2000", "stream": True})
    seen = 0
    async for line in r.content:
        if line.startswith(b"event: message.delta"):
            seen += 1
            if seen == 3:
                break
    r.close()  # drops the connection
    for _ in range(300):
        if engine.store.stats()["responses"] == before + 1 and engine.scheduler.busy == 0:
            break
        await asyncio.sleep(0.02)
    # What was generated is stored (incomplete) and the only slot is free again.
    assert engine.store.stats()["responses"] == before + 1
    assert engine.scheduler.busy == 0
    assert message(await chat(client, input="next")) == "[next]"
    assert (await client.get("/health")).status == 200


# ---- errors and tenants ----------------------------------------------------------------------


async def test_bad_requests_are_4xx_naming_the_field(client: Client) -> None:
    stored = await chat(client, input="anchor")
    before = stats(client)
    ok = {"model": "default", "input": "x"}
    deep = b"[" * 10**5 + b"]" * 10**5
    cases: list[tuple[Any, int, str | None, str | None]] = [
        (b"{not json", 400, None, "invalid_json"),
        (b"", 400, None, "invalid_json"),
        (b"[]", 400, None, None),
        (b'"input"', 400, None, None),
        (b'{"model": "default", "input": "\xff"}', 400, None, "invalid_json"),
        (b'{"model": "default", "input": "x", "integrations": %s}' % deep, 400, None, None),
        ({}, 400, "model", None),
        ({"model": "default"}, 400, "input", None),
        ({"input": "x"}, 400, "model", None),
        ({**ok, "model": 5}, 400, "model", None),
        ({**ok, "model": "gpt-9"}, 404, "model", "model_not_found"),
        ({**ok, "input": 5}, 400, "input", None),
        ({**ok, "input": None}, 400, "input", None),
        ({**ok, "input": []}, 400, "input", None),
        ({**ok, "input": ["x"]}, 400, "input[0]", None),
        ({**ok, "input": [{"type": "text", "content": "x"}]}, 400, "input[0].type", None),
        ({**ok, "input": [{"content": "x"}]}, 400, "input[0].type", None),
        ({**ok, "input": [{"type": "message"}]}, 400, "input[0].content", None),
        ({**ok, "input": [{"type": "message", "content": 1}]}, 400, "input[0].content", None),
        (
            {**ok, "input": [{"type": "message", "content": "x", "role": "user"}]},
            400,
            "input[0].role",
            None,
        ),
        ({**ok, "system_prompt": 5}, 400, "system_prompt", None),
        ({**ok, "store": "yes"}, 400, "store", None),
        ({**ok, "stream": 1}, 400, "stream", None),
        ({**ok, "thread_id": 5}, 400, "thread_id", None),
        ({**ok, "thread_id": "thread_abc123"}, 400, "thread_id", None),
        ({**ok, "previous_response_id": "abc"}, 400, "previous_response_id", None),
        ({**ok, "thread_id": UNKNOWN_ID}, 404, "thread_id", "not_found"),
        ({**ok, "previous_response_id": UNKNOWN_ID}, 404, "previous_response_id", "not_found"),
        ({**ok, "temperature": 3}, 400, "temperature", None),
        ({**ok, "temperature": "hot"}, 400, "temperature", None),
        ({**ok, "top_p": 0}, 400, "top_p", None),
        ({**ok, "top_k": -1}, 400, "top_k", None),
        ({**ok, "top_k": 1.5}, 400, "top_k", None),
        ({**ok, "top_k": 2**40}, 400, "top_k", None),
        ({**ok, "min_p": 2}, 400, "min_p", None),
        ({**ok, "repeat_penalty": 0}, 400, "repeat_penalty", None),
        ({**ok, "max_output_tokens": 0}, 400, "max_output_tokens", None),
        ({**ok, "max_output_tokens": -1}, 400, "max_output_tokens", None),
        ({**ok, "max_output_tokens": "9"}, 400, "max_output_tokens", None),
        ({**ok, "max_output_tokens": 10**9}, 400, "max_output_tokens", "invalid_value"),
        ({**ok, "max_output_tokens": 2**70}, 400, "max_output_tokens", None),
        ({**ok, "reasoning": "maybe"}, 400, "reasoning", None),
        ({**ok, "context_length": 0}, 400, "context_length", None),
        ({**ok, "context_length": 10**9}, 400, "context_length", "invalid_value"),
        ({**ok, "integrations": ["mcp/playwright"]}, 400, "integrations", None),
        ({**ok, "frobnicate": True}, 400, "frobnicate", None),
        ({**ok, "input": "word " * 9000}, 400, "input", "context_length_exceeded"),
    ]
    for body, status, param, code in cases:
        kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
        error = await expect_error(client, status, param=param, code=code, **kwargs)
        assert error["type"] in ("invalid_request_error", "not_found_error"), (body, error)
    assert stats(client) == before
    assert message(await chat(client, input="still fine", thread_id=stored["thread_id"]))


async def test_tenants_see_only_their_own_threads(make_client: MakeClient) -> None:
    client = await make_client(api_keys=KEYS)
    await expect_error(client, 401, json={"model": "default", "input": "x"})
    mine = await chat(client, input="alice's", headers=ALICE)
    before = stats(client)
    for field in ("thread_id", "previous_response_id"):
        await expect_error(
            client,
            404,
            param=field,
            code="not_found",
            json={"model": "default", "input": "steal", field: mine["thread_id"]},
            headers=BOB,
        )
    assert stats(client) == before
    theirs = await chat(client, input="bob's", headers=BOB)
    assert message(theirs) == "[bob's]"
    again = await chat(client, input="more", thread_id=mine["thread_id"], headers=ALICE)
    assert message(again) == "[alice's | more]"
    assert history(client, again["thread_id"], owner="alice")[0] == ("user", "alice's")


# ---- across dialects -------------------------------------------------------------------------


async def test_thread_continues_on_the_responses_api_and_back(client: Client) -> None:
    first = await chat(client, input="from lmstudio")
    r = await client.post(
        "/v1/responses", json={"input": "via responses", "previous_response_id": first["thread_id"]}
    )
    assert r.status == 200
    via = await r.json()
    assert via["output"][0]["content"][0]["text"] == "[from lmstudio | via responses]"
    assert via["previous_response_id"] == first["thread_id"]
    back = await chat(client, input="back", thread_id=via["id"])
    assert message(back) == "[from lmstudio | via responses | back]"
    got = await (await client.get(f"/v1/responses/{back['thread_id']}")).json()
    assert got["previous_response_id"] == via["id"]


async def test_answers_match_the_openapi_document(make_client: MakeClient) -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    from threadloom.server import openapi

    doc = openapi.build_document()
    answers = doc["paths"][PATH]["post"]["responses"]

    def check(status: int, body: Any, media: str = "application/json") -> None:
        schema = answers[str(status)]["content"][media]["schema"]
        validator = jsonschema_rs.Draft202012Validator({**schema, "components": doc["components"]})
        assert [e.message for e in validator.iter_errors(body)] == [], (status, body)

    client = await make_client(ThinkScript(), fail_after=6)
    check(200, await chat(client, input="x", reasoning="on", max_output_tokens=2))
    # Failing after "<think>pondering": reasoning events, then the error and chat.end.
    frames = await stream(client, input="x", reasoning="on")
    assert {"reasoning.delta", "error", "chat.end"} <= {name for name, _ in frames}
    for _, frame in frames:
        check(200, frame, "text/event-stream")
    r = await client.post(PATH, json={"model": "default", "input": 5})
    check(400, await r.json())


# ---- the real default model ------------------------------------------------------------------


async def test_real_model_reply_and_continuation(aiohttp_client: Any, tmp_path: Path) -> None:
    pytest.importorskip("ctransformers")
    from threadloom.models import default_model_path

    try:
        default_model_path()
    except ModelNotInstalled as err:
        pytest.skip(str(err))
    app = init_app(config(tmp_path, cache_dir=str(tmp_path / "cache"), slots=1))
    client: Client = await aiohttp_client(app)
    first = await chat(
        client,
        input="My favourite colour is blue.",
        system_prompt="You are a helpful assistant.",
        max_output_tokens=12,
    )
    assert message(first).strip() and first["stats"]["total_output_tokens"] > 0
    frames = await stream(
        client,
        input="What is my favourite colour?",
        thread_id=first["thread_id"],
        max_output_tokens=12,
    )
    result = frames[-1][1]["result"]
    deltas = "".join(d["content"] for name, d in frames if name == "message.delta")
    assert deltas.strip() and message(result) == deltas
    # The continuation's prompt holds the first exchange.
    assert result["stats"]["input_tokens"] > first["stats"]["input_tokens"]
    assert [role for role, _ in history(client, result["thread_id"])] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
