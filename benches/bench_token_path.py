"""Where a generated token's time goes on the llama.cpp backend (issue 25), in process: the
scheduler and the backend alone, `n` conversations decoding at the same time, each reply 64
tokens (greedy, new prompts each run). Per generated token: wall time of the whole step loop,
the part inside `llama_decode`, everything else (batch building, sampling, masks, the job
callbacks, Python), and the process's CPU time.

The same script profiles an older checkout's backend (PYTHONPATH=<checkout>/python): where the
backend has no core step loop, `llama_decode` is timed through a wrapper of its ctypes handle.

Usage: python benches/bench_token_path.py [--model gemma|smollm2] [--streams 1 8]
       [--tokens 64] [--threads 2] [--churn CLIENTS]

`--churn 4`: only the placement run instead: 4 clients, each starting a fresh conversation as
soon as its last ends, on 8 slots (aggregate tok/s).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from bench_llama import gemma_path, smollm2_path
from threadloom._core import PromptEngine
from threadloom.backends.base import SamplingParams
from threadloom.backends.llama_cpp import LlamaCppBackend
from threadloom.models import resolve_chat_template
from threadloom.scheduler import Finish, Job, Scheduler

TEMPLATES = {"gemma": "gemma", "smollm2": None}


class Timed:
    """A stand-in for the `llama_cpp` module that times `llama_decode` (older checkouts)."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.seconds = 0.0
        self.calls = 0

    def llama_decode(self, ctx: Any, batch: Any) -> int:
        started = time.perf_counter()
        code = int(self._lib.llama_decode(ctx, batch))
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return code

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)


def decode_time(backend: Any) -> tuple[float, int]:
    steps = getattr(backend, "_steps", None)
    if steps is not None:
        return steps.decode_time()  # type: ignore[no-any-return]
    timed = backend._lib
    return timed.seconds, timed.calls


class Reply(Job):
    def __init__(self, ids: Sequence[int], tokens: int) -> None:
        super().__init__(ids, SamplingParams(max_tokens=tokens), "bench")
        self.done = threading.Event()
        self.count = 0

    def on_token(self, token: int) -> Finish | None:
        self.count += 1
        return None

    def on_end(self, finish: Finish, error: str | None) -> None:
        self.done.set()


def profile(
    model: str, prompts: list[list[int]], streams: int, tokens: int, threads: int
) -> dict[str, float]:
    backend = LlamaCppBackend(Path(model), sequences=streams, context_length=1024, threads=threads)
    if not hasattr(backend, "_steps"):
        backend._lib = Timed(backend._lib)  # type: ignore[attr-defined]
    scheduler = Scheduler(backend)
    try:
        # A warm-up round, so the first-call costs of ggml are not in the figures.
        warm = [Reply(prompts[i % len(prompts)][:8], 4) for i in range(streams)]
        for job in warm:
            scheduler.submit(job)
        for job in warm:
            job.done.wait()
        d0, c0 = decode_time(backend)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        jobs = [Reply(prompts[(i + 1) % len(prompts)], tokens) for i in range(streams)]
        for job in jobs:
            scheduler.submit(job)
        for job in jobs:
            job.done.wait()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        d1, c1 = decode_time(backend)
    finally:
        scheduler.close()
    produced = sum(j.count for j in jobs)
    ttfts = [j.timings.time_to_first_token_s or 0.0 for j in jobs]
    return {
        "tok/s": produced / wall,
        "wall ms/token": 1000 * wall / produced,
        "decode ms/token": 1000 * (d1 - d0) / produced,
        "other ms/token": 1000 * (wall - (d1 - d0)) / produced,
        "cpu ms/token": 1000 * cpu / produced,
        "decode calls": c1 - c0,
        "ttft p50": 1000 * sorted(ttfts)[len(ttfts) // 2],
        "ttft max": 1000 * max(ttfts),
    }


def churn(model: str, prompts: list[list[int]], clients: int, jobs: int, threads: int) -> float:
    """Aggregate tok/s of `clients` conversations at a time on 8 slots, each client starting
    a fresh one (no slot to continue) as soon as its last ends, replies of 16 to 48 tokens:
    where new conversations are placed decides how many runs of consecutive sequence ids a
    step decodes."""
    backend = LlamaCppBackend(Path(model), sequences=8, context_length=1024, threads=threads)
    scheduler = Scheduler(backend)
    produced = 0
    lock = threading.Lock()

    def client(k: int) -> None:
        nonlocal produced
        for i in range(jobs):
            job = Reply(prompts[(k + i) % len(prompts)], 16 + (7 * k + 11 * i) % 33)
            job.owner = f"client-{k}-{i}"  # fresh: no slot holds its prompt
            scheduler.submit(job)
            job.done.wait()
            with lock:
                produced += job.count

    try:
        started = time.perf_counter()
        threads_ = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        return produced / (time.perf_counter() - started)
    finally:
        scheduler.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(TEMPLATES), default="gemma")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--churn", type=int, metavar="CLIENTS", help="only the churn run, with this many clients"
    )
    args = parser.parse_args()
    model = gemma_path() if args.model == "gemma" else smollm2_path()
    template = TEMPLATES[args.model]
    prompt = PromptEngine.from_gguf(
        model, chat_template=resolve_chat_template(template) if template else None
    )
    questions = [f"Question {i}: tell me a short fact about the number {i * 7}." for i in range(9)]
    prompts = [prompt.assemble_messages([{"role": "user", "content": q}]).ids for q in questions]
    if args.churn:
        rate = churn(model, prompts, args.churn, 12, args.threads)
        print(f"{args.model}, {args.churn} clients of fresh conversations: {rate:.1f} tok/s")
        return
    print(f"\n{args.model}, {args.tokens}-token replies, {args.threads} threads")
    print(
        "| streams | tok/s | wall ms/token | in llama_decode | everything else | CPU ms/token "
        "| TTFT p50 / max ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in args.streams:
        r = profile(model, prompts, n, args.tokens, args.threads)
        print(
            f"| {n} | {r['tok/s']:.1f} | {r['wall ms/token']:.2f} | {r['decode ms/token']:.2f} "
            f"| {r['other ms/token']:.2f} | {r['cpu ms/token']:.2f} "
            f"| {r['ttft p50']:.0f} / {r['ttft max']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
