"""The application factory: `init_app(config)` builds the aiohttp app; `run(config)` serves it
until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from threadloom.backends.base import BackendFactory
from threadloom.compaction import parse_key
from threadloom.engine import Engine
from threadloom.server import openapi
from threadloom.server.config import ServerConfig, redacted
from threadloom.server.keys import BACKEND, CONFIG, ENGINE
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
    metrics,
    paddler,
    page,
    responses,
    tokenize,
    tree,
)
from threadloom.storage import describe

log = logging.getLogger("threadloom.server")
GIL_SWITCH_INTERVAL_S = 0.0005

__all__ = ["BACKEND", "CONFIG", "ENGINE", "init_app", "run"]


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
        ],
        client_max_size=config.max_body_bytes,
    )
    app[CONFIG] = config
    app[BACKEND] = backend
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
    tree.setup(app)
    page.setup(app)
    metrics.setup(app)
    openapi.setup(app)
    return app


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    backend = app[BACKEND]
    loop = asyncio.get_running_loop()

    def open_engine() -> Engine:
        return Engine(
            config.store,
            config.model,
            slots=config.slots,
            backend=backend or config.backend,  # type: ignore[arg-type]
            cache_dir=config.cache_dir,
            max_queue=config.max_queue,
            context_length=config.context_length,
            gpu_layers=config.gpu_layers,
            threads=config.threads,
            prefill_chunk=config.prefill_chunk,
            model_name=config.alias,
            chat_template=config.chat_template,
            decode_group=config.decode_group,
            kv_cache_type=config.kv_cache_type,
            kv_cache_dir=config.states_dir(),
            kv_cache_bytes=config.kv_cache_bytes,
            compaction_key=(
                parse_key(config.compaction_key) if config.compaction_key is not None else None
            ),
        )

    engine = await loop.run_in_executor(None, open_engine)
    app[ENGINE] = engine
    if not config.api_keys:
        log.warning("no API keys configured: the server is open to anyone who can reach it")
    log.info(
        "serving %s (%s) from store %s",
        engine.model_name,
        engine.backend_name,
        describe(config.store),
    )
    try:
        yield
    finally:
        # Generations still running are stopped and their replies stored before the store
        # closes: a SIGTERM loses no announced response.
        await engine.aclose()
        log.info("engine closed")


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
