"""Compaction across a long conversation: prompt tokens and time to first token per turn.

One 30-turn conversation (`previous_response_id` chaining, streamed `POST /v1/responses`,
temperature 0, 48 output tokens) against `threadloom serve` with the real default model and a
2,048-token context, run twice in one process on one server:

- without compaction: `truncation: "auto"` (the tokens strategy drops the oldest turns once the
  conversation no longer fits);
- with compaction: `context_management: [{"type": "compaction", "compact_threshold": N}]`, so
  the server replaces the history by a sealed summary whenever the prompt would cross N tokens.

Per turn: input tokens (usage) and TTFT measured by the client; the table gives both runs side
by side, and the totals.

Usage: python benches/bench_compaction.py [--turns 30] [--threshold 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from aiohttp import ClientSession, ClientTimeout

sys.path.insert(0, os.path.dirname(__file__))
from bench_concurrency import free_port, response_events, serve_command, serving, turn_texts

CONTEXT = 2048


async def turn(
    session: ClientSession, url: str, text: str, previous: str | None, extra: dict[str, Any]
) -> tuple[str, int, float, list[str]]:
    """Response id, input tokens, TTFT and the output item types of one streamed turn."""
    body: dict[str, Any] = {
        "model": "default",
        "input": text,
        "max_output_tokens": 48,
        "temperature": 0,
        "stream": True,
        **extra,
    }
    if previous is not None:
        body["previous_response_id"] = previous
    sent, first, rid, tokens, kinds = time.perf_counter(), None, "", 0, []
    async for event in response_events(session, f"{url}/v1/responses", body):
        kind = event["type"]
        if kind == "response.created":
            rid = event["response"]["id"]
        elif kind == "response.output_text.delta" and first is None:
            first = time.perf_counter()
        elif kind in ("response.completed", "response.incomplete"):
            tokens = event["response"]["usage"]["input_tokens"]
            kinds = [item["type"] for item in event["response"]["output"]]
    return rid, tokens, (first or time.perf_counter()) - sent, kinds


def texts(turns: int) -> list[str]:
    out: list[str] = []
    n = 0
    while len(out) < turns:
        out.extend(turn_texts(n))
        n += 1
    return out[:turns]


async def conversation(
    url: str, turns: int, extra: dict[str, Any]
) -> list[tuple[int, float, bool]]:
    rows = []
    previous = None
    async with ClientSession(timeout=ClientTimeout(total=None, sock_read=600)) as session:
        for text in texts(turns):
            previous, tokens, ttft, kinds = await turn(session, url, text, previous, extra)
            rows.append((tokens, ttft, "compaction" in kinds))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=30)
    ap.add_argument("--threshold", type=int, default=1024)
    args = ap.parse_args()
    compact = {"context_management": [{"type": "compaction", "compact_threshold": args.threshold}]}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve_args = ["--context-length", str(CONTEXT), "--slots", "2"]
        command = serve_command(sys.executable, os.path.join(tmp, "store"), port, serve_args)
        with serving(command, url, tmp):
            plain = asyncio.run(conversation(url, args.turns, {"truncation": "auto"}))
            packed = asyncio.run(conversation(url, args.turns, compact))
    print("| turn | input tokens, truncation | TTFT (s) | input tokens, compaction | TTFT (s) |")
    print("|---|---|---|---|---|")
    for i, ((t1, f1, _), (t2, f2, c2)) in enumerate(zip(plain, packed, strict=True), 1):
        mark = " (compacted)" if c2 else ""
        print(f"| {i} | {t1} | {f1:.2f} | {t2}{mark} | {f2:.2f} |")
    print(
        f"| total / mean | {sum(t for t, _, _ in plain)} | "
        f"{statistics.mean(f for _, f, _ in plain):.2f} | {sum(t for t, _, _ in packed)} | "
        f"{statistics.mean(f for _, f, _ in packed):.2f} |"
    )
    print(f"compactions: {sum(c for _, _, c in packed)}")


if __name__ == "__main__":
    main()
