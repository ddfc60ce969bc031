"""Helpers for the server tests: a scripted backend that echoes what it saw, a server running
in its own thread (for blocking clients such as the `openai` SDK) and an SSE parser."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from support import POSTGRES_URL, child_env, create_pg_schema, drop_pg_schema, helper_command
from threadloom.server.config import ServerConfig
from threadloom.testing import ScriptedFactory

EOS = 2
_USER = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)


class EchoScript:
    """Replies `[first user message | second | ...]` with every user message of the prompt, so
    a test sees exactly which history the model got. A last message `long:N` makes it produce
    N tokens of " x" and no end-of-sequence (for length limits and disconnects)."""

    def __init__(self) -> None:
        self.tokenizer: Any = None
        self.prompts: list[str] = []

    def __call__(self, ids: Sequence[int]) -> list[int]:
        prompt = self.tokenizer.decode(list(ids))
        self.prompts.append(prompt)
        users = _USER.findall(prompt)
        if users and users[-1].startswith("long:"):
            x = self.tokenizer.encode(" x")
            return x * int(users[-1][5:].split()[0])
        return [*self.tokenizer.encode("[" + " | ".join(users) + "]"), EOS]


def scripted(script: EchoScript, **kwargs: Any) -> ScriptedFactory:
    return ScriptedFactory(script, **kwargs)


def attach_tokenizer(app: web.Application, script: EchoScript) -> None:
    """Once the engine is up, lends its tokenizer to the script."""
    from threadloom.server.keys import ENGINE

    async def hook(app: web.Application) -> None:
        script.tokenizer = app[ENGINE].tokenizer

    app.on_startup.append(hook)


class ThreadedServer:
    """The app on 127.0.0.1, port 0, served by an event loop in a background thread."""

    def __init__(self, make_app: Callable[[], web.Application]) -> None:
        self._make_app = make_app
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ThreadedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=60)
        return self

    async def _start(self) -> None:
        self.app = self._make_app()
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def parse_sse(raw: str) -> list[tuple[str | None, dict[str, Any]]]:
    """Splits an SSE body into (event name, decoded data) frames; strict about the format."""
    frames = []
    assert raw.endswith("\n\n"), raw[-200:]
    for block in raw[:-2].split("\n\n"):
        event: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            field, sep, value = line.partition(": ")
            assert sep, f"bad SSE line {line!r}"
            if field == "event":
                event = value
            else:
                assert field == "data", f"bad SSE field {field!r}"
                data.append(value)
        frames.append((event, json.loads("\n".join(data))))
    return frames


def config(tmp_path: Any, **kwargs: Any) -> ServerConfig:
    kwargs.setdefault("store", str(tmp_path / "store"))
    return ServerConfig(**kwargs)


BACKEND_OPTIONS = ("delay_s", "context_length", "fail_after")


def scripted_app(tmp_path: Any, script: EchoScript | None = None, **kwargs: Any) -> web.Application:
    """The server app on a store under `tmp_path` with the scripted backend running `script`
    (default: a fresh `EchoScript`). `kwargs` are `ServerConfig` fields, except the backend's
    own options (`BACKEND_OPTIONS`)."""
    script = script or EchoScript()
    backend = {k: kwargs.pop(k) for k in BACKEND_OPTIONS if k in kwargs}
    from threadloom.server.app import init_app

    app = init_app(config(tmp_path, **kwargs), backend=scripted(script, **backend))
    attach_tokenizer(app, script)
    return app


class ServerProcess:
    """One scripted server in its own process, on a free loopback port."""

    def __init__(self, store: str, log: Path, delay_s: float = 0.0) -> None:
        self._log: IO[str] = log.open("w")
        self.proc = subprocess.Popen(
            helper_command("scripted_server.py", store, str(delay_s)),
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=child_env(),
        )
        self.log = log
        self.port = 0

    def wait_ready(self) -> ServerProcess:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            raise AssertionError(f"server did not start: {line!r}\n{self.log.read_text()}")
        self.port = int(line.split()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


def start_servers(store: str, tmp_path: Path, n: int, delay_s: float = 0.0) -> list[ServerProcess]:
    servers = [ServerProcess(store, tmp_path / f"server{i}.log", delay_s) for i in range(n)]
    try:
        return [s.wait_ready() for s in servers]
    except BaseException:
        for s in servers:
            s.stop()
        raise


# Two tenants, for the tests that run real clients (the openai SDK) against a threaded server.
SDK_KEYS = {"key-alice": "alice", "key-bob": "bob"}


def sdk_client(server: ThreadedServer, key: str = "key-alice") -> Any:
    """The official `openai` SDK's client for `server`, as tenant `key`."""
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def keyed_scripted_app(tmp: Any) -> web.Application:
    """The app with `SDK_KEYS` and the echo script, for a `ThreadedServer`."""
    from threadloom.server.app import init_app

    script = EchoScript()
    app = init_app(config(tmp, api_keys=SDK_KEYS), backend=scripted(script))
    attach_tokenizer(app, script)
    return app


@contextlib.contextmanager
def echo_server(store: str, directory: Path, delay_s: float = 0.0) -> Iterator[ThreadedServer]:
    """A threaded server with the echo script and the SDK keys, on `store` ("postgres": a
    fresh schema of the test cluster, dropped afterwards; else LMDB in `directory`)."""
    from threadloom.server.app import init_app

    schema = None
    if store == "postgres":
        assert POSTGRES_URL is not None
        schema, spec = create_pg_schema(POSTGRES_URL)
    else:
        spec = str(directory / "store")

    def make() -> web.Application:
        script = EchoScript()
        app = init_app(
            ServerConfig(store=spec, api_keys=SDK_KEYS), backend=scripted(script, delay_s=delay_s)
        )
        attach_tokenizer(app, script)
        return app

    s = ThreadedServer(make).start()
    try:
        yield s
    finally:
        s.stop()
        if schema is not None:
            assert POSTGRES_URL is not None
            drop_pg_schema(POSTGRES_URL, schema)
