"""threadloom: stateful, branching conversations for local LLMs."""

from __future__ import annotations

from threadloom._core import (
    MAX_THREAD_MESSAGES,
    Appended,
    Assembly,
    ChatTemplate,
    PromptEngine,
    Response,
    ResponseInfo,
    Retention,
    Store,
    Thread,
    ThreadPage,
    Tokenizer,
    Turn,
)
from threadloom.errors import (
    BackendError,
    ContextLengthExceeded,
    InvalidInput,
    LimitExceeded,
    ModelFormatError,
    ModelNotInstalled,
    NotFound,
    Overloaded,
    StateConflict,
    StoreError,
    StoreFormatError,
    StoreFull,
    StoreUnavailable,
    ThreadloomError,
)

__version__ = "0.1.0"

# The engine and its request type, for batch jobs: `threadloom.Engine(store).run_batch(...)`.
from threadloom.engine import Engine
from threadloom.request import Request

__all__ = [
    "MAX_THREAD_MESSAGES",
    "Appended",
    "Assembly",
    "BackendError",
    "ChatTemplate",
    "ContextLengthExceeded",
    "Engine",
    "InvalidInput",
    "LimitExceeded",
    "ModelFormatError",
    "ModelNotInstalled",
    "NotFound",
    "Overloaded",
    "PromptEngine",
    "Request",
    "Response",
    "ResponseInfo",
    "Retention",
    "StateConflict",
    "Store",
    "StoreError",
    "StoreFormatError",
    "StoreFull",
    "StoreUnavailable",
    "Thread",
    "ThreadPage",
    "ThreadloomError",
    "Tokenizer",
    "Turn",
    "__version__",
]
