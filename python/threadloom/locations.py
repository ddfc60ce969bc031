"""Store locations as users write them: an LMDB directory or a `postgresql://` URL. Kept apart
from `storage` so that the PostgreSQL store can name its URL without importing its opener."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(spec: str | os.PathLike[str]) -> bool:
    return isinstance(spec, str) and spec.startswith(POSTGRES_SCHEMES)


def describe(spec: str | os.PathLike[str]) -> str:
    """The store location for logs and errors: a path, or a URL without its password."""
    if not is_postgres_url(spec):
        return os.fspath(spec)
    parts = urlsplit(str(spec))
    if parts.password is None:
        return str(spec)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
