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


class Health(msgspec.Struct, kw_only=True):
    status: Literal["ok"] = "ok"
    model: str
    backend: str
    slots: int
    slots_busy: int
    queue_depth: int
    # The compute thread budget the scheduler's one decode loop uses.
    threads: int


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "threadloom"


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]
