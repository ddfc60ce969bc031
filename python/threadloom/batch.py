"""`Engine.run_batch`: many requests through one engine, a bounded number at a time."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec

from threadloom.errors import ThreadloomError
from threadloom.events import Result, Usage
from threadloom.request import Request

# One request to its finished result (`Engine.respond`).
Respond = Callable[[Request], Awaitable[Result]]


def run_batch(
    respond: Respond,
    model_name: str,
    requests: Sequence[Request | Mapping[str, Any]],
    concurrency: int,
    show: bool,
) -> list[Result]:
    """Runs `requests` through `respond`, `concurrency` at a time; a failure becomes a failed
    `Result` of `model_name`."""
    items = [r if isinstance(r, Request) else msgspec.convert(r, Request) for r in requests]
    return asyncio.run(_batch(respond, model_name, items, concurrency, show))


async def _batch(
    respond: Respond, model_name: str, items: list[Request], concurrency: int, show: bool
) -> list[Result]:
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(r: Request) -> Result:
        nonlocal done
        async with gate:
            try:
                return await respond(r)
            except ThreadloomError as e:
                return Result(
                    status="failed",
                    text="",
                    reasoning=None,
                    finish_reason="error",
                    usage=Usage(0, 0, 0),
                    model=model_name,
                    error=f"{type(e).__name__}: {e}",
                )
            finally:
                done += 1
                if show:
                    bar = "#" * (30 * done // len(items))
                    print(f"\r[{bar:<30}] {done}/{len(items)}", end="", file=sys.stderr)

    results = await asyncio.gather(*(one(r) for r in items))
    if show:
        print(file=sys.stderr)
    return list(results)
