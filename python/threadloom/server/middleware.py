"""The error middleware (every failure becomes a JSON error) and API-key authentication.

Errors are OpenAI-shaped (`{"error": {message, type, param, code}}`) unless the route declared
its dialect's own shape with `register_error_format`. Either way `to_api_error` alone decides
the status, message and headers; a dialect's formatter only shapes the body."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from threadloom.errors import (
    ContextLengthExceeded,
    InvalidInput,
    LimitExceeded,
    ModelNotFound,
    ModelUnavailable,
    NotFound,
    Overloaded,
    StateConflict,
    StoreUnavailable,
    ThreadloomError,
)
from threadloom.server.errors import ApiError, ErrorFormatter
from threadloom.server.keys import ERROR_FORMATS, OWNER, REQUEST_ID
from threadloom.server.schemas.common import ErrorBody, ErrorDetail

log = logging.getLogger("threadloom.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# /openapi.json describes only what the public source says; tools fetch it before a key.
OPEN_PATHS = frozenset({"/health", "/openapi.json", "/"})
METRICS_PATH = "/metrics"
# What only the operator's key may call once API keys are configured: /metrics tells about
# every tenant, and loading or unloading a model changes every tenant's service.
OPERATOR_PATHS = frozenset({METRICS_PATH, "/api/v1/models/load", "/api/v1/models/unload"})
# The web page's static files (routes/page.py): the page asks for a key and sends it itself.
OPEN_PREFIXES = ("/ui/",)
RETRY_AFTER_S = "1"

_encoder = msgspec.json.Encoder()
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
# An unknown or missing field is named after the path of the object that holds it.
_FIELD = re.compile(r"(?:unknown|missing required) field `(?P<field>[^`]*)`")


def validation_param(message: str) -> str | None:
    """The field msgspec names in a validation error, as `a.b[0].c` (None: the whole body)."""
    path = ""
    m = _PATH.search(message)
    if m:
        path = m.group("path").lstrip(".")
    u = _FIELD.search(message)
    if u:
        path = f"{path}.{u.group('field')}" if path else u.group("field")
    return path or None


def register_error_format(app: web.Application, path: str, formatter: ErrorFormatter) -> None:
    """Declares the error body for every failure of the route at `path` (as registered, with
    its `{placeholders}`): decoding, auth, the engine, and 404/405 on that exact path. Call it
    from a route module's `setup(app)`."""
    if ERROR_FORMATS not in app:
        app[ERROR_FORMATS] = {}
    app[ERROR_FORMATS][path] = formatter


def error_formatter(request: web.Request) -> ErrorFormatter | None:
    formats = request.app.get(ERROR_FORMATS)
    if not formats:
        return None
    # A request that matched no route (404, 405) has no resource; its path still names it.
    resource = request.match_info.route.resource
    return formats.get(resource.canonical if resource is not None else request.path)


def error_body(error: ApiError) -> ErrorBody:
    """The OpenAI-shaped error body, the default for every route."""
    return ErrorBody(
        error=ErrorDetail(
            message=error.message, type=error.type, param=error.param, code=error.code
        )
    )


def error_response(error: ApiError, request: web.Request | None = None) -> web.Response:
    formatter = error_formatter(request) if request is not None else None
    body: object
    if formatter is not None and request is not None:
        body = formatter(request, error)
    else:
        body = error_body(error)
    return web.Response(
        body=_encoder.encode(body),
        status=error.status,
        content_type="application/json",
        headers=error.headers,
    )


def to_api_error(e: BaseException) -> ApiError:
    """Maps an exception from decoding, the engine or the store to its client-facing error."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, msgspec.ValidationError):
        message = str(e)
        return ApiError(400, message, param=validation_param(message), code="invalid_value")
    if isinstance(e, msgspec.DecodeError):
        return ApiError(400, f"invalid JSON body: {e}", code="invalid_json")
    if isinstance(e, ModelNotFound):
        return ApiError(404, str(e), param=e.param, code="model_not_found")
    if isinstance(e, NotFound):
        return ApiError(404, str(e), param=e.param, code="not_found")
    if isinstance(e, ModelUnavailable):
        # Its file is broken or its backend failed: the other models keep serving.
        return ApiError(503, str(e), param=e.param, type="server_error", code="model_unavailable")
    if isinstance(e, StateConflict):
        return ApiError(409, str(e), param=e.param, code="conflict")
    if isinstance(e, ContextLengthExceeded):
        return ApiError(400, str(e), param="input", code="context_length_exceeded")
    if isinstance(e, LimitExceeded):
        return ApiError(400, str(e), param=e.param, code="limit_exceeded")
    if isinstance(e, InvalidInput):
        return ApiError(400, str(e), param=e.param, code="invalid_value")
    if isinstance(e, StoreUnavailable):
        # The database is down or saturated: a retryable outage, not a bug. The detail (which
        # names the database host) goes to the log, not to clients.
        log.warning("store unavailable: %s", e)
        return ApiError(
            503,
            "the conversation store is unavailable; retry later",
            type="server_error",
            code="store_unavailable",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    if isinstance(e, Overloaded):
        return ApiError(
            429,
            "the server is busy; retry later",
            type="rate_limit_error",
            code="overloaded",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    if isinstance(e, web.HTTPException):
        if e.status == 413:
            return ApiError(413, "the request body is too large", code="body_too_large")
        kind = "not_found_error" if e.status == 404 else "invalid_request_error"
        return ApiError(e.status, e.reason, type=kind, headers=_allowed(e.headers))
    return ApiError(500, "internal server error", type="server_error", code="internal_error")


def _allowed(headers: Mapping[str, str]) -> dict[str, str]:
    return {"Allow": headers["Allow"]} if "Allow" in headers else {}


def request_id(request: web.Request) -> str:
    rid = request.get(REQUEST_ID)
    if rid is None:
        given = request.headers.get("X-Request-Id", "")
        # Request ids name a request in logs and headers and guard nothing, so `random`'s
        # (reseeded in a forked child) will do: `secrets` reads the kernel's, a system call
        # that hands the GIL to another thread and waits to get it back, on every request.
        rid = given if _CLIENT_REQUEST_ID.fullmatch(given) else f"req_{random.getrandbits(64):016x}"
        request[REQUEST_ID] = rid
    return rid


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare` hook: every response, streams and errors too, names its id."""
    response.headers["X-Request-Id"] = request_id(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request_id(request)
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(to_api_error(e), request)
    except (ApiError, ThreadloomError, msgspec.MsgspecError, Overloaded) as e:
        error = to_api_error(e)
        if error.status >= 500:
            log.error("%s %s failed (request %s): %s", request.method, request.path, rid, e)
        return error_response(error, request)
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException:
        # Exception, and also a Rust panic (PyO3's PanicException derives from BaseException):
        # a logged 500 for this request, never a dead connection task.
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, rid)
        return error_response(to_api_error(RuntimeError()), request)


class BadRequestLogFilter(logging.Filter):
    """aiohttp logs a request it could not parse (a request line over 8 KB, a malformed
    header) as an ERROR with a traceback, though it answers the client with a 4xx: the
    client's mistake, not the server's, so it is logged as one WARNING line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            record.msg = f"{record.getMessage()}: {exc.code} {exc.message}"
            record.args = ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


BAD_REQUEST_LOG_FILTER = BadRequestLogFilter()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = request.headers.get("X-API-Key")
    return key.strip() if key else None


def _matches(key: str | None, digest: bytes | None) -> bool:
    return key is not None and digest is not None and hmac.compare_digest(_digest(key), digest)


def auth_middleware(
    api_keys: Mapping[str, str], metrics_key: str | None = None
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Sets `request[OWNER]`. With no keys configured, everyone is owner "default". With keys,
    `OPERATOR_PATHS` take only `metrics_key`: /metrics sums every tenant's work, which no
    tenant may watch, and a model loaded or unloaded is every tenant's."""
    # Compare digests so every comparison has the same length; check every key, no early exit.
    table = [(_digest(k), owner) for k, owner in api_keys.items()]
    operator = _digest(metrics_key) if metrics_key is not None else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not table:
            request[OWNER] = "default"
            return await handler(request)
        if request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
            return await handler(request)
        key = presented_key(request)
        if request.path in OPERATOR_PATHS:
            if not _matches(key, operator):
                raise ApiError(
                    401 if key is None else 403,
                    f"{request.path} needs the operator's key (--metrics-key), not a tenant's",
                    type="authentication_error",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return await handler(request)
        owner: str | None = None
        if key is not None:
            digest = _digest(key)
            for candidate, name in table:
                if hmac.compare_digest(digest, candidate):
                    owner = name
        if owner is None:
            raise ApiError(
                401,
                "missing or invalid API key" if key is None else "invalid API key",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request[OWNER] = owner
        return await handler(request)

    return middleware
