"""Helpers shared by the store tests (imported as a plain module; tests/ is on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import threadloom

HELPERS = Path(__file__).parent / "helpers"

# A PostgreSQL server the tests may create schemas in (`.ci/run` starts one; see
# tests/pgcluster.py). Unset, every PostgreSQL case is skipped.
POSTGRES_URL = os.environ.get("THREADLOOM_TEST_POSTGRES_URL")
# The store backends, as fixture parameters.
BACKENDS = [
    "lmdb",
    pytest.param(
        "postgres",
        marks=pytest.mark.skipif(
            POSTGRES_URL is None, reason="THREADLOOM_TEST_POSTGRES_URL is not set"
        ),
    ),
]

TurnDict = dict[str, str | None]
# The `make_store` fixture: opens (or reopens) the test's store of the backend under test.
MakeStore = Callable[..., threadloom.Store]

# Crockford base32, lowercase, as the store writes ids.
ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def msg(content: str, role: str = "user", reasoning: str | None = None) -> TurnDict:
    """One turn as `Store.append` takes it."""
    turn: TurnDict = {"role": role, "content": content}
    if reasoning is not None:
        turn["reasoning"] = reasoning
    return turn


def msgs(*texts: str) -> list[TurnDict]:
    """Alternating user/assistant turns."""
    roles = ("user", "assistant")
    return [msg(text, roles[i % 2]) for i, text in enumerate(texts)]


def contents(turns: Sequence[threadloom.Turn]) -> list[str]:
    return [t.content for t in turns]


def turn_id_from_key(key: bytes) -> str:
    """The `msg_...` id of a raw 16-byte turn key."""
    n = int.from_bytes(key, "big")
    chars = []
    for _ in range(26):
        chars.append(ALPHABET[n & 31])
        n >>= 5
    return "msg_" + "".join(reversed(chars))


def missing_turn_id() -> str:
    return "msg_" + "0" * 26


def missing_response_id() -> str:
    return "resp_" + "0" * 26


def snapshot(store: threadloom.Store, owners: Sequence[str] = ("default",)) -> dict[str, Any]:
    """Everything an error must leave unchanged: record counts and every listed thread."""
    stats = store.stats()
    out: dict[str, Any] = {k: stats[k] for k in ("threads", "responses", "turns")}
    for owner in owners:
        for visible in (True, False):
            page = store.list_threads(owner=owner, visible=visible, limit=1000)
            for t in page.threads:
                history = store.history(owner=owner, thread=t.id)
                out[f"{owner}/{t.id}"] = (
                    t.head,
                    t.metadata_json,
                    t.state,
                    t.visible,
                    t.last_activity_ms,
                    t.message_count,
                    tuple((h.id, h.role, h.content, h.reasoning) for h in history),
                )
    return out


def child_env() -> dict[str, str]:
    """Environment for child interpreters that import threadloom from this checkout."""
    env = dict(os.environ)
    here = str(Path(threadloom.__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def helper_command(name: str, *args: str) -> list[str]:
    return [sys.executable, str(HELPERS / name), *args]


def run_helper(name: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Runs tests/helpers/<name> in a fresh interpreter; fails the test if it fails."""
    proc = subprocess.run(
        helper_command(name, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{name} exited with {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def assert_fields(obj: object, expected: Mapping[str, object]) -> None:
    for name, value in expected.items():
        got = getattr(obj, name)
        assert got == value, f"{name}: {got!r} != {value!r}"


# ---- PostgreSQL: one fresh schema per test -------------------------------------------------------


def with_search_path(url: str, schema: str) -> str:
    """The URL with `schema` as the search path of every connection (the libpq `options`)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def create_pg_schema(base_url: str) -> tuple[str, str]:
    """Creates an empty schema; returns its name and a URL whose connections use it."""
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return schema, with_search_path(base_url, schema)


def drop_pg_schema(base_url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def stream_then_cancel(engine: Any, inputs: Any, tokens: int, **options: Any) -> str:
    """Streams a reply from `engine` and walks away after `tokens` text pieces (as a client
    that disconnects does); returns the text it saw. The engine stores the rest as incomplete."""
    import asyncio

    from threadloom.engine import TokenEvent

    async def run() -> str:
        got: list[str] = []
        agen = engine.stream(inputs, **options)
        async for event in agen:
            if isinstance(event, TokenEvent):
                got.append(event.text)
                if len(got) >= tokens:
                    break
        await agen.aclose()
        return "".join(got)

    return asyncio.run(run())
