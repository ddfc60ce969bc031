"""The threadloom HTTP server: a thin aiohttp layer over `threadloom.engine.Engine`.

`init_app(config)` builds the app, `run(config)` serves it; `threadloom serve` is the command.
Importing this package stays cheap (the CLI reads its flags from `config`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from threadloom.server.config import ServerConfig

if TYPE_CHECKING:
    from threadloom.server.app import init_app, run

__all__ = ["ServerConfig", "init_app", "run"]


def __getattr__(name: str) -> Any:
    if name in ("init_app", "run"):
        from threadloom.server import app

        return getattr(app, name)
    raise AttributeError(name)
