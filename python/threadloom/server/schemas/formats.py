"""Structured output on the wire: Responses' `text.format` and chat completions'
`response_format`. Both name the same two things (a JSON schema, or any JSON object), which
become the engine's `Request.output_schema`."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from threadloom.server.errors import ApiError

# OpenAI's rule for a format's name.
FormatName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class TextFormat(msgspec.Struct, tag="text", tag_field="type", forbid_unknown_fields=True):
    pass


class JsonObjectFormat(
    msgspec.Struct, tag="json_object", tag_field="type", forbid_unknown_fields=True
):
    pass


class JsonSchemaFormat(
    msgspec.Struct, tag="json_schema", tag_field="type", kw_only=True, forbid_unknown_fields=True
):
    """Responses' form: the schema's fields sit next to `type`."""

    name: FormatName
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


ResponsesFormat = TextFormat | JsonObjectFormat | JsonSchemaFormat


class TextConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    format: ResponsesFormat = msgspec.field(default_factory=TextFormat)
    verbosity: str | None = None


class JsonSchemaSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: FormatName
    schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})
    description: str | None = None
    strict: bool | None = None


class ChatJsonSchemaFormat(
    msgspec.Struct, tag="json_schema", tag_field="type", forbid_unknown_fields=True
):
    """Chat completions' form: the schema's fields are nested under `json_schema`."""

    json_schema: JsonSchemaSpec


ChatFormat = TextFormat | JsonObjectFormat | ChatJsonSchemaFormat

# A schema that matches any JSON object: what `json_object` asks for.
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def convert(value: Any, kind: Any, field: str) -> Any:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as e:
        raise ApiError(400, f"{field}: {e}", param=field, code="invalid_value") from None


def responses_text(value: dict[str, Any] | None) -> tuple[TextConfig, dict[str, Any] | None, str]:
    """Responses' `text`: the config to echo back, the schema the reply must match (None:
    free text) and the field that names it."""
    config: TextConfig = convert(value or {}, TextConfig, "text")
    fmt = config.format
    if isinstance(fmt, JsonSchemaFormat):
        return config, fmt.schema, "text.format.schema"
    if isinstance(fmt, JsonObjectFormat):
        return config, ANY_OBJECT, "text.format"
    return config, None, "text.format"


def chat_response_format(value: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """Chat completions' `response_format`: the schema the reply must match (None: free
    text) and the field that names it."""
    if value is None:
        return None, "response_format"
    fmt: ChatFormat = convert(value, ChatFormat, "response_format")
    if isinstance(fmt, ChatJsonSchemaFormat):
        return fmt.json_schema.schema, "response_format.json_schema.schema"
    if isinstance(fmt, JsonObjectFormat):
        return ANY_OBJECT, "response_format"
    return None, "response_format"
