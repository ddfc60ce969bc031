"""The exceptions threadloom raises. The Rust core raises these same classes."""

from __future__ import annotations

__all__ = [
    "InvalidInput",
    "LimitExceeded",
    "NotFound",
    "StateConflict",
    "StoreError",
    "StoreFormatError",
    "StoreFull",
    "ThreadloomError",
]


class ThreadloomError(Exception):
    """Base class of every threadloom error."""


class NotFound(ThreadloomError, LookupError):
    """The id does not exist, belongs to another owner, or has expired."""


class StateConflict(ThreadloomError):
    """The operation is not allowed in the object's current state (e.g. a locked thread)."""


class LimitExceeded(ThreadloomError):
    """A size or count limit would be exceeded."""


class InvalidInput(ThreadloomError, ValueError):
    """The input is malformed: a bad id, role, metadata or argument."""


class StoreError(ThreadloomError):
    """The store failed: I/O or LMDB trouble."""


class StoreFull(StoreError):
    """The store reached its maximum map size."""


class StoreFormatError(StoreError):
    """The store's data has a format this version does not understand, or is damaged."""
