"""The application factory: `init_app(config)` builds the aiohttp app; `run(config)` serves it
until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from typing import TypeVar, cast

from aiohttp import web

from threadloom.backends.base import BackendFactory
from threadloom.compaction import parse_key
from threadloom.engine import Engine, EngineGroup
from threadloom.registry import Models, ModelSpec
from threadloom.server import openapi
from threadloom.server.config import ServerConfig, redacted
from threadloom.server.keys import BACKEND, CONFIG, ENGINE, MODELS, STORE
from threadloom.server.middleware import (
    BAD_REQUEST_LOG_FILTER,
    add_request_id,
    auth_middleware,
    error_middleware,
)
from threadloom.server.routes import (
    chat,
    common,
    compact,
    conversations,
    freddy,
    lmstudio,
    lmstudio_models,
    metrics,
    paddler,
    page,
    responses,
    tokenize,
    tree,
)
from threadloom.storage import close_store, describe, open_store

log = logging.getLogger("threadloom.server")
GIL_SWITCH_INTERVAL_S = 0.0005
T = TypeVar("T")

__all__ = ["BACKEND", "CONFIG", "ENGINE", "MODELS", "init_app", "open_models", "run"]


def init_app(config: ServerConfig, *, backend: BackendFactory | None = None) -> web.Application:
    """The server app. The engine (model, slots and store) opens on startup and closes on
    cleanup; `backend` replaces the model backend (tests pass `ScriptedFactory`)."""
    config.validate()
    # Unparseable requests (a request line over 8 KB) are 4xx: no ERROR traceback for them.
    logging.getLogger("aiohttp.server").addFilter(BAD_REQUEST_LOG_FILTER)
    app = web.Application(
        middlewares=[
            metrics.metrics_middleware,
            error_middleware,
            auth_middleware(config.api_keys, config.metrics_key),
            common.release_models,
        ],
        client_max_size=config.max_body_bytes,
    )
    app[CONFIG] = config
    app[BACKEND] = backend
    app[MODELS] = open_models(app)
    app.on_response_prepare.append(add_request_id)
    app.cleanup_ctx.append(_engine_ctx)
    common.setup(app)
    responses.setup(app)
    compact.setup(app)
    conversations.setup(app)
    chat.setup(app)
    freddy.setup(app)
    paddler.setup(app)
    tokenize.setup(app)
    lmstudio.setup(app)
    lmstudio_models.setup(app)
    tree.setup(app)
    page.setup(app)
    metrics.setup(app)
    openapi.setup(app)
    return app


def open_models(app: web.Application) -> Models:
    """The declared models (one without --models), not loaded yet: `Models.start` loads the
    default one. Every engine gets the app's one opened store (`STORE`), which stays the
    app's: an engine unloaded leaves it open for the others."""
    config, backend = app[CONFIG], app[BACKEND]

    def open_engine(spec: ModelSpec, group: EngineGroup) -> Engine:
        def pick(value: T | None, default: T) -> T:
            return default if value is None else value

        chosen = pick(spec.backend, config.backend)
        return Engine(
            app[STORE],
            spec.file,
            slots=pick(spec.slots, config.slots),
            backend=cast(BackendFactory, backend) or chosen,
            cache_dir=config.cache_dir,
            max_queue=config.max_queue,
            context_length=pick(spec.context_length, config.context_length),
            gpu_layers=pick(spec.gpu_layers, config.gpu_layers),
            threads=pick(spec.threads, config.threads),
            prefill_chunk=config.prefill_chunk,
            model_name=spec.name,
            chat_template=pick(spec.chat_template, config.chat_template),
            decode_group=config.decode_group,
            kv_cache_type=pick(spec.kv_cache_type, config.kv_cache_type),
            kv_cache_dir=config.states_dir(chosen),
            kv_cache_bytes=pick(spec.kv_cache_bytes, config.kv_cache_bytes),
            group=group,
            compaction_key=(
                parse_key(config.compaction_key) if config.compaction_key is not None else None
            ),
        )

    models = Models(
        config.model_specs(),
        open_engine,
        max_loaded=config.max_loaded_models,
        ttl=config.model_ttl,
        max_queue=config.max_queue,
    )
    return models


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    models = app[MODELS]
    loop = asyncio.get_running_loop()
    app[STORE] = await loop.run_in_executor(None, open_store, config.store)
    try:
        await models.start()
    except BaseException:
        await loop.run_in_executor(None, close_store, app[STORE])
        raise
    engine = models.loaded()[0]
    # The default model's engine as loaded at start (tests and tools read it); routes ask
    # `MODELS` for the engine of a request's model instead.
    app[ENGINE] = engine
    if not config.api_keys:
        log.warning("no API keys configured: the server is open to anyone who can reach it")
    log.info(
        "serving %s from store %s",
        ", ".join(f"{e.name} ({e.spec.backend or config.backend})" for e in models.entries),
        describe(config.store),
    )
    try:
        yield
    finally:
        # Generations still running are stopped and their replies stored before the store
        # closes: a SIGTERM loses no announced response.
        await models.close()
        await loop.run_in_executor(None, close_store, app[STORE])
        log.info("engines closed")


def run(config: ServerConfig) -> None:
    """Serves until SIGINT or SIGTERM (aiohttp stops accepting, then runs cleanup)."""
    # The scheduler thread needs the GIL for a moment between two model steps, while the event
    # loop thread streams the last token out; at the default 5 ms hand-over it can wait that
    # long for every token. 0.5 ms measured +5-15% tokens per second (benches/bench_llama.py).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.debug("config: %s", redacted(config))
    web.run_app(
        init_app(config),
        host=config.host,
        port=config.port,
        print=lambda msg: log.info("%s", msg.strip()),
        access_log=logging.getLogger("threadloom.access"),
        shutdown_timeout=10.0,
    )
