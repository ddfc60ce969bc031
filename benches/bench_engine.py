"""Generation benchmarks with the default model (issue 5), side by side in one run:

1. Four conversations taking turns (A, B, C, D, A, ...) for N turns each: time to first token per
   turn with slot affinity vs the same run forced to re-evaluate the whole prompt every turn.
2. Decode tokens/s through the Engine vs calling ctransformers directly on the same ids.

Usage: python benches/bench_engine.py [--turns 20] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from threadloom.backends.base import SamplingParams
from threadloom.engine import Engine

QUESTIONS = [
    "Tell me one fact about {topic}.",
    "Why is that interesting?",
    "Give me another fact about {topic}.",
    "How would you explain {topic} to a child?",
    "What is a common misconception about {topic}?",
]
TOPICS = {"A": "the ocean", "B": "volcanoes", "C": "honey bees", "D": "the moon"}


def conversation_run(engine: Engine, turns: int, affinity: bool) -> list[list[float]]:
    """Returns time to first token per turn index, one list entry per conversation."""
    engine.scheduler.affinity = affinity
    params = SamplingParams(max_tokens=24)
    ttft: list[list[float]] = [[] for _ in range(turns)]
    tag = "aff" if affinity else "cold"
    for turn in range(turns):
        for name, topic in TOPICS.items():
            question = QUESTIONS[turn % len(QUESTIONS)].format(topic=topic)
            r = engine.respond_sync(question, thread=f"{tag}-{name}", sampling=params)
            assert r.time_to_first_token_s is not None
            ttft[turn].append(r.time_to_first_token_s)
        print(
            f"  [{tag}] turn {turn + 1}: ttft median {statistics.median(ttft[turn]) * 1e3:.0f} ms",
            flush=True,
        )
    engine.scheduler.affinity = True
    return ttft


def decode_speed(engine: Engine, n_tokens: int) -> tuple[float, float]:
    """Tokens/s of the decode phase, Engine vs the ctransformers instance it wraps, same ids."""
    prompt = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    ids = engine.prompt.assemble_messages(prompt, max_tokens=n_tokens).ids
    params = SamplingParams(max_tokens=n_tokens)
    eog = set(engine.tokenizer.eog_ids)

    def direct() -> float:
        backend = engine.scheduler.slots[0].backend
        backend.reset()
        llm = backend._llm  # type: ignore[attr-defined]  # the bare library, for the baseline
        llm.eval(ids)
        t0, n = time.perf_counter(), 0
        while n < n_tokens:
            token = llm.sample(
                top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.1, last_n_tokens=64
            )
            if token in eog:
                break
            llm.eval([token])
            n += 1
        return n / (time.perf_counter() - t0)

    def through_engine() -> float:
        for slot in engine.scheduler.slots:
            slot.backend.reset()
        r = engine.respond_sync(prompt, history=[], store=False, sampling=params)
        assert r.time_to_first_token_s is not None
        return (r.usage.completion_tokens - 1) / (r.total_s - r.time_to_first_token_s)

    d, e = [], []
    for _ in range(3):  # interleaved, so both see the same machine load
        d.append(direct())
        e.append(through_engine())
    return statistics.median(e), statistics.median(d)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    turns = 6 if args.quick else args.turns
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(Path(tmp) / "store", slots=4, context_length=4096)
        try:
            affine = conversation_run(engine, turns, affinity=True)
            cold = conversation_run(engine, turns, affinity=False)
            print(f"\nTime to first token, 4 conversations x {turns} turns (ms, median per turn)")
            print(f"{'turn':>4} {'affinity':>10} {'re-eval':>10} {'ratio':>7}")
            for t in range(turns):
                a, c = statistics.median(affine[t]) * 1e3, statistics.median(cold[t]) * 1e3
                print(f"{t + 1:>4} {a:>10.1f} {c:>10.1f} {c / a:>6.1f}x")
            late_a = statistics.median(x for row in affine[4:] for x in row) * 1e3
            late_c = statistics.median(x for row in cold[4:] for x in row) * 1e3
            print(
                f"turns 5+: affinity {late_a:.1f} ms, re-evaluate {late_c:.1f} ms, "
                f"{late_c / late_a:.1f}x lower with affinity (goal >= 5x)"
            )
            eng, direct = decode_speed(engine, 32 if args.quick else args.tokens)
            print(
                f"\nDecode: Engine {eng:.1f} tok/s, ctransformers direct {direct:.1f} tok/s, "
                f"{(1 - eng / direct) * 100:+.1f}% lost (goal <= 3%)"
            )
        finally:
            engine.close()


if __name__ == "__main__":
    main()
