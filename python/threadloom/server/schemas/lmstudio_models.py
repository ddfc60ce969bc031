"""LM Studio's native model management (`GET /api/v1/models`, `POST /api/v1/models/load`,
`POST /api/v1/models/unload`). Field names follow LM Studio; an instance id is the declared
model's name (one instance per model)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta


class InstanceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # LM Studio's other load settings (flash attention, batch size, experts, KV offload) are
    # not settings here: declared models load as their models file says.
    context_length: Annotated[int, Meta(ge=1)] | None = None


class LoadedInstance(msgspec.Struct, kw_only=True):
    id: str
    config: InstanceConfig


class Capabilities(msgspec.Struct, kw_only=True):
    vision: bool = False
    trained_for_tool_use: bool = False


class ModelEntry(msgspec.Struct, kw_only=True):
    type: Literal["llm"] = "llm"
    publisher: str = "threadloom"
    key: str
    display_name: str
    size_bytes: int
    loaded_instances: list[LoadedInstance]
    # The context the model loads with (per slot), not the most its file allows.
    max_context_length: int | None
    format: Literal["gguf"] = "gguf"
    quantization: None = None
    params_string: None = None
    capabilities: Capabilities = msgspec.field(default_factory=Capabilities)
    description: None = None


class ModelList(msgspec.Struct, kw_only=True):
    models: list[ModelEntry]


class LoadRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    config: InstanceConfig | None = None


class LoadResult(msgspec.Struct, kw_only=True):
    model_instance_id: str
    config: InstanceConfig
    load_time_seconds: float


class UnloadRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    instance_id: str


class UnloadResult(msgspec.Struct, kw_only=True):
    instance_id: str
