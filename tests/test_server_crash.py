"""`kill -9` of a server under concurrent streaming load: after a restart on the same store,
every response id a client saw announced answers, with the inputs it announced. While a
response generates, `GET /v1/responses/{id}` says `in_progress`."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from server_support import ServerProcess

pytestmark = pytest.mark.asyncio

CLIENTS = 6


async def _turn(
    session: aiohttp.ClientSession, url: str, text: str, previous: str | None, seen: dict[str, str]
) -> str | None:
    """Streams one response; records its id as soon as it is announced."""
    body: dict[str, Any] = {"input": text, "stream": True}
    if previous is not None:
        body["previous_response_id"] = previous
    rid = None
    async with session.post(f"{url}/v1/responses", json=body) as r:
        assert r.status == 200
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event["type"] == "response.created":
                    rid = event["response"]["id"]
                    seen[rid] = text
    return rid


async def _load_and_kill(server: ServerProcess, seen: dict[str, str], client: Any) -> None:
    async with aiohttp.ClientSession() as session:
        clients = [asyncio.ensure_future(client(n, session)) for n in range(CLIENTS)]
        for _ in range(1000):
            if len(seen) >= CLIENTS + 2:
                break
            await asyncio.sleep(0.02)
        assert len(seen) >= CLIENTS + 2, "the server announced too few responses"
        # Mid-stream: an announced response still generating answers as in progress.
        running = [rid for rid, text in seen.items() if text.startswith("long:")][-1]
        async with session.get(f"{server.url}/v1/responses/{running}") as r:
            assert r.status == 200
            assert (await r.json())["status"] in ("in_progress", "incomplete", "completed")
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        await asyncio.gather(*clients, return_exceptions=True)


async def test_kill_9_loses_no_announced_response(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    server = ServerProcess(store, tmp_path / "first.log", delay_s=0.005).wait_ready()
    seen: dict[str, str] = {}

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        previous = None
        for turn in range(100):
            # Short replies and long ones, so the kill finds some stored and some running.
            text = f"long:100 c{n}t{turn}" if (n + turn) % 2 else f"c{n}t{turn}"
            previous = await _turn(session, server.url, text, previous, seen) or previous

    try:
        await _load_and_kill(server, seen, client)
    finally:
        server.stop()

    again = ServerProcess(store, tmp_path / "second.log").wait_ready()
    try:
        statuses: dict[str, int] = {}
        async with aiohttp.ClientSession() as session:
            for rid, text in seen.items():
                async with session.get(f"{again.url}/v1/responses/{rid}") as r:
                    assert r.status == 200, (rid, await r.text())
                    status = (await r.json())["status"]
                    assert status in ("completed", "incomplete")
                    statuses[status] = statuses.get(status, 0) + 1
                async with session.get(f"{again.url}/v1/responses/{rid}/input_items") as r:
                    items = (await r.json())["data"]
                    assert [i["content"][0]["text"] for i in items] == [text]
        print(f"clients {CLIENTS}, announced {len(seen)}, retrievable {len(seen)}: {statuses}")
        assert statuses.get("incomplete", 0) >= 1
    finally:
        again.stop()
