"""The id grammar for the request schemas and routes: the Rust core's patterns (`_core`), so a
route refuses exactly the ids the store would, and every dialect checks them alike.

msgspec checks a pattern with Python's `re`, whose `$` also matches before a final newline:
routes check ids again with `fullmatch` (the patterns stay ECMA-compatible for the OpenAPI
document). `.` and `..` are not thread ids: they are path segments a URL normaliser removes
(`/v1/threads/./tree` is `/v1/threads/tree`), so no URL could name such a thread."""

from __future__ import annotations

import re
from typing import Annotated

from msgspec import Meta

from threadloom._core import RESPONSE_ID_PATTERN, THREAD_ID_PATTERN

ResponseId = Annotated[str, Meta(pattern=RESPONSE_ID_PATTERN)]
ThreadId = Annotated[str, Meta(pattern=THREAD_ID_PATTERN)]
# For `fullmatch` in the routes (a conversation id is a thread id too).
RESPONSE_ID = re.compile(RESPONSE_ID_PATTERN)
THREAD_ID = re.compile(THREAD_ID_PATTERN)

__all__ = [
    "RESPONSE_ID",
    "RESPONSE_ID_PATTERN",
    "THREAD_ID",
    "THREAD_ID_PATTERN",
    "ResponseId",
    "ThreadId",
]
