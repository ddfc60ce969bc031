"""`GET /openapi.json`: an OpenAPI 3.1 document built from the msgspec structs the routes decode
and encode, so the document cannot drift from what the server actually accepts.

`OPERATIONS` is the one table of what the server offers. A new dialect adds its rows here,
pointing at its own schema structs; `tests/test_server_openapi.py` fails for a route the app
serves without a row (and for a row no route serves).

`/openapi.json` is open (in `OPEN_PATHS`) even when API keys are configured: it only describes
what the public source already says, and tools fetch it before they have a key.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import msgspec
from aiohttp import web

from threadloom.server.schemas import chat as c
from threadloom.server.schemas import common
from threadloom.server.schemas import conversations as cv
from threadloom.server.schemas import freddy as fr
from threadloom.server.schemas import lmstudio as lm
from threadloom.server.schemas import paddler as pd
from threadloom.server.schemas import responses as r
from threadloom.server.schemas import tokenize as tk
from threadloom.server.schemas import tree as tr

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{name}"
JSON = "application/json"
SSE = "text/event-stream"
_PATH_PARAM = re.compile(r"\{(?P<name>[^}:]+)(?::[^}]*)?\}")

# What each error status means here. Error bodies are `ErrorBody` unless a row says otherwise.
ERROR_DESCRIPTIONS: Mapping[int, str] = {
    400: "The request is invalid: bad JSON, a field out of range, or a prompt over the context.",
    401: "The API key is missing or unknown.",
    404: "The model, or the object named in the path or body, does not exist for this tenant.",
    409: "The object is in a state that does not allow this (a failed response, a locked thread).",
    413: "The request body is larger than the configured limit.",
    429: "Every slot is busy and the waiting queue is full; retry after `Retry-After` seconds.",
    500: "The generation failed.",
}
GENERATION_ERRORS = (400, 404, 409, 413, 429, 500)


@dataclass(frozen=True)
class Operation:
    """One method on one path template, as aiohttp's router spells the template."""

    method: str
    path: str
    operation_id: str
    summary: str
    # The 200 body: a type msgspec can describe (a struct, `str`, `dict[str, Any]`...).
    response: Any
    tag: str
    request: Any = None
    # With `"stream": true` in the body, the 200 answer is server-sent events whose `data` are
    # these (name, type): the name is the component the event union is published under.
    stream: tuple[str, Any] | None = None
    # A struct whose fields are the query parameters.
    query: type[msgspec.Struct] | None = None
    # Types of path parameters; a parameter not named here is a plain string.
    path_params: Mapping[str, Any] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    # The body of every error status: a dialect that registered its own error format with
    # `middleware.register_error_format` names that shape here.
    error_body: Any = common.ErrorBody
    media_type: str = JSON
    authenticated: bool = True
    description: str | None = None


OPERATIONS: tuple[Operation, ...] = (
    # ---- dialect-neutral -------------------------------------------------------------------
    Operation(
        "GET",
        "/health",
        "getHealth",
        "Liveness, model and slot usage",
        common.Health,
        tag="server",
        authenticated=False,
    ),
    Operation(
        "GET",
        "/metrics",
        "getMetrics",
        "Prometheus metrics (text exposition format 0.0.4)",
        str,
        tag="server",
        media_type="text/plain",
    ),
    Operation(
        "GET",
        "/openapi.json",
        "getOpenApi",
        "This document",
        dict[str, Any],
        tag="server",
        authenticated=False,
    ),
    Operation(
        "GET", "/v1/models", "listModels", "The served model", common.ModelList, tag="models"
    ),
    # ---- OpenAI Responses ------------------------------------------------------------------
    Operation(
        "POST",
        "/v1/responses",
        "createResponse",
        "Generate a reply; continue a conversation with previous_response_id",
        r.ResponseObject,
        tag="responses",
        request=r.CreateResponse,
        stream=("ResponseStreamEvent", r.StreamEvent),
        errors=GENERATION_ERRORS,
    ),
    Operation(
        "POST",
        "/v1/responses/input_tokens",
        "countInputTokens",
        "The prompt tokens a POST /v1/responses with this body would use; nothing runs",
        r.InputTokens,
        tag="responses",
        request=r.CreateResponse,
        errors=(400, 404, 409, 413),
    ),
    Operation(
        "GET",
        "/v1/responses/{response_id}",
        "getResponse",
        "A stored response",
        r.ResponseObject,
        tag="responses",
        path_params={"response_id": r.ResponseId},
        errors=(400, 404),
    ),
    Operation(
        "DELETE",
        "/v1/responses/{response_id}",
        "deleteResponse",
        "Delete a stored response",
        r.DeletedResponse,
        tag="responses",
        path_params={"response_id": r.ResponseId},
        errors=(400, 404),
    ),
    Operation(
        "POST",
        "/v1/responses/{response_id}/cancel",
        "cancelResponse",
        "Stop a background response; answers with it as stored (incomplete)",
        r.ResponseObject,
        tag="responses",
        path_params={"response_id": r.ResponseId},
        errors=(400, 404),
    ),
    Operation(
        "GET",
        "/v1/responses/{response_id}/input_items",
        "listInputItems",
        "The input messages of a stored response, paginated",
        r.InputItemList,
        tag="responses",
        query=r.InputItemsQuery,
        path_params={"response_id": r.ResponseId},
        errors=(400, 404),
    ),
    # ---- OpenAI Conversations (a conversation is a thread) ----------------------------------
    Operation(
        "POST",
        "/v1/conversations",
        "createConversation",
        "Create a conversation, with up to 20 first items",
        cv.Conversation,
        tag="conversations",
        request=cv.CreateConversation,
        errors=(400, 413),
    ),
    Operation(
        "GET",
        "/v1/conversations",
        "listConversations",
        "The tenant's conversations (every visible thread), newest activity first",
        cv.ConversationList,
        tag="conversations",
        query=cv.ListQuery,
        errors=(400,),
    ),
    Operation(
        "GET",
        "/v1/conversations/{conversation_id}",
        "getConversation",
        "A conversation",
        cv.Conversation,
        tag="conversations",
        path_params={"conversation_id": fr.ThreadId},
        errors=(400, 404),
    ),
    Operation(
        "POST",
        "/v1/conversations/{conversation_id}",
        "updateConversation",
        "Replace a conversation's metadata",
        cv.Conversation,
        tag="conversations",
        request=cv.UpdateConversation,
        path_params={"conversation_id": fr.ThreadId},
        errors=(400, 404, 413),
    ),
    Operation(
        "DELETE",
        "/v1/conversations/{conversation_id}",
        "deleteConversation",
        "Delete a conversation (its thread)",
        cv.ConversationDeleted,
        tag="conversations",
        path_params={"conversation_id": fr.ThreadId},
        errors=(400, 404),
    ),
    Operation(
        "GET",
        "/v1/conversations/{conversation_id}/items",
        "listConversationItems",
        "A page of a conversation's items",
        cv.ItemList,
        tag="conversations",
        query=cv.ItemsQuery,
        path_params={"conversation_id": fr.ThreadId},
        errors=(400, 404),
    ),
    Operation(
        "POST",
        "/v1/conversations/{conversation_id}/items",
        "createConversationItems",
        "Append up to 20 items (messages, function calls, their outputs) to a conversation",
        cv.ItemList,
        tag="conversations",
        request=cv.AddItems,
        path_params={"conversation_id": fr.ThreadId},
        errors=(400, 404, 409, 413),
    ),
    Operation(
        "GET",
        "/v1/conversations/{conversation_id}/items/{item_id}",
        "getConversationItem",
        "One item of a conversation (a message, function_call or function_call_output)",
        cv.AnyItem,
        tag="conversations",
        path_params={"conversation_id": fr.ThreadId},
        errors=(400, 404),
    ),
    Operation(
        "DELETE",
        "/v1/conversations/{conversation_id}/items/{item_id}",
        "deleteConversationItem",
        "Delete an item; answers the conversation",
        cv.Conversation,
        tag="conversations",
        path_params={"conversation_id": fr.ThreadId},
        errors=(400, 404, 409),
        description=(
            "Turns are immutable and form a tree, so the conversation moves to a new path "
            "without the item: the items after it are stored again, under new ids, after the "
            "item's parent, and the conversation's head moves to the last of them, in one store "
            "transaction (deleting the newest item just moves the head back). Responses that "
            "reached the item keep it. 404 when the item is not on the conversation's path; 409 "
            "when the conversation is locked or archived."
        ),
    ),
    # ---- OpenAI Chat Completions ----------------------------------------------------------
    Operation(
        "POST",
        "/v1/chat/completions",
        "createChatCompletion",
        "Generate a reply to a whole conversation (stateless)",
        c.ChatCompletion,
        tag="chat",
        request=c.ChatRequest,
        stream=("ChatCompletionChunk", c.ChatCompletionChunk),
        errors=GENERATION_ERRORS,
    ),
    # ---- LM Studio native REST ------------------------------------------------------------
    Operation(
        "POST",
        "/api/v1/chat",
        "lmstudioChat",
        "Generate a reply; continue a stored chat from any reply's thread_id (branching)",
        lm.ChatResult,
        tag="lmstudio",
        request=lm.StatefulChatRequest,
        stream=("LMStudioChatEvent", lm.StreamEvent),
        errors=GENERATION_ERRORS,
    ),
    # ---- Paddler ---------------------------------------------------------------------------
    Operation(
        "POST",
        "/api/v1/continue_from_conversation_history",
        "paddlerContinueFromConversationHistory",
        "Generate from a whole conversation (stateless), streamed as JSON frames",
        pd.ResponseFrame,
        tag="paddler",
        request=pd.ContinueFromConversationHistory,
        errors=(400, 413, 429, 500),
        error_body=pd.ErrorFrame,
        description=(
            "The body is newline-delimited JSON: one frame per generated token, then a frame "
            'whose `generated_token_result` is `"Done"`, or an error frame if the generation '
            "fails after the stream started."
        ),
    ),
    # ---- tokens ----------------------------------------------------------------------------
    Operation(
        "POST",
        "/api/v1/tokenize",
        "tokenize",
        "Token ids (and optionally pieces) of a text, or of messages rendered by the template",
        tk.TokenizeResponse,
        tag="tokens",
        request=tk.TokenizeRequest,
        errors=(400, 413),
    ),
    Operation(
        "POST",
        "/api/v1/tokenize/count",
        "countTokens",
        "The token count of a text, or of messages rendered by the chat template",
        tk.TokenCount,
        tag="tokens",
        request=tk.TokenizeRequest,
        errors=(400, 413),
    ),
    # ---- Freddy threads -------------------------------------------------------------------
    Operation(
        "POST",
        "/v1/model/response",
        "createModelResponse",
        "Generate a reply in a thread (created when new), or continue a previousResponseId",
        fr.ModelResponse,
        tag="threads",
        request=fr.CreateModelResponse,
        errors=GENERATION_ERRORS,
    ),
    Operation(
        "POST",
        "/v1/threads",
        "createThread",
        "Create an empty thread",
        fr.ThreadObject,
        tag="threads",
        request=fr.CreateThread,
        errors=(400, 409, 413),
    ),
    Operation(
        "GET",
        "/v1/threads",
        "listThreads",
        "The visible threads (or, with visible_in_ui=false, the hidden ones), newest first",
        fr.ThreadList,
        tag="threads",
        query=fr.ListThreadsQuery,
        errors=(400,),
    ),
    Operation(
        "GET",
        "/v1/threads/{thread_id}",
        "getThread",
        "A thread",
        fr.ThreadObject,
        tag="threads",
        path_params={"thread_id": fr.ThreadId},
        errors=(400, 404),
    ),
    Operation(
        "PATCH",
        "/v1/threads/{thread_id}",
        "updateThread",
        "Replace a thread's metadata or change its state",
        fr.ThreadObject,
        tag="threads",
        request=fr.UpdateThread,
        path_params={"thread_id": fr.ThreadId},
        errors=(400, 404, 409, 413),
    ),
    Operation(
        "DELETE",
        "/v1/threads/{thread_id}",
        "deleteThread",
        "Delete a thread",
        fr.DeletedThread,
        tag="threads",
        path_params={"thread_id": fr.ThreadId},
        errors=(400, 404),
    ),
    Operation(
        "GET",
        "/v1/threads/{thread_id}/messages",
        "listThreadMessages",
        "A page of a thread's messages (the newest, or those before `before`), oldest first, "
        "whichever dialect added them",
        fr.MessageList,
        tag="threads",
        query=fr.MessagesQuery,
        path_params={"thread_id": fr.ThreadId},
        errors=(400, 404),
    ),
    # ---- thread trees: branches and replies from any turn (routes/tree.py) -----------------
    Operation(
        "GET",
        "/v1/threads/{thread_id}/tree",
        "getThreadTree",
        "Every turn of a thread and of its recorded branches, with children and branch points",
        tr.ThreadTree,
        tag="threads",
        path_params={"thread_id": fr.ThreadId},
        errors=(400, 404),
    ),
    Operation(
        "GET",
        "/v1/threads/{thread_id}/turns/{turn_id}/children",
        "listTurnChildren",
        "The turns that continue one turn of a thread's tree, oldest first",
        tr.TurnChildren,
        tag="threads",
        path_params={"thread_id": fr.ThreadId},
        errors=(400, 404),
    ),
    Operation(
        "POST",
        "/v1/threads/{thread_id}/continue",
        "continueThread",
        "Reply after the thread's head (into the thread), after any turn of its tree (a "
        "branch) or as a new first message (`after: root`)",
        tr.ContinueResult,
        tag="threads",
        request=tr.ContinueRequest,
        stream=("ThreadReplyStreamEvent", tr.StreamEvent),
        path_params={"thread_id": fr.ThreadId},
        errors=GENERATION_ERRORS,
    ),
    # ---- the web page (routes/page.py) ------------------------------------------------------
    Operation(
        "GET",
        "/",
        "getWebPage",
        "The web page: browse, read and continue conversations and their branch trees",
        str,
        tag="server",
        media_type="text/html",
        authenticated=False,
    ),
    Operation(
        "GET",
        "/ui/{name}",
        "getWebAsset",
        "A script, style sheet or image of the web page",
        str,
        tag="server",
        media_type="text/plain",
        errors=(404,),
        authenticated=False,
    ),
)

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
