"""What the server offers, as one table: every method on every path, the msgspec structs it
decodes and answers with, its streaming events and its errors. `openapi.py` builds the
published document from it; a new dialect adds its rows here, pointing at its own schema
structs (`tests/test_server_openapi.py` fails for a route the app serves without a row, and for
a row no route serves)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from threadloom.server.schemas import chat as c
from threadloom.server.schemas import common, ids
from threadloom.server.schemas import compaction as cp
from threadloom.server.schemas import conversations as cv
from threadloom.server.schemas import freddy as fr
from threadloom.server.schemas import lmstudio as lm
from threadloom.server.schemas import lmstudio_models as lmm
from threadloom.server.schemas import paddler as pd
from threadloom.server.schemas import responses as r
from threadloom.server.schemas import tokenize as tk
from threadloom.server.schemas import tree as tr

JSON = "application/json"
SSE = "text/event-stream"

# What each error status means here. Error bodies are `ErrorBody` unless a row says otherwise.
ERROR_DESCRIPTIONS: Mapping[int, str] = {
    400: "The request is invalid: bad JSON, a field out of range, or a prompt over the context.",
    401: "The API key is missing or unknown.",
    403: "The key is a tenant's; this takes the operator's key (--metrics-key).",
    404: "The model, or the object named in the path or body, does not exist for this tenant.",
    409: "The object is in a state that does not allow this (a failed response, a locked thread).",
    413: "The request body is larger than the configured limit.",
    429: "Every slot is busy and the waiting queue is full; retry after `Retry-After` seconds.",
    500: "The generation failed.",
    503: "The model named could not be loaded (the log says why), or the store is unavailable.",
}
GENERATION_ERRORS = (400, 404, 409, 413, 429, 500, 503)


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
        "GET",
        "/v1/models",
        "listModels",
        "The declared models, and whether each is loaded",
        common.ModelList,
        tag="models",
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
        "/v1/responses/compact",
        "compactResponse",
        "Summarise a conversation into a sealed compaction item (with its user messages)",
        cp.CompactedResponse,
        tag="responses",
        request=cp.CompactRequest,
        errors=(400, 404, 413, 429, 500),
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
        path_params={"response_id": ids.ResponseId},
        errors=(400, 404),
    ),
    Operation(
        "DELETE",
        "/v1/responses/{response_id}",
        "deleteResponse",
        "Delete a stored response (a running one is stopped and stored first)",
        r.DeletedResponse,
        tag="responses",
        path_params={"response_id": ids.ResponseId},
        errors=(400, 404, 409),
    ),
    Operation(
        "POST",
        "/v1/responses/{response_id}/cancel",
        "cancelResponse",
        "Stop a background response; answers with it as stored (incomplete)",
        r.ResponseObject,
        tag="responses",
        path_params={"response_id": ids.ResponseId},
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
        path_params={"response_id": ids.ResponseId},
        errors=(400, 404, 409),
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
        path_params={"conversation_id": ids.ThreadId},
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
        path_params={"conversation_id": ids.ThreadId},
        errors=(400, 404, 413),
    ),
    Operation(
        "DELETE",
        "/v1/conversations/{conversation_id}",
        "deleteConversation",
        "Delete a conversation (its thread)",
        cv.ConversationDeleted,
        tag="conversations",
        path_params={"conversation_id": ids.ThreadId},
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
        path_params={"conversation_id": ids.ThreadId},
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
        path_params={"conversation_id": ids.ThreadId},
        errors=(400, 404, 409, 413),
    ),
    Operation(
        "GET",
        "/v1/conversations/{conversation_id}/items/{item_id}",
        "getConversationItem",
        "One item of a conversation (a message, function_call or function_call_output)",
        cv.AnyItem,
        tag="conversations",
        path_params={"conversation_id": ids.ThreadId},
        errors=(400, 404),
    ),
    Operation(
        "DELETE",
        "/v1/conversations/{conversation_id}/items/{item_id}",
        "deleteConversationItem",
        "Delete an item; answers the conversation",
        cv.Conversation,
        tag="conversations",
        path_params={"conversation_id": ids.ThreadId},
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
    Operation(
        "GET",
        "/api/v1/models",
        "lmstudioListModels",
        "The declared models with their loaded instance (one per model)",
        lmm.ModelList,
        tag="lmstudio",
    ),
    Operation(
        "POST",
        "/api/v1/models/load",
        "lmstudioLoadModel",
        "Load a declared model now (with API keys: the operator's key)",
        lmm.LoadResult,
        tag="lmstudio",
        request=lmm.LoadRequest,
        errors=(400, 403, 404, 429, 503),
    ),
    Operation(
        "POST",
        "/api/v1/models/unload",
        "lmstudioUnloadModel",
        "Unload a model; its running replies stop and are stored (the operator's key)",
        lmm.UnloadResult,
        tag="lmstudio",
        request=lmm.UnloadRequest,
        errors=(400, 403, 404),
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
        path_params={"thread_id": ids.ThreadId},
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
        path_params={"thread_id": ids.ThreadId},
        errors=(400, 404, 409, 413),
    ),
    Operation(
        "DELETE",
        "/v1/threads/{thread_id}",
        "deleteThread",
        "Delete a thread",
        fr.DeletedThread,
        tag="threads",
        path_params={"thread_id": ids.ThreadId},
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
        path_params={"thread_id": ids.ThreadId},
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
        path_params={"thread_id": ids.ThreadId},
        errors=(400, 404),
    ),
    Operation(
        "GET",
        "/v1/threads/{thread_id}/turns/{turn_id}/children",
        "listTurnChildren",
        "The turns that continue one turn of a thread's tree, oldest first",
        tr.TurnChildren,
        tag="threads",
        path_params={"thread_id": ids.ThreadId},
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
        path_params={"thread_id": ids.ThreadId},
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
