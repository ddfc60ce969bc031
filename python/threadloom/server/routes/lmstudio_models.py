"""LM Studio's model management over the declared models: `GET /api/v1/models` lists them with
their loaded instance (one per model: an instance id is the model's name),
`POST /api/v1/models/load` loads one now instead of on its first request, and
`POST /api/v1/models/unload` unloads one (its running generations stop and are stored, as at
a server stop). With API keys, load and unload take the operator's key (`middleware`)."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
from aiohttp import web

from threadloom.models import default_model_path
from threadloom.registry import LoadedModel
from threadloom.server.errors import ApiError
from threadloom.server.keys import CONFIG, MODELS
from threadloom.server.routes.common import decode_body, json_response
from threadloom.server.schemas import lmstudio_models as lm

_load = msgspec.json.Decoder(lm.LoadRequest)
_unload = msgspec.json.Decoder(lm.UnloadRequest)


def _entry(request: web.Request, model: LoadedModel) -> lm.ModelEntry:
    engine = model.engine
    file = Path(model.spec.file) if model.spec.file is not None else default_model_path()
    context = (
        engine.context_length
        if engine is not None
        else model.spec.context_length or request.app[CONFIG].context_length
    )
    return lm.ModelEntry(
        key=model.name,
        display_name=model.name,
        size_bytes=file.stat().st_size,
        loaded_instances=[]
        if engine is None
        else [
            lm.LoadedInstance(
                id=model.name, config=lm.InstanceConfig(context_length=engine.context_length)
            )
        ],
        max_context_length=context,
    )


async def list_models(request: web.Request) -> web.Response:
    return json_response(
        lm.ModelList(models=[_entry(request, m) for m in request.app[MODELS].entries])
    )


async def load_model(request: web.Request) -> web.Response:
    """Loads the model (at once when it already is: one instance per model)."""
    req = decode_body(_load, await request.read())
    started = time.monotonic()
    models = request.app[MODELS]
    lease = await models.acquire(req.model)
    lease.release()  # loaded; it stays until the LRU or its TTL unloads it
    engine = lease.engine
    asked = req.config.context_length if req.config is not None else None
    if asked is not None and asked > engine.context_length:
        raise ApiError(
            400,
            f"config.context_length must be at most the model's ({engine.context_length})",
            param="config.context_length",
            code="invalid_value",
        )
    return json_response(
        lm.LoadResult(
            model_instance_id=models.entry(req.model).name,
            config=lm.InstanceConfig(context_length=engine.context_length),
            load_time_seconds=round(time.monotonic() - started, 3),
        )
    )


async def unload_model(request: web.Request) -> web.Response:
    req = decode_body(_unload, await request.read())
    models = request.app[MODELS]
    name = models.entry(req.instance_id, "instance_id").name
    if not await models.unload(name):
        raise ApiError(404, f"model {name!r} is not loaded", param="instance_id", code="not_found")
    return json_response(lm.UnloadResult(instance_id=name))


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/models", list_models)
    app.router.add_post("/api/v1/models/load", load_model)
    app.router.add_post("/api/v1/models/unload", unload_model)
