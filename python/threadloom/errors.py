"""The exceptions threadloom raises. The Rust core raises these same classes."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ContextLengthExceeded",
    "InvalidInput",
    "LimitExceeded",
    "ModelFormatError",
    "ModelNotFound",
    "ModelNotInstalled",
    "ModelUnavailable",
    "NotFound",
    "Overloaded",
    "StateConflict",
    "StoreError",
    "StoreFormatError",
    "StoreFull",
    "StoreUnavailable",
    "ThreadloomError",
]


class ThreadloomError(Exception):
    """Base class of every threadloom error. What it is about, where that is known, travels
    with it, so a caller tells errors apart by these and never by the message text: `kind`
    (the sort of object: "thread", "response", "turn", "model"), `id` (that object's id) and
    `param` (the argument or request field at fault; the server reports it). The Rust core
    raises NotFound with its `kind` and `id`; its other errors carry their message."""

    def __init__(
        self,
        *args: object,
        param: str | None = None,
        kind: str | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(*args)
        self.param = param
        self.kind = kind
        self.id = id


class NotFound(ThreadloomError, LookupError):
    """The id does not exist, belongs to another owner, or has expired."""


class StateConflict(ThreadloomError):
    """The operation is not allowed in the object's current state (e.g. a locked thread)."""


class LimitExceeded(ThreadloomError):
    """A size or count limit would be exceeded."""


class ContextLengthExceeded(LimitExceeded):
    """The prompt plus the requested output tokens do not fit the model's context."""

    def __init__(
        self, message: str, prompt_tokens: int, max_tokens: int, context_length: int
    ) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length


class InvalidInput(ThreadloomError, ValueError):
    """The input is malformed: a bad id, role, metadata or argument."""


class StoreError(ThreadloomError):
    """The store failed: I/O or LMDB trouble."""


class StoreFull(StoreError):
    """The store reached its maximum map size."""


class StoreUnavailable(StoreError):
    """The store cannot be reached: the database is down, or no connection came free in time.
    Retry later. (A write cut off while committing may have been stored.)"""


class StoreFormatError(StoreError):
    """The store's data has a format this version does not understand, or is damaged."""


class ModelFormatError(ThreadloomError, ValueError):
    """A model file (GGUF) is malformed, or uses a tokenizer, template or format this version
    does not support."""


class ModelNotInstalled(ThreadloomError):
    """The model file is missing; the message says how to install it."""


class ModelNotFound(NotFound):
    """No declared model has this name or alias."""


class ModelUnavailable(ThreadloomError):
    """A declared model could not be loaded (a broken or unreadable file, a backend that
    failed): its own requests fail with this, the other models keep serving."""


class Overloaded(ThreadloomError):
    """Every slot is busy and the waiting queue is full (or the engine is shutting down)."""


class BackendError(ThreadloomError):
    """The generation engine failed to load the model or to evaluate tokens."""
