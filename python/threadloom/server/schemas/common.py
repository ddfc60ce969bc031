"""Shapes shared by every dialect: errors, health and the model list."""

from __future__ import annotations

from typing import Literal

import msgspec


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail


class ModelHealth(msgspec.Struct, kw_only=True):
    """One declared model; the figures are absent (null) while it is not loaded."""

    name: str
    loaded: bool
    aliases: list[str]
    backend: str | None = None
    slots: int | None = None
    slots_busy: int | None = None
    queue_depth: int | None = None
    threads: int | None = None


class Health(msgspec.Struct, kw_only=True):
    """The default model's figures (null while it is not loaded), and every model's."""

    status: Literal["ok"] = "ok"
    model: str
    backend: str | None
    slots: int | None
    slots_busy: int | None
    queue_depth: int | None
    # The compute thread budget the scheduler's one decode loop uses.
    threads: int | None
    models: list[ModelHealth]


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "threadloom"
    # Whether the model is loaded now (a request naming it loads it), and its other names.
    loaded: bool = True
    aliases: list[str] = msgspec.field(default_factory=list)


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]
