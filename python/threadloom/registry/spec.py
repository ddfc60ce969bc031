"""Declared models: `--models FILE`, a TOML file with one `[models.<name>]` table per model.
Everything is checked when the server starts, so a typo is a refusal naming the key, never a
model that fails on its first request."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from threadloom.backends import BackendName
from threadloom.errors import InvalidInput

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser from PyPI (a dependency there only)
    import tomli as tomllib

__all__ = ["RESERVED_NAMES", "ModelSpec", "load_models_file", "parse_models"]

# What a request may always name: the first declared model.
RESERVED_NAMES = ("default",)


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One declared model. A setting left out (None) takes the server's own flag."""

    name: str
    # The GGUF file; None: the shipped default model (SmolLM2).
    file: str | None = None
    backend: BackendName | None = None
    # A Jinja file or a built-in name (gemma, chatml, llama3), as --chat-template.
    chat_template: str | None = None
    aliases: list[str] = msgspec.field(default_factory=list)
    slots: int | None = None
    context_length: int | None = None
    threads: int | None = None
    kv_cache_type: str | None = None
    kv_cache_bytes: int | None = None
    gpu_layers: int | None = None
    # Seconds idle before the model is unloaded (0: never); None: --model-ttl.
    ttl: float | None = None

    def names(self) -> list[str]:
        return [self.name, *self.aliases]


SETTINGS = tuple(f for f in ModelSpec.__struct_fields__ if f != "name")
_AT_LEAST = {"slots": 1, "threads": 1, "context_length": 256, "kv_cache_bytes": 0, "gpu_layers": 0}


def load_models_file(path: str | os.PathLike[str]) -> list[ModelSpec]:
    """Reads and checks a models file; relative `file` paths are relative to it."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise InvalidInput(f"cannot read models file {path}: {e}", param="models") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"models file {path}: {e}", param="models") from None
    return parse_models(data, Path(path).resolve().parent)


def parse_models(data: dict[str, Any], base: Path) -> list[ModelSpec]:
    """The `models` tables of a parsed TOML document, checked, in declaration order (the
    first is the default model)."""
    for key in data:
        if key != "models":
            _refuse(key, "is not a models file key (only [models.<name>] tables are)")
    tables = data.get("models")
    if not isinstance(tables, dict) or not tables:
        _refuse("models", "must hold at least one [models.<name>] table")
    specs = [_spec(name, table, base) for name, table in tables.items()]
    seen: dict[str, str] = {}
    for spec in specs:
        for i, name in enumerate(spec.names()):
            where = f"models.{spec.name}" + ("" if i == 0 else ".aliases")
            if not name.strip():
                _refuse(where, "must not be empty")
            if name in RESERVED_NAMES:
                _refuse(where, f"{name!r} is reserved: it names the first declared model")
            if name in seen:
                _refuse(where, f"{name!r} already names model {seen[name]!r}")
            seen[name] = spec.name
    return specs


def _spec(name: str, table: object, base: Path) -> ModelSpec:
    where = f"models.{name}"
    if not isinstance(table, dict):
        _refuse(where, "must be a table")
    for key in table:
        if key not in SETTINGS:
            _refuse(f"{where}.{key}", f"is not a model setting (one of {', '.join(SETTINGS)})")
    try:
        spec = msgspec.convert({**table, "name": name}, ModelSpec)
    except msgspec.ValidationError as e:
        # msgspec says "... - at `$.slots`": name the key as the file spells it.
        raise InvalidInput(f"{where}: {str(e).replace('`$.', f'`{where}.')}", param=where) from None
    for key, least in _AT_LEAST.items():
        value = getattr(spec, key)
        if value is not None and value < least:
            _refuse(f"{where}.{key}", f"must be at least {least}")
    if spec.ttl is not None and spec.ttl < 0:
        _refuse(f"{where}.ttl", "must not be negative (0: never unloaded)")
    if spec.kv_cache_type not in (None, "f16", "q8_0"):
        _refuse(f"{where}.kv_cache_type", "must be f16 or q8_0")
    if spec.file is not None:
        file = base / Path(spec.file).expanduser()
        if not file.is_file():
            _refuse(f"{where}.file", f"no such file: {file}")
        spec = msgspec.structs.replace(spec, file=str(file))
    return spec


def _refuse(key: str, why: str) -> NoReturn:
    raise InvalidInput(f"{key} {why}", param=key)
