"""Dialect-neutral endpoints: health and the model list."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from threadloom.server.keys import ENGINE
from threadloom.server.schemas.common import Health, Model, ModelList

_encoder = msgspec.json.Encoder()
_STARTED = int(time.time())


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(data), status=status, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    pool = engine.pool
    return json_response(
        Health(
            model=engine.model_name,
            backend=engine.backend_name,
            slots=len(pool.slots),
            slots_busy=pool.busy,
            queue_depth=pool.waiting,
        )
    )


async def models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return json_response(ModelList(data=[Model(id=engine.model_name, created=_STARTED)]))


def setup(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
