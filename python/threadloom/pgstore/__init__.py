"""The PostgreSQL conversation store (needs the `postgres` extra: psycopg and psycopg-pool)."""

from __future__ import annotations

from threadloom.pgstore.store import PostgresStore

__all__ = ["PostgresStore"]
