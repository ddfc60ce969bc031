"""Typed keys for what the app holds (`web.AppKey`) and what a request carries
(`web.RequestKey`): every one of them is defined here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from aiohttp import web

from threadloom.engine import Engine, Event, Result
from threadloom.registry import Lease, Models
from threadloom.server.config import ServerConfig
from threadloom.server.errors import ErrorFormatter
from threadloom.server.metrics import Metrics
from threadloom.storage import ConversationStore

# ---- the app -----------------------------------------------------------------------------

CONFIG = web.AppKey("config", ServerConfig)
# The declared models; routes get a request's engine from it (routes/common.py: engine_for).
MODELS = web.AppKey("models", Models)
# The one store every model's engine shares (opened and closed by the app).
STORE = web.AppKey("store", ConversationStore)
# The default model's engine as loaded at start: for tests and tools, not for routes (a
# model may be unloaded and loaded again as another engine).
ENGINE = web.AppKey("engine", Engine)
BACKEND = web.AppKey("backend", object)  # a BackendFactory, or None for the real model
METRICS = web.AppKey("metrics", Metrics)  # server/routes/metrics.py
# Route path (the resource's canonical form, e.g. "/v1/things/{id}") -> its error formatter
# (`middleware.register_error_format`).
ERROR_FORMATS = web.AppKey("error_formats", dict[str, ErrorFormatter])
# A background response (routes/background.py): the task generating it and the engine's event
# stream it drains, under (owner, response id).
Running = tuple["asyncio.Task[Result]", AsyncGenerator[Event, None]]
RUNNING = web.AppKey("background_responses", dict[tuple[str, str], Running])

# ---- a request ---------------------------------------------------------------------------

OWNER = web.RequestKey("owner", str)  # the authenticated tenant: the store's `owner`
# The models a request holds (`engine_for`): released when its handler returns, so a model a
# request is using is never unloaded under it.
LEASES = web.RequestKey("model_leases", list[Lease])
# Names one request in the logs and in the `X-Request-Id` response header: the client's own id
# when it sent a sane one, else a fresh one.
REQUEST_ID = web.RequestKey("request_id", str)
# Paddler's request id (routes/paddler.py): it ties every frame of one request together, error
# frames from the middleware too.
PADDLER_REQUEST_ID = web.RequestKey("paddler_request_id", str)
