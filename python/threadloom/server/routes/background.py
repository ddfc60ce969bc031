"""`background: true` responses and `POST /v1/responses/{id}/cancel`.

A background create answers at once with the response `in_progress`; the generation runs in a
task the app keeps, and stores its reply as usual (a GET answers `in_progress` from the pending
record until then). Cancelling stops it; what was generated is stored as `incomplete`, and the
cancel answers with that stored response. Tasks are per tenant: another tenant's id is 404."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from threadloom.events import Result
from threadloom.server.errors import ApiError
from threadloom.server.keys import OWNER, RUNNING
from threadloom.server.routes.common import Events, final_result, store_engine

log = logging.getLogger("threadloom.server")


def start(request: web.Request, response_id: str, events: Events) -> None:
    """Runs the rest of a started generation in a task the app keeps."""
    running = request.app[RUNNING]
    key = (request[OWNER], response_id)
    task = asyncio.ensure_future(final_result(events))
    running[key] = (task, events)

    def done(t: asyncio.Task[Result]) -> None:
        running.pop(key, None)
        if not t.cancelled() and t.exception() is not None:
            log.error("background response %s failed: %s", response_id, t.exception())

    task.add_done_callback(done)


async def cancel(
    request: web.Request, response_id: str, show: Callable[[], Awaitable[web.Response]]
) -> web.Response:
    """Stops the tenant's background response, waits until its reply is stored, then answers
    with `show()` (the stored response)."""
    entry = request.app[RUNNING].get((request[OWNER], response_id))
    if entry is None:
        shown = await show()  # 404 for an id this tenant does not have
        if _status(shown) == "incomplete":
            # Stopped already, by a cancel that came first: every cancel answers the same.
            return shown
        raise ApiError(
            400,
            f"response {response_id!r} is not a running background response",
            param="response_id",
            code="not_cancellable",
        )
    # The engine stops the generation and waits until its reply is stored; the task then ends
    # with that result by itself. Concurrent cancels all wait for the same stored reply.
    await (await store_engine(request)).cancel_response(request[OWNER], response_id)
    return await show()


def _status(shown: web.Response) -> str | None:
    body = shown.body
    if not isinstance(body, bytes):
        return None
    status = msgspec.json.decode(body).get("status")
    return status if isinstance(status, str) else None


def setup(app: web.Application) -> None:
    app[RUNNING] = {}

    async def stop_all(app: web.Application) -> None:
        entries = list(app[RUNNING].values())
        for task, _ in entries:
            task.cancel()
        await asyncio.gather(*(task for task, _ in entries), return_exceptions=True)
        for _, events in entries:
            await events.aclose()

    app.on_shutdown.append(stop_all)
