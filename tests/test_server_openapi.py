"""`GET /openapi.json`: the document's structure (every `$ref` resolves, every schema is valid
JSON Schema 2020-12), that it lists exactly the routes the app serves, and that real answers
validate against the schemas it publishes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("aiohttp")
from aiohttp.test_utils import TestClient
from server_support import parse_sse, scripted_app
from threadloom.server import openapi

# Comes with schemathesis (the test extra): validates schemas and bodies as JSON Schema 2020-12.
jsonschema_rs = pytest.importorskip("jsonschema_rs")
pytestmark = pytest.mark.asyncio

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi.build_document()


make_app = scripted_app


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> TestClient:
    return await aiohttp_client(make_app(tmp_path))  # type: ignore[no-any-return]


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert method in METHODS, (path, method)
            yield method, path, op


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A 2020-12 validator for `schema` whose `#/components/...` refs resolve in `doc`."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": doc["components"]})


# ---- structure -------------------------------------------------------------------------------


async def test_document_structure(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] == "threadloom" and doc["info"]["version"]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearerAuth"]["description"],
    }
    assert schemes["apiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for requirement in doc["security"]:
        assert set(requirement) <= set(schemes)
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    rows = {row.operation_id: row for row in openapi.OPERATIONS}
    for method, path, op in operations(doc):
        where = f"{method.upper()} {path}"
        assert op["summary"] and op["tags"], where
        assert "200" in op["responses"], where
        # The shape a row declares for its errors (ErrorBody unless its dialect has its own).
        error_name = rows[op["operationId"]].error_body.__name__
        for status, response in op["responses"].items():
            assert response["description"], (where, status)
            if status != "200":
                [(media, body)] = response["content"].items()
                assert media == "application/json"
                assert resolve(doc, body["schema"]["$ref"])["title"] == error_name, where
        # Path parameters: exactly the template's, all required.
        declared = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
        assert declared == openapi.path_param_names(path), where
        assert all(p["required"] for p in op.get("parameters", []) if p["in"] == "path")
        if op.get("security") == []:
            assert "401" not in op["responses"], where
        else:
            assert "401" in op["responses"], where
        if method in ("get", "delete"):
            assert "requestBody" not in op, where


async def test_every_ref_resolves_and_every_schema_is_valid(doc: dict[str, Any]) -> None:
    seen = set(refs(doc))
    assert "#/components/schemas/ErrorBody" in seen
    for ref in seen:
        target = resolve(doc, ref)
        assert isinstance(target, dict), ref
    for name, schema in doc["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    # Every component is used somewhere (no dead weight from a removed row).
    used = {ref.rsplit("/", 1)[1] for ref in seen}
    assert set(doc["components"]["schemas"]) == used


async def test_the_document_lists_exactly_the_routes_the_app_serves(
    doc: dict[str, Any], tmp_path: Path
) -> None:
    app = make_app(tmp_path)  # never started: the router is filled in init_app
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(method, path) for method, path, _ in operations(doc)}
    missing, stale = sorted(served - documented), sorted(documented - served)
    assert not missing, f"routes without a row in openapi.OPERATIONS: {missing}"
    assert not stale, f"rows in openapi.OPERATIONS that no route serves: {stale}"


async def test_streaming_operations_describe_their_events(doc: dict[str, Any]) -> None:
    create = doc["paths"]["/v1/responses"]["post"]["responses"]["200"]["content"]
    events = resolve(doc, create["text/event-stream"]["schema"]["$ref"])
    tags = set(events["discriminator"]["mapping"])
    assert {"response.created", "response.output_text.delta", "response.completed"} <= tags
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert chat["text/event-stream"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionChunk"
    }


async def test_two_rows_for_one_operation_are_refused() -> None:
    row = openapi.OPERATIONS[0]
    with pytest.raises(ValueError, match="two rows"):
        openapi.build_document((row, row))


# ---- served ----------------------------------------------------------------------------------


async def test_served_document_is_open_and_equals_the_built_one(
    aiohttp_client: Any, tmp_path: Path, doc: dict[str, Any]
) -> None:
    client = await aiohttp_client(make_app(tmp_path, api_keys={"k1": "alice"}))
    r = await client.get("/openapi.json")
    assert r.status == 200 and r.content_type == "application/json"
    assert await r.json() == doc
    assert (await client.get("/metrics")).status == 401  # the document is open, not the rest


async def test_real_answers_validate_against_the_document(
    client: TestClient, doc: dict[str, Any]
) -> None:
    def check(
        method: str, path: str, status: int, body: Any, media: str = "application/json"
    ) -> None:
        responses = doc["paths"][path][method]["responses"]
        schema = responses[str(status)]["content"][media]["schema"]
        errors = [e.message for e in validator(doc, schema).iter_errors(body)]
        assert errors == [], (method, path, status, errors)

    r = await client.post("/v1/responses", json={"input": "Hello", "metadata": {"a": "b"}})
    created = await r.json()
    check("post", "/v1/responses", 200, created)
    one = "/v1/responses/{response_id}"
    rid = created["id"]
    check("get", one, 200, await (await client.get(f"/v1/responses/{rid}")).json())
    items = await (await client.get(f"/v1/responses/{rid}/input_items")).json()
    check("get", one + "/input_items", 200, items)
    # The documented query constraints are the ones the server enforces.
    params = doc["paths"][one + "/input_items"]["get"]["parameters"]
    [limit] = [p for p in params if p["name"] == "limit"]
    assert limit["in"] == "query" and limit["schema"]["maximum"] == 100
    r = await client.get(f"/v1/responses/{rid}/input_items", params={"limit": "101"})
    check("get", one + "/input_items", 400, await r.json())
    r = await client.post("/v1/responses", json={"input": "streamed", "stream": True})
    for _, frame in parse_sse(await r.text()):
        check("post", "/v1/responses", 200, frame, "text/event-stream")
    messages = [{"role": "user", "content": "hi"}]
    r = await client.post("/v1/chat/completions", json={"messages": messages})
    check("post", "/v1/chat/completions", 200, await r.json())
    r = await client.post("/v1/chat/completions", json={"messages": messages, "stream": True})
    text = await r.text()
    assert text.endswith("data: [DONE]\n\n")
    for _, frame in parse_sse(text.removesuffix("data: [DONE]\n\n")):
        check("post", "/v1/chat/completions", 200, frame, "text/event-stream")
    check("get", "/v1/models", 200, await (await client.get("/v1/models")).json())
    check("get", "/health", 200, await (await client.get("/health")).json())
    check("delete", one, 200, await (await client.delete(f"/v1/responses/{rid}")).json())
    r = await client.get(f"/v1/responses/{rid}")
    check("get", one, 404, await r.json())
    r = await client.post("/v1/responses", json={"input": "x", "temperature": 9})
    check("post", "/v1/responses", 400, await r.json())
