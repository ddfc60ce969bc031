"""`Engine.run_batch`: many requests through one engine, a bounded number at a time."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from threadloom.errors import ThreadloomError
from threadloom.events import Result, Usage
from threadloom.request import Request

if TYPE_CHECKING:
    from threadloom.engine import Engine


def run_batch(
    engine: Engine,
    requests: Sequence[Request | Mapping[str, Any]],
    concurrency: int,
    show: bool,
) -> list[Result]:
    items = [r if isinstance(r, Request) else msgspec.convert(r, Request) for r in requests]
    return asyncio.run(_batch(engine, items, concurrency, show))


async def _batch(
    engine: Engine, items: list[Request], concurrency: int, show: bool
) -> list[Result]:
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(r: Request) -> Result:
        nonlocal done
        async with gate:
            try:
                return await engine.respond(r)
            except ThreadloomError as e:
                return Result(
                    status="failed",
                    text="",
                    reasoning=None,
                    finish_reason="error",
                    usage=Usage(0, 0, 0),
                    model=engine.model_name,
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
