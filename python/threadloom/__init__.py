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
    ContextLengthExceeded,
    InvalidInput,
    LimitExceeded,
    NotFound,
    StateConflict,
    StoreError,
    StoreFormatError,
    StoreFull,
    StoreUnavailable,
    ThreadloomError,
)

__version__ = "0.1.0"

__all__ = [
    "MAX_THREAD_MESSAGES",
    "Appended",
    "Assembly",
    "ChatTemplate",
    "ContextLengthExceeded",
    "InvalidInput",
    "LimitExceeded",
    "NotFound",
    "PromptEngine",
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
