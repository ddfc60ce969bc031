"""HTTP server overhead with the deterministic scripted backend (no model time), side by side
with a bare aiohttp handler in one run:

1. Stateful turns: `POST /v1/responses`, non-streaming, each client chaining
   `previous_response_id` (a fresh conversation every `--chain` turns), at concurrency 1, 16
   and 64: requests/s and p50/p99 latency, vs a bare handler that reads the body and answers a
   JSON body of the same size (aiohttp's own ceiling on this machine). Goal: >= 70%.
2. Streaming: frames/s of a 1,000-token SSE stream from `/v1/responses` vs a bare handler writing
   as many frames of the same size.

The servers and the load generator run in separate processes, so the client does not steal the
server's event loop. Both servers stay up for the whole run and are measured alternately.

Usage: python benches/bench_server.py [--duration 5] [--quick] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import multiprocessing as mp
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import ClientSession, TCPConnector, web

STREAM_TOKENS = 1000
REPLY_TOKENS = 16
STREAM_MARKER = "STREAM-ALL-THE-TOKENS"
EOS = 2
_json = msgspec.json.Decoder()


# ---- the servers (child processes) -----------------------------------------------------------


class Script:
    """Replies REPLY_TOKENS tokens and an end-of-sequence, or STREAM_TOKENS tokens when the last
    user message is the marker. Looks only at the prompt's tail, so the script itself costs
    next to nothing."""

    def __init__(self) -> None:
        self.tokenizer: Any = None
        self.marker: list[int] = []
        self.reply: list[int] = []
        self.stream: list[int] = []

    def prepare(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.marker = tokenizer.encode(STREAM_MARKER)
        x = tokenizer.encode(" x")
        self.reply = [*(x * REPLY_TOKENS)[:REPLY_TOKENS], EOS]
        self.stream = (x * STREAM_TOKENS)[:STREAM_TOKENS]

    def __call__(self, ids: Sequence[int]) -> list[int]:
        tail = list(ids[-(len(self.marker) + 12) :])
        n = len(self.marker)
        if any(tail[i : i + n] == self.marker for i in range(len(tail) - n + 1)):
            return self.stream
        return self.reply


def threadloom_app(store: str) -> web.Application:
    from threadloom.server.app import init_app
    from threadloom.server.config import ServerConfig
    from threadloom.server.keys import ENGINE
    from threadloom.testing import ScriptedFactory

    script = Script()
    app = init_app(ServerConfig(store=store, max_queue=256), backend=ScriptedFactory(script))

    async def attach(app: web.Application) -> None:
        script.prepare(app[ENGINE].tokenizer)

    app.on_startup.append(attach)
    return app


def bare_app(json_body: bytes, frame: bytes, frames: int) -> web.Application:
    """The ceiling: the same transport work with no framework code of ours."""
    from threadloom.server.sse import SSE_HEADERS

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=json_body, content_type="application/json")

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(frames):
            await response.write(frame)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/json", answer)
    app.router.add_post("/sse", stream)
    return app


def serve(kind: str, args: tuple[Any, ...], ready: Any, profile: str | None) -> None:
    """Child process: serves the app on a free loopback port until SIGTERM (SIGUSR1 dumps
    every thread's stack, for a server that hangs)."""
    faulthandler.register(signal.SIGUSR1)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()

    async def main() -> None:
        app = threadloom_app(*args) if kind == "threadloom" else bare_app(*args)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        ready.put(site._server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
    if profiler is not None and profile:
        profiler.disable()
        profiler.dump_stats(profile)


class Server:
    def __init__(self, kind: str, *args: Any, profile: str | None = None) -> None:
        self.kind = kind
        ctx = mp.get_context("spawn")
        ready = ctx.Queue()
        self.process = ctx.Process(target=serve, args=(kind, args, ready, profile), daemon=True)
        self.process.start()
        self.port: int = ready.get(timeout=120)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.pid is not None and self.process.is_alive():
            os.kill(self.process.pid, signal.SIGTERM)
        self.process.join(timeout=30)
        if self.process.is_alive():  # SIGTERM is handled (graceful stop), so it cannot force
            print(f"{self.kind} server did not stop in 30 s; killing it", file=sys.stderr)
            self.process.kill()
            self.process.join()


# ---- the load generator (this process) -------------------------------------------------------


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Turn = Callable[[str, "str | None"], Awaitable[str]]  # (input, previous id) -> new id


async def drive(turn: Turn, concurrency: int, duration: float, warmup: float, chain: int) -> Load:
    """`concurrency` clients, each holding one conversation, for `duration` seconds."""
    latencies: list[float] = []
    counting = False
    stop = False

    async def client(n: int) -> None:
        previous: str | None = None
        i = 0
        while not stop:
            t0 = time.perf_counter()
            rid = await turn(f"client {n} turn {i}: tell me more", previous)
            if counting:
                latencies.append(time.perf_counter() - t0)
            i += 1
            previous = None if i % chain == 0 else rid

    tasks = [asyncio.ensure_future(client(n)) for n in range(concurrency)]
    await asyncio.sleep(warmup)
    counting = True
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    counting = False
    elapsed = time.perf_counter() - t0
    stop = True
    await asyncio.gather(*tasks)
    return Load(
        rps=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        requests=len(latencies),
    )


async def http_turns(
    url: str, concurrency: int, duration: float, warmup: float, chain: int
) -> Load:
    connector = TCPConnector(limit=concurrency)
    headers = {"Content-Type": "application/json"}
    async with ClientSession(connector=connector, headers=headers) as session:

        async def turn(text: str, previous: str | None) -> str:
            body: dict[str, Any] = {"input": text}
            if previous is not None:
                body["previous_response_id"] = previous
            async with session.post(url, data=msgspec.json.encode(body)) as r:
                raw = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {raw[:300]!r}")
            return _json.decode(raw)["id"]  # type: ignore[no-any-return]

        return await drive(turn, concurrency, duration, warmup, chain)


def engine_turns(store: str, levels: list[int], timing: tuple[float, float, int], out: Any) -> None:
    """Child process: the same turns through `Engine.respond` in-process, no HTTP. What the
    server could reach if its HTTP layer cost nothing."""
    from threadloom.engine import Engine
    from threadloom.testing import ScriptedFactory

    script = Script()
    engine = Engine(store, backend=ScriptedFactory(script), max_queue=256)
    script.prepare(engine.tokenizer)

    async def turn(text: str, previous: str | None) -> str:
        result = await engine.respond(text, previous_response_id=previous)
        assert result.response_id is not None
        return result.response_id

    try:
        for c in levels:
            out.put(asyncio.run(drive(turn, c, *timing)))
    finally:
        engine.close()


async def stream_once(url: str) -> tuple[float, int, list[int]]:
    """Seconds from request to the last byte, frames received, and each frame's size."""
    # All STREAM_TOKENS tokens (the default cap is lower): the request's fixed cost must be
    # spread over as many frames as the bare handler's, or it reads as a cost per frame.
    body = msgspec.json.encode(
        {
            "input": STREAM_MARKER,
            "stream": True,
            "store": False,
            "max_output_tokens": STREAM_TOKENS,
        }
    )
    sizes: list[int] = []
    async with ClientSession() as session:
        t0 = time.perf_counter()
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200, await r.text()
            buffer = b""
            async for chunk in r.content.iter_any():
                buffer += chunk
                *frames, buffer = buffer.split(b"\n\n")
                sizes.extend(len(f) + 2 for f in frames)
        elapsed = time.perf_counter() - t0
    return elapsed, len(sizes), sizes


async def sample_bodies(url: str) -> tuple[bytes, bytes]:
    """A real turn's JSON body and a real token frame, so the bare handler sends the same
    bytes."""
    async with ClientSession() as session:
        first = await session.post(f"{url}/v1/responses", json={"input": "hello"})
        first_body = await first.read()
        second = await session.post(
            f"{url}/v1/responses",
            json={"input": "again", "previous_response_id": _json.decode(first_body)["id"]},
        )
        body = await second.read()
    _, _, sizes = await stream_once(f"{url}/v1/responses")
    token_frame = statistics.median_low(sizes)
    frame = b"event: response.output_text.delta\ndata: "
    frame += b"x" * (token_frame - len(frame) - 2) + b"\n\n"
    return body, frame


# ---- the run ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--chain", type=int, default=32, help="turns per conversation")
    parser.add_argument("--streams", type=int, default=10, help="1,000-token streams per side")
    parser.add_argument("--quick", action="store_true", help="1.5 s cells, 3 streams")
    parser.add_argument("--profile", help="cProfile the threadloom server's loop into this file")
    args = parser.parse_args()
    quick = (1.5, 0.5, 3)
    duration, warmup, streams = quick if args.quick else (args.duration, 1.0, args.streams)
    timing = (duration, warmup, args.chain)

    with tempfile.TemporaryDirectory() as tmp:
        # The engine alone first, on its own, so nothing else competes for the cores.
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        child = ctx.Process(
            target=engine_turns, args=(str(Path(tmp) / "engine"), args.concurrency, timing, out)
        )
        child.start()
        engine = [out.get(timeout=600) for _ in args.concurrency]
        child.join()

        tl = Server("threadloom", str(Path(tmp) / "store"), profile=args.profile)
        try:
            body, frame = asyncio.run(sample_bodies(tl.url))
            bare = Server("bare", body, frame, STREAM_TOKENS + 9)
            try:
                turns_table(tl.url, bare.url, args.concurrency, engine, timing)
                streams_table(tl.url, bare.url, streams)
                print(f"(JSON body {len(body)} bytes, token frame {len(frame)} bytes)")
            finally:
                bare.stop()
        finally:
            tl.stop()
    if args.profile:
        print(f"profile of the threadloom server: {args.profile}")


def turns_table(
    tl: str, bare: str, levels: list[int], engine: list[Load], timing: tuple[float, float, int]
) -> None:
    print(
        f"Stateful turns: POST /v1/responses chaining previous_response_id, {timing[0]:g} s "
        "per cell.\n'engine' is Engine.respond in-process (no HTTP); 'bare' an aiohttp "
        "handler answering a same-size body.\n"
    )
    header = (
        f"{'conc':>4} | {'threadloom req/s':>16} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'engine req/s':>12} {'p50 ms':>7} | {'bare req/s':>10} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'vs bare':>7} {'vs engine':>9}"
    )
    print(header)
    print("-" * len(header))
    for c, eng in zip(levels, engine, strict=True):
        ours = asyncio.run(http_turns(f"{tl}/v1/responses", c, *timing))
        base = asyncio.run(http_turns(f"{bare}/json", c, *timing))
        print(
            f"{c:>4} | {ours.rps:>16.0f} {ours.p50_ms:>7.2f} {ours.p99_ms:>7.2f} | "
            f"{eng.rps:>12.0f} {eng.p50_ms:>7.2f} | "
            f"{base.rps:>10.0f} {base.p50_ms:>7.2f} {base.p99_ms:>7.2f} | "
            f"{ours.rps / base.rps:>7.0%} {ours.rps / eng.rps:>9.0%}",
            flush=True,
        )


def streams_table(tl: str, bare: str, streams: int) -> None:
    ours_fps: list[float] = []
    base_fps: list[float] = []
    for _ in range(streams):  # interleaved, so both see the same machine load
        s, n, _ = asyncio.run(stream_once(f"{tl}/v1/responses"))
        ours_fps.append(n / s)
        s, n, _ = asyncio.run(stream_once(f"{bare}/sse"))
        base_fps.append(n / s)
    o, b = statistics.median(ours_fps), statistics.median(base_fps)
    print(f"\nStreaming: one {STREAM_TOKENS}-token SSE stream at a time, median of {streams}")
    print(f"  threadloom /v1/responses: {o:>9.0f} frames/s ({1e6 / o:.1f} us/frame)")
    print(f"  bare aiohttp handler:     {b:>9.0f} frames/s ({1e6 / b:.1f} us/frame)")
    print(f"  ratio {o / b:.0%}, overhead {1e6 / o - 1e6 / b:.1f} us per token frame")


if __name__ == "__main__":
    main()
