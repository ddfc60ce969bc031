"""HTTP-level errors raised by route handlers; the error middleware turns them into JSON."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


class ApiError(Exception):
    """A client-facing error with its HTTP status, error type, parameter and code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


# Builds a dialect's error body (anything msgspec encodes) from the mapped error.
ErrorFormatter = Callable[[web.Request, ApiError], object]


def not_found(what: str, ident: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"{what} {ident!r} not found", param=param, code="not_found")
