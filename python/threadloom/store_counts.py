"""What a store's `sweep` and `stats` return. Apart from `storage` so that the core's stub can
name them without importing the store opener (and, through it, the PostgreSQL store)."""

from __future__ import annotations

from typing import TypedDict


class SweepCounts(TypedDict):
    """What a `sweep` deleted."""

    threads: int
    responses: int
    turns: int


class StoreStats(TypedDict):
    """What `stats` counts: records (expired ones included until swept) and bytes on disk
    (PostgreSQL gives its tables' size as both)."""

    threads: int
    responses: int
    turns: int
    file_bytes: int
    map_bytes: int
