"""Typed keys for what the app holds."""

from __future__ import annotations

from aiohttp import web

from threadloom.engine import Engine
from threadloom.server.config import ServerConfig

CONFIG = web.AppKey("config", ServerConfig)
ENGINE = web.AppKey("engine", Engine)
BACKEND = web.AppKey("backend", object)  # a BackendFactory, or None for the real model
