"""Server settings, from command-line flags and `THREADLOOM_*` environment variables (a flag
wins over its variable, a variable over the default)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from threadloom.backends import BACKENDS, BackendName
from threadloom.compaction import parse_key
from threadloom.errors import InvalidInput
from threadloom.storage import describe

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """The settings are unusable; the message says which one and why."""


class ServerConfig(msgspec.Struct, kw_only=True, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8000
    store: str = "./threadloom-data"
    model: str | None = None
    backend: BackendName = "ctransformers"
    # A built-in template name or a file; None: the model file's own.
    chat_template: str | None = None
    # The model's name in /v1/models and in requests; None: the file's stem.
    alias: str | None = None
    # API key -> tenant name. Empty: no auth, every request is tenant "default".
    api_keys: dict[str, str] = msgspec.field(default_factory=dict)
    # The operator's key for /metrics, which tells about every tenant: with API keys, no
    # tenant key reads it. None: /metrics is refused while API keys are configured.
    metrics_key: str | None = None
    # Seals compaction items (64 hex digits); None: the key the store keeps.
    compaction_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_queue: int = 64
    log_level: str = "info"
    slots: int = 4
    # None: the machine's physical cores.
    threads: int | None = None
    prefill_chunk: int = 64
    cache_dir: str | None = None
    # None: the engine's default (4,096 tokens, at most the model's own context).
    context_length: int | None = None
    gpu_layers: int = 0
    # llama-cpp: sequences evaluated per llama_decode call; None: every decoding sequence.
    decode_group: int | None = None
    # Saved conversation states: None is `<store>-kv` beside an LMDB store (or under
    # ~/.cache/threadloom/kv) for the llama-cpp backend, and off for the others.
    kv_cache_dir: str | None = None
    # llama-cpp: the KV cache's element type, "f16" or "q8_0" (half the bytes).
    kv_cache_type: str = "f16"
    kv_cache_bytes: int = 2 << 30

    def states_dir(self) -> str | None:
        """Where saved conversation states go, or None when they are off."""
        if self.kv_cache_bytes == 0:
            return None
        if self.kv_cache_dir is not None:
            return self.kv_cache_dir
        if self.backend != "llama-cpp":
            return None
        if "://" in self.store:
            return str(Path.home() / ".cache" / "threadloom" / "kv")
        return str(Path(self.store).resolve()) + "-kv"

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range")
        if self.max_body_bytes < 1024:
            raise ConfigError("max_body_bytes must be at least 1024")
        if self.max_queue < 0:
            raise ConfigError("max_queue must not be negative")
        if self.slots < 1:
            raise ConfigError("slots must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads must be at least 1")
        if self.prefill_chunk < 1:
            raise ConfigError("prefill_chunk must be at least 1")
        if self.context_length is not None and self.context_length < 256:
            raise ConfigError("context_length must be at least 256")
        if self.decode_group is not None and self.decode_group < 1:
            raise ConfigError("decode_group must be at least 1")
        if self.kv_cache_type not in ("f16", "q8_0"):
            raise ConfigError("kv_cache_type must be f16 or q8_0")
        if self.kv_cache_bytes < 0:
            raise ConfigError("kv_cache_bytes must not be negative (0 turns saving off)")
        if self.gpu_layers < 0:
            raise ConfigError("gpu_layers must not be negative")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}")
        if self.alias is not None and not self.alias.strip():
            raise ConfigError("alias must not be empty")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        for key, owner in self.api_keys.items():
            if not key or not owner:
                raise ConfigError("API keys and tenant names must not be empty")
        if self.metrics_key is not None:
            if not self.metrics_key.strip():
                raise ConfigError("metrics_key must not be empty")
            if self.metrics_key in self.api_keys:
                raise ConfigError("metrics_key must not be a tenant's API key")
        if self.compaction_key is not None:
            try:
                parse_key(self.compaction_key)
            except InvalidInput as e:
                raise ConfigError(str(e)) from None
        if not self.api_keys and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to listen on {self.host} without API keys; configure "
                "--api-keys-file or THREADLOOM_API_KEYS, or bind to a loopback address"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_api_keys(text: str) -> dict[str, str]:
    """A JSON object `{key: tenant}`, or `key=tenant` entries separated by commas or newlines
    (`#` starts a comment line). An entry without `=` or with an empty side is refused: a
    forgotten tenant must not quietly make a key that sees the "default" tenant's data."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            data = msgspec.json.decode(text, type=dict[str, str])
        except msgspec.MsgspecError as e:
            raise ConfigError(f"API keys: {e}") from None
        return data
    keys: dict[str, str] = {}
    for n, raw in enumerate(text.replace("\n", ",").split(","), 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        key, sep, owner = entry.partition("=")
        if not sep or not key.strip() or not owner.strip():
            raise ConfigError(
                f"API keys: entry {n} is not key=tenant (the key itself is not shown)"
            )
        keys[key.strip()] = owner.strip()
    return keys


def load_api_keys_file(path: str | os.PathLike[str]) -> dict[str, str]:
    try:
        return parse_api_keys(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read API keys file {path}: {e}") from None


# flag name -> (environment variable, type, help)
_FLAGS: dict[str, tuple[str, type, str]] = {
    "host": ("THREADLOOM_HOST", str, "address to listen on (default 127.0.0.1)"),
    "port": ("THREADLOOM_PORT", int, "port to listen on (default 8000)"),
    "store": (
        "THREADLOOM_STORE",
        str,
        "LMDB store directory (default ./threadloom-data) or postgresql:// URL",
    ),
    "model": ("THREADLOOM_MODEL", str, "GGUF model file (default: the shipped default model)"),
    "backend": (
        "THREADLOOM_BACKEND",
        str,
        "ctransformers (default) or llama-cpp (pip install 'threadloom[llama]')",
    ),
    "chat_template": (
        "THREADLOOM_CHAT_TEMPLATE",
        str,
        "chat template for models without one: a Jinja file, or gemma, chatml or llama3",
    ),
    "alias": ("THREADLOOM_ALIAS", str, "the model's name in /v1/models and requests"),
    "api_keys_file": ("THREADLOOM_API_KEYS_FILE", str, "file of API keys: {key: tenant}"),
    "metrics_key": (
        "THREADLOOM_METRICS_KEY",
        str,
        "the operator's key for /metrics (with API keys, tenants' keys cannot read it)",
    ),
    "compaction_key": (
        "THREADLOOM_COMPACTION_KEY",
        str,
        "64 hex digits sealing compaction items (default: a key the store keeps)",
    ),
    "max_body_bytes": ("THREADLOOM_MAX_BODY_BYTES", int, "largest request body (1 MiB)"),
    "max_queue": ("THREADLOOM_MAX_QUEUE", int, "requests that may wait for a slot (64)"),
    "log_level": ("THREADLOOM_LOG_LEVEL", str, "debug, info, warning or error (info)"),
    "slots": ("THREADLOOM_SLOTS", int, "conversations generating at the same time (4)"),
    "threads": (
        "THREADLOOM_THREADS",
        int,
        "compute threads for the whole process (default: the physical cores)",
    ),
    "prefill_chunk": (
        "THREADLOOM_PREFILL_CHUNK",
        int,
        "prompt tokens evaluated between two decode steps of the other streams (64)",
    ),
    "cache_dir": ("THREADLOOM_CACHE_DIR", str, "where converted model files are kept"),
    "context_length": (
        "THREADLOOM_CONTEXT_LENGTH",
        int,
        "context per slot in tokens (4096, at most the model's)",
    ),
    "gpu_layers": ("THREADLOOM_GPU_LAYERS", int, "layers to offload to a CUDA GPU (0)"),
    "decode_group": (
        "THREADLOOM_DECODE_GROUP",
        int,
        "llama-cpp: sequences per llama_decode call (default all; 1 for comparisons)",
    ),
    "kv_cache_type": (
        "THREADLOOM_KV_CACHE_TYPE",
        str,
        "llama-cpp: KV cache element type, f16 (default) or q8_0 (half the memory)",
    ),
    "kv_cache_dir": (
        "THREADLOOM_KV_CACHE_DIR",
        str,
        "where conversation states are saved (llama-cpp default: beside the store)",
    ),
    "kv_cache_bytes": (
        "THREADLOOM_KV_CACHE_BYTES",
        int,
        "most bytes of saved conversation states, oldest out first (2 GiB; 0: off)",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, (env, kind, help_text) in _FLAGS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=None,
            help=f"{help_text}; env {env}",
        )


def from_sources(
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Builds and validates the config: flags first, then `THREADLOOM_*`, then defaults."""
    env = os.environ if environ is None else environ
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    values: dict[str, Any] = {}
    for name, (var, kind, _) in _FLAGS.items():
        value = given.get(name)
        if value is None and env.get(var):
            try:
                value = kind(env[var])
            except ValueError:
                raise ConfigError(f"{var}={env[var]!r} is not a valid {kind.__name__}") from None
        if value is not None:
            values[name] = value
    keys: dict[str, str] = {}
    keys_file = values.pop("api_keys_file", None)
    if keys_file is not None:
        keys.update(load_api_keys_file(keys_file))
    if env.get("THREADLOOM_API_KEYS"):
        keys.update(parse_api_keys(env["THREADLOOM_API_KEYS"]))
    if isinstance(given.get("api_keys"), dict):
        keys.update(given["api_keys"])
    config = ServerConfig(**values, api_keys=keys)
    config.validate()
    return config


def redacted(config: ServerConfig) -> str:
    """The config as JSON for logs, without the keys themselves."""
    data = msgspec.to_builtins(config)
    data["api_keys"] = sorted(set(config.api_keys.values()))
    data["metrics_key"] = None if config.metrics_key is None else "(set)"
    data["compaction_key"] = None if config.compaction_key is None else "(set)"
    data["store"] = describe(config.store)
    return json.dumps(data)
