"""`GET /openapi.json`: an OpenAPI 3.1 document built from the msgspec structs the routes decode
and encode, so the document cannot drift from what the server actually accepts.

`operations.OPERATIONS` is the one table of what the server offers; this module turns it into
the document.

`/openapi.json` is open (in `OPEN_PATHS`) even when API keys are configured: it only describes
what the public source already says, and tools fetch it before they have a key.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

import msgspec
from aiohttp import web

from threadloom.server.operations import (
    ERROR_DESCRIPTIONS,
    JSON,
    OPERATIONS,
    SSE,
    Operation,
)

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{name}"
_PATH_PARAM = re.compile(r"\{(?P<name>[^}:]+)(?::[^}]*)?\}")

SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key as a token."},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
# Either scheme suffices.
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyHeader": []}]


def path_param_names(path: str) -> list[str]:
    return [m.group("name") for m in _PATH_PARAM.finditer(path)]


class _Schemas:
    """Every type the table names, described in one `schema_components` call so that structs
    with the same name from different dialects get distinct component names."""

    def __init__(self, named: Mapping[str, Any], types: list[Any]) -> None:
        self._index = {id(t): i for i, t in enumerate(types)}
        inline, self.components = msgspec.json.schema_components(types, ref_template=REF)
        self._inline = list(inline)
        for name, t in named.items():
            schema = self.of(t)
            # A union has no component of its own; publish it under the name it was given.
            if "$ref" not in schema:
                self.components[name] = schema
                self._inline[self._index[id(t)]] = {"$ref": REF.format(name=name)}

    def of(self, t: Any) -> dict[str, Any]:
        return self._inline[self._index[id(t)]]


def _collect(operations: tuple[Operation, ...]) -> tuple[dict[str, Any], list[Any]]:
    named: dict[str, Any] = {}
    types: list[Any] = []
    for op in operations:
        types.extend([op.response, op.error_body, *op.path_params.values()])
        if op.request is not None:
            types.append(op.request)
        if op.query is not None:
            types.append(op.query)
        if op.stream is not None:
            named[op.stream[0]] = op.stream[1]
            types.append(op.stream[1])
    unique = list({id(t): t for t in types}.values())
    return named, unique


def _parameters(op: Operation, schemas: _Schemas) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in path_param_names(op.path):
        typed = name in op.path_params
        schema = schemas.of(op.path_params[name]) if typed else {"type": "string"}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if op.query is not None:
        ref = schemas.of(op.query)["$ref"]
        struct = schemas.components[ref.rsplit("/", 1)[1]]
        required = set(struct.get("required", ()))
        for name, schema in struct["properties"].items():
            params.append(
                {"name": name, "in": "query", "required": name in required, "schema": schema}
            )
    return params


def _operation(op: Operation, schemas: _Schemas) -> dict[str, Any]:
    content: dict[str, Any] = {op.media_type: {"schema": schemas.of(op.response)}}
    ok = "OK"
    if op.stream is not None:
        content[SSE] = {"schema": schemas.of(op.stream[1])}
        ok = (
            f'OK. With `"stream": true` the body is `{SSE}`: one `data:` frame per '
            "event, each a JSON object of this schema."
        )
    responses: dict[str, Any] = {"200": {"description": ok, "content": content}}
    statuses = sorted({*op.errors, *((401,) if op.authenticated else ())})
    for status in statuses:
        responses[str(status)] = {
            "description": ERROR_DESCRIPTIONS[status],
            "content": {JSON: {"schema": schemas.of(op.error_body)}},
        }
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if op.description:
        out["description"] = op.description
    params = _parameters(op, schemas)
    if params:
        out["parameters"] = params
    if op.request is not None:
        out["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": schemas.of(op.request)}},
        }
    if not op.authenticated:
        out["security"] = []  # overrides the document-wide requirement
    return out


def build_document(operations: tuple[Operation, ...] = OPERATIONS) -> dict[str, Any]:
    named, types = _collect(operations)
    schemas = _Schemas(named, types)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item = paths.setdefault(op.path, {})
        method = op.method.lower()
        if method in item:
            raise ValueError(f"two rows for {op.method} {op.path}")
        item[method] = _operation(op, schemas)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "threadloom",
            "version": _version(),
            "description": "Stateful, branching conversations for local LLMs.",
        },
        "paths": paths,
        "components": {
            "schemas": _reachable(paths, schemas.components),
            "securitySchemes": SECURITY_SCHEMES,
        },
        "security": SECURITY,
    }


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value.rsplit("/", 1)[1]
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _reachable(paths: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """The components the paths use, directly or through other components: a query struct is
    spelled out as parameters and would otherwise linger as an unused component."""
    seen: set[str] = set()
    todo = list(_refs(paths))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_refs(components[name]))
    return {name: components[name] for name in sorted(seen)}


def _version() -> str:
    try:
        return metadata.version("threadloom")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@functools.cache
def document_bytes() -> bytes:
    """Built once per process: the table is fixed at import time."""
    return msgspec.json.encode(build_document())


async def openapi_handler(request: web.Request) -> web.Response:
    return web.Response(body=document_bytes(), content_type=JSON)


def setup(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_handler)
