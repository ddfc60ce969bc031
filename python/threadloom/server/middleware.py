"""The error middleware (every failure becomes a JSON error) and API-key authentication."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Mapping

import msgspec
from aiohttp import web

from threadloom.errors import (
    ContextLengthExceeded,
    InvalidInput,
    LimitExceeded,
    NotFound,
    StateConflict,
    ThreadloomError,
)
from threadloom.server.errors import ApiError
from threadloom.server.schemas.common import ErrorBody, ErrorDetail
from threadloom.slots import Overloaded

log = logging.getLogger("threadloom.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TENANT = web.RequestKey("tenant", str)  # the authenticated tenant name
OPEN_PATHS = frozenset({"/health"})
RETRY_AFTER_S = "1"

_encoder = msgspec.json.Encoder()
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"unknown field `(?P<field>[^`]*)`")


def validation_param(message: str) -> str | None:
    """The field msgspec names in a validation error, as `a.b[0].c` (None: the whole body)."""
    path = ""
    m = _PATH.search(message)
    if m:
        path = m.group("path").lstrip(".")
    u = _UNKNOWN.search(message)
    if u:
        path = f"{path}.{u.group('field')}" if path else u.group("field")
    return path or None


def error_response(error: ApiError) -> web.Response:
    body = ErrorBody(
        error=ErrorDetail(
            message=error.message, type=error.type, param=error.param, code=error.code
        )
    )
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
    if isinstance(e, NotFound):
        return ApiError(404, str(e), code="not_found")
    if isinstance(e, StateConflict):
        return ApiError(409, str(e), code="conflict")
    if isinstance(e, ContextLengthExceeded):
        return ApiError(400, str(e), param="input", code="context_length_exceeded")
    if isinstance(e, LimitExceeded):
        return ApiError(400, str(e), code="limit_exceeded")
    if isinstance(e, InvalidInput):
        return ApiError(400, str(e), code="invalid_value")
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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(to_api_error(e))
    except (ApiError, ThreadloomError, msgspec.MsgspecError, Overloaded) as e:
        return error_response(to_api_error(e))
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(to_api_error(RuntimeError()))


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


def auth_middleware(api_keys: Mapping[str, str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Sets `request[TENANT]`. With no keys configured, everyone is tenant "default"."""
    # Compare digests so every comparison has the same length; check every key, no early exit.
    table = [(_digest(k), tenant) for k, tenant in api_keys.items()]

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not table:
            request[TENANT] = "default"
            return await handler(request)
        if request.path in OPEN_PATHS:
            return await handler(request)
        key = presented_key(request)
        tenant: str | None = None
        if key is not None:
            digest = _digest(key)
            for candidate, name in table:
                if hmac.compare_digest(digest, candidate):
                    tenant = name
        if tenant is None:
            raise ApiError(
                401,
                "missing or invalid API key" if key is None else "invalid API key",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request[TENANT] = tenant
        return await handler(request)

    return middleware
