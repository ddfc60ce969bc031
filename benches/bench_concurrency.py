"""Concurrent conversations against a real `threadloom serve` with the real default model.

N clients each hold a 3-turn conversation through streamed `POST /v1/responses`
(`previous_response_id`, `max_output_tokens` 64, temperature 0), all at the same time, for N in
1, 2, 4 and 8, against one server at its default slot count. Per level: aggregate output tok/s
(all output tokens over the level's wall time), TTFT p50/p99 measured by the client (request
sent to first text delta), per-stream decode tok/s (tokens after the first over the time they
took) min and max, and mean request latency. Ratios are against the single-conversation level of
the same run.

Goals (issue 13): aggregate tok/s at every level >= 0.9x the single-conversation figure; TTFT
p99 at 4 conversations <= 4x the single-conversation TTFT; the slowest stream >= 1/2 of the
fastest.

With `--baseline-python PATH` (the interpreter of another install, e.g. the previous release
in its own virtual environment), the same levels run against that server too, after this one,
and a last table gives this server's figures over the baseline's.

Usage: python benches/bench_concurrency.py [--levels 1,2,4,8] [--turns 3] [--rounds 1]
       [--serve-arg=--slots=2 ...] [--baseline-python PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout

NAMES = ["Ada", "Bram", "Chloe", "Dmitri", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas"]
CITIES = ["Lisbon", "Oslo", "Kyoto", "Quito", "Cairo", "Perth", "Lima", "Turin", "Riga", "Hanoi"]


def turn_texts(n: int) -> list[str]:
    name, city = NAMES[n % len(NAMES)], CITIES[n % len(CITIES)]
    return [
        f"Hello! My name is {name} and I live in {city}.",
        f"Tell me one short fact about {city}.",
        "What is my name?",
    ]


@dataclass
class Request:
    sent: float
    first: float | None = None
    done: float = 0.0
    tokens: int = 0

    @property
    def ttft(self) -> float:
        return (self.first or self.done) - self.sent

    @property
    def stream_rate(self) -> float | None:
        if self.first is None or self.tokens < 2 or self.done <= self.first:
            return None
        return (self.tokens - 1) / (self.done - self.first)


@dataclass
class Level:
    conversations: int
    wall: float = 0.0
    # CPU seconds the server process (all its threads) spent on this level, where known.
    server_cpu: float | None = None
    requests: list[Request] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.requests)

    @property
    def throughput(self) -> float:
        return self.tokens / self.wall


def process_cpu(pid: int) -> float:
    """User and system CPU seconds of process `pid` so far, all its threads (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def response_events(
    session: ClientSession, url: str, body: dict[str, Any]
) -> AsyncIterator[dict[str, Any]]:
    """The events of one streamed `POST /v1/responses`; a failed generation raises."""
    async with session.post(url, json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event["type"] in ("response.failed", "error"):
                raise RuntimeError(f"generation failed: {event}")
            yield event


async def one_turn(
    session: ClientSession, url: str, text: str, previous: str | None
) -> tuple[Request, str, str]:
    body: dict[str, object] = {
        "model": "default",
        "input": text,
        "max_output_tokens": 64,
        "temperature": 0,
        "stream": True,
    }
    if previous is not None:
        body["previous_response_id"] = previous
    req = Request(sent=time.perf_counter())
    response_id, answer = "", []
    async for event in response_events(session, f"{url}/v1/responses", body):
        kind = event["type"]
        if kind == "response.created":
            response_id = event["response"]["id"]
        elif kind == "response.output_text.delta":
            if req.first is None:
                req.first = time.perf_counter()
            answer.append(event["delta"])
        elif kind in ("response.completed", "response.incomplete"):
            req.tokens = event["response"]["usage"]["output_tokens"]
    req.done = time.perf_counter()
    return req, response_id, "".join(answer)


async def chat_turn(
    session: ClientSession, url: str, text: str, history: list[dict[str, str]] | None
) -> tuple[Request, list[dict[str, str]], str]:
    """One turn the stateless way (what llama-server's users do): the whole history is sent
    again through streamed `/v1/chat/completions`, with `cache_prompt` on."""
    messages = [*(history or []), {"role": "user", "content": text}]
    body = {
        "model": "default",
        "messages": messages,
        "max_tokens": 64,
        "temperature": 0,
        "stream": True,
        "cache_prompt": True,
        # threadloom's default sampling (SamplingParams: a 1.1 repetition penalty over the last
        # 64 tokens, prompt included), which llama-server leaves off by default: the same
        # replies, so both generate as many tokens from the same histories.
        "repeat_penalty": 1.1,
        "repeat_last_n": 64,
        "stream_options": {"include_usage": True},
    }
    req = Request(sent=time.perf_counter())
    answer: list[str] = []
    chunks = 0
    # llama-server closes a kept-alive connection after a stream: one connection per request.
    headers = {"Connection": "close"}
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            for choice in event.get("choices") or []:
                delta = choice.get("delta", {}).get("content")
                if delta:
                    if req.first is None:
                        req.first = time.perf_counter()
                    answer.append(delta)
                    chunks += 1
            if event.get("usage"):
                req.tokens = event["usage"]["completion_tokens"]
    req.tokens = req.tokens or chunks
    req.done = time.perf_counter()
    reply = "".join(answer)
    return req, [*messages, {"role": "assistant", "content": reply}], reply


async def run_level(
    url: str, conversations: int, turns: int, offset: int, turn: Any = one_turn
) -> Level:
    """`conversations` clients at once, each holding a `turns`-turn conversation through
    `turn` (`one_turn`: threadloom's stored conversations; `chat_turn`: history resent)."""
    level = Level(conversations)
    timeout = ClientTimeout(total=None, sock_read=600)
    async with ClientSession(timeout=timeout) as session:

        async def conversation(n: int) -> None:
            previous: Any = None
            for text in turn_texts(offset + n)[:turns]:
                req, previous, answer = await turn(session, url, text, previous)
                level.requests.append(req)
            level.answers.append(f"{NAMES[(offset + n) % len(NAMES)]}: {answer.strip()}")

        started = time.perf_counter()
        await asyncio.gather(*(conversation(n) for n in range(conversations)))
        level.wall = time.perf_counter() - started
    return level


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> dict[str, object]:
    async with ClientSession() as session:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError("the server exited during start")
            try:
                async with session.get(f"{url}/health") as r:
                    if r.status == 200:
                        return dict(await r.json())
            except OSError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the server did not start")


def serve_command(python: str, store: str, port: int, serve_args: list[str]) -> list[str]:
    """`python -m threadloom serve` on `store` and loopback `port`, quiet."""
    return [
        python,
        "-m",
        "threadloom",
        "serve",
        "--port",
        str(port),
        "--store",
        store,
        "--log-level",
        "warning",
        *serve_args,
    ]


@contextlib.contextmanager
def serving(command: list[str], url: str, cwd: str | None = None) -> Iterator[dict[str, object]]:
    """Runs the server `command` and yields its `url`/health once it answers (with the
    server's "pid" added); stops it with SIGTERM afterwards. A failure prints the end of the
    server's log."""
    log = open(os.path.join(cwd or tempfile.gettempdir(), "server.log"), "w")  # noqa: SIM115
    proc = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield {**asyncio.run(wait_ready(url, proc)), "pid": proc.pid}
    except BaseException:
        log.flush()
        print(Path(log.name).read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def measure_command(
    command: list[str],
    url: str,
    levels: list[int],
    turns: int,
    rounds: int,
    turn: Any = one_turn,
    cwd: str | None = None,
) -> dict[int, list[Level]]:
    """Starts a server with `command`, waits for `url`/health, runs every level against it
    (after a warm-up conversation), then stops it."""
    with serving(command, url, cwd) as health:
        print(f"{command[0]} ...: {json.dumps(health)[:200]}")
        asyncio.run(run_level(url, 1, 1, 1000, turn))  # warm-up: page the weights in
        results: dict[int, list[Level]] = {n: [] for n in levels}
        offset = 0
        for _ in range(rounds):
            for n in levels:
                cpu = process_cpu(int(str(health["pid"])))
                level = asyncio.run(run_level(url, n, turns, offset, turn))
                level.server_cpu = process_cpu(int(str(health["pid"]))) - cpu
                results[n].append(level)
                offset += n
    return results


def measure(
    python: str, serve_args: list[str], levels: list[int], turns: int, rounds: int
) -> dict[int, list[Level]]:
    """Starts `python -m threadloom serve` on a fresh store and runs every level against it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        command = serve_command(python, os.path.join(tmp, "store"), port, serve_args)
        return measure_command(command, url, levels, turns, rounds, cwd=tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="repeat every level")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra serve flag")
    parser.add_argument("--baseline-python", help="interpreter of a baseline install")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    ours = measure(sys.executable, args.serve_arg, levels, args.turns, args.rounds)
    report(ours)
    if args.baseline_python:
        base = measure(args.baseline_python, [], levels, args.turns, args.rounds)
        print("\nbaseline:")
        report(base)
        print("\n| conversations | aggregate tok/s, this / baseline | TTFT p99, baseline / this |")
        print("|---|---|---|")
        for n in levels:
            tps, reqs, _ = merged(ours, n)
            btps, breqs, _ = merged(base, n)
            p99 = percentile([r.ttft for r in reqs], 99)
            bp99 = percentile([r.ttft for r in breqs], 99)
            print(f"| {n} | {tps / btps:.1f}x | {bp99 / p99:.1f}x |")


def cpu_per_token(results: dict[int, list[Level]], n: int) -> float:
    """Server CPU milliseconds per generated token at level `n`."""
    runs = results[n]
    return 1000 * sum(lv.server_cpu or 0.0 for lv in runs) / max(1, sum(lv.tokens for lv in runs))


def merged(results: dict[int, list[Level]], n: int) -> tuple[float, list[Request], float]:
    runs = results[n]
    tokens = sum(lv.tokens for lv in runs)
    wall = sum(lv.wall for lv in runs)
    return tokens / wall, [r for lv in runs for r in lv.requests], wall


def report(results: dict[int, list[Level]]) -> None:
    base_tps, base_reqs, _ = merged(results, min(results))
    base_ttft = percentile([r.ttft for r in base_reqs], 99)
    print()
    print(
        "| conversations | aggregate tok/s | vs 1 | TTFT p50 | TTFT p99 | p99 vs 1 "
        "| stream tok/s min / max | min/max | mean latency |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sorted(results):
        tps, reqs, _ = merged(results, n)
        ttfts = [r.ttft for r in reqs]
        rates = [x for r in reqs if (x := r.stream_rate) is not None]
        lo, hi = (min(rates), max(rates)) if rates else (0.0, 0.0)
        latency = statistics.mean(r.done - r.sent for r in reqs)
        print(
            f"| {n} | {tps:.1f} | {tps / base_tps:.2f}x | {percentile(ttfts, 50) * 1000:.0f} ms "
            f"| {percentile(ttfts, 99) * 1000:.0f} ms | {percentile(ttfts, 99) / base_ttft:.2f}x "
            f"| {lo:.1f} / {hi:.1f} | {lo / hi if hi else 0:.2f} | {latency:.2f} s |"
        )
    print()
    print("last answers (each conversation's third turn asks for its own name):")
    for n in sorted(results):
        for i, answer in enumerate(results[n][-1].answers):
            print(f"  c={n} #{i} {answer[:90]!r}")


if __name__ == "__main__":
    main()
