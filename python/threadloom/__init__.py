"""threadloom: stateful, branching conversations for local LLMs."""

from __future__ import annotations

from threadloom._core import (
    Appended,
    Response,
    ResponseInfo,
    Retention,
    Store,
    Thread,
    ThreadPage,
    Turn,
)
from threadloom.errors import (
    InvalidInput,
    LimitExceeded,
    NotFound,
    StateConflict,
    StoreError,
    StoreFormatError,
    StoreFull,
    ThreadloomError,
)

__version__ = "0.1.0"

__all__ = [
    "Appended",
    "InvalidInput",
    "LimitExceeded",
    "NotFound",
    "Response",
    "ResponseInfo",
    "Retention",
    "StateConflict",
    "Store",
    "StoreError",
    "StoreFormatError",
    "StoreFull",
    "Thread",
    "ThreadPage",
    "ThreadloomError",
    "Turn",
    "__version__",
]
