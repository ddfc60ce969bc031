"""`GET /metrics` and the middleware that counts every request: the app side of the registry in
`threadloom.server.metrics` (what is exported, and why `/metrics` needs a key)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from threadloom.server.keys import METRICS, MODELS, STORE
from threadloom.server.metrics import CLIENT_CLOSED, CONTENT_TYPE, Metrics, route_template
from threadloom.server.middleware import Handler


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost, so it sees the status the error middleware settled on (401s included)."""
    metrics = request.app.get(METRICS)
    if metrics is None:
        return await handler(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:  # redirects and the like, which the error middleware passes
        status = e.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        metrics.record_request(
            request.method, route_template(request), status, time.perf_counter() - started
        )


async def metrics_handler(request: web.Request) -> web.Response:
    models = request.app[MODELS]
    store = request.app.get(STORE)
    # The store's counts are a store read (a PostgreSQL round trip): off the event loop.
    loop = asyncio.get_running_loop()
    stats = await loop.run_in_executor(None, store.stats) if store is not None else None
    body = request.app[METRICS].render(models.entries, stats)
    return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})


def setup(app: web.Application) -> None:
    """Adds the registry, `GET /metrics` and the engine hook; the app also needs
    `metrics_middleware` in its middleware list."""
    metrics = app[METRICS] = Metrics()
    # Every model's engine gets it as it loads.
    app[MODELS].on_finished.append(metrics.record_generation)
    app.router.add_get("/metrics", metrics_handler)
