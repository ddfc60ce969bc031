"""Server settings: flags, `THREADLOOM_*` variables, API keys and the open-server guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")
from threadloom.cli import build_parser
from threadloom.server.config import (
    ConfigError,
    ServerConfig,
    from_sources,
    parse_api_keys,
    redacted,
)

KEYS = {"key-alice": "alice", "key-bob": "bob"}


def test_defaults() -> None:
    c = from_sources({}, {})
    assert (c.host, c.port, c.store, c.model) == ("127.0.0.1", 8000, "./threadloom-data", None)
    assert c.api_keys == {} and c.max_queue == 64 and c.log_level == "info"


def test_flags_win_over_environment(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS))
    env = {
        "THREADLOOM_PORT": "9001",
        "THREADLOOM_HOST": "0.0.0.0",
        "THREADLOOM_STORE": "/env/store",
        "THREADLOOM_MAX_QUEUE": "3",
        "THREADLOOM_API_KEYS": "key-carol=carol,key-dan=default",
    }
    args = build_parser().parse_args(
        ["serve", "--port", "9002", "--api-keys-file", str(keys), "--max-body-bytes", "4096"]
    )
    c = from_sources(args, env)
    assert c.port == 9002 and c.host == "0.0.0.0" and c.store == "/env/store"
    assert c.max_queue == 3 and c.max_body_bytes == 4096
    assert c.api_keys == {**KEYS, "key-carol": "carol", "key-dan": "default"}
    assert "key-alice" not in redacted(c) and "alice" in redacted(c)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="THREADLOOM_PORT"):
        from_sources({}, {"THREADLOOM_PORT": "eighty"})
    with pytest.raises(ConfigError, match="log_level"):
        from_sources({"log_level": "loud"}, {})
    with pytest.raises(ConfigError, match="API keys"):
        parse_api_keys('{"k": 1}')
    # A key without a tenant is refused, and the message does not repeat the key.
    for malformed in ("key-one=alice,key-two", "=alice", "key-three="):
        with pytest.raises(ConfigError, match="not key=tenant") as e:
            parse_api_keys(malformed)
        assert "key-two" not in str(e.value) and "key-three" not in str(e.value)
    with pytest.raises(ConfigError, match="not key=tenant"):
        from_sources({}, {"THREADLOOM_API_KEYS": "secret"})
    with pytest.raises(ConfigError, match="cannot read"):
        from_sources({"api_keys_file": "/nonexistent/keys"}, {})


def test_open_server_refuses_non_loopback(tmp_path: Path) -> None:
    from threadloom.server.app import init_app

    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        ServerConfig(host=host).validate()
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        with pytest.raises(ConfigError, match="without API keys"):
            ServerConfig(host=host).validate()
    with pytest.raises(ConfigError, match="without API keys"):
        init_app(ServerConfig(host="0.0.0.0", store=str(tmp_path)))
    ServerConfig(host="0.0.0.0", api_keys=KEYS).validate()


def test_serve_command_refuses_open_public_bind(capsys: pytest.CaptureFixture[str]) -> None:
    from threadloom.cli import main

    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "without API keys" in capsys.readouterr().err


def test_backend_template_alias_and_state_settings(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", "--backend", "llama-cpp", "--chat-template", "gemma", "--alias", "gemma-3"]
    )
    c = from_sources(args, {"THREADLOOM_KV_CACHE_BYTES": "1000"})
    assert (c.backend, c.chat_template, c.alias, c.kv_cache_bytes) == (
        "llama-cpp", "gemma", "gemma-3", 1000
    )  # fmt: skip
    # Saved states go beside an LMDB store by default, for the llama-cpp backend only.
    store = str(tmp_path / "data")
    assert ServerConfig(store=store, backend="llama-cpp").states_dir() == store + "-kv"
    assert ServerConfig(store=store).states_dir() is None
    assert ServerConfig(store=store, kv_cache_dir="/kv").states_dir() == "/kv"
    assert ServerConfig(store=store, backend="llama-cpp", kv_cache_bytes=0).states_dir() is None
    with pytest.raises(ConfigError, match="backend must be one of"):
        from_sources({"backend": "vllm"}, {})
    with pytest.raises(ConfigError, match="kv_cache_bytes"):
        from_sources({"kv_cache_bytes": -1}, {})
    with pytest.raises(ConfigError, match="alias"):
        from_sources({"alias": " "}, {})


def test_an_unknown_chat_template_is_a_clear_error(tmp_path: Path) -> None:
    from threadloom.errors import InvalidInput
    from threadloom.models import resolve_chat_template

    with pytest.raises(InvalidInput, match="neither a file nor a built-in name"):
        resolve_chat_template(str(tmp_path / "missing.jinja"))
    custom = tmp_path / "t.jinja"
    custom.write_text("{{ messages[0]['content'] }}")
    assert resolve_chat_template(str(custom)) == "{{ messages[0]['content'] }}"
    assert "start_of_turn" in (resolve_chat_template("gemma") or "")
