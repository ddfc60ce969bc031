"""The llama.cpp backend's sampler (`pick_token`), on hand-made logits: no model needed."""

from __future__ import annotations

import numpy as np
from threadloom.backends.base import SamplingParams
from threadloom.backends.llama_cpp import pick_token

GREEDY = SamplingParams(repetition_penalty=1.0)


def row(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_greedy_is_the_argmax() -> None:
    assert pick_token(row(0.1, 3.0, 2.0), [], GREEDY, None) == 1


def test_repetition_penalty_demotes_recent_tokens_both_signs() -> None:
    params = SamplingParams(repetition_penalty=1.1)
    # 2.0 / 1.1 = 1.82 < 1.9: the recent token loses its lead.
    assert pick_token(row(2.0, 1.9), [0, 0], params, None) == 1
    assert pick_token(row(2.0, 1.9), [1], params, None) == 0
    # A negative logit is multiplied, so it moves further down, not up.
    logits = row(-1.0, -1.05)
    pick_token(logits, [0], params, None)
    assert logits[0] < -1.05


def test_top_k_and_top_p_keep_only_the_head() -> None:
    rng = np.random.default_rng(0)
    logits = row(5.0, 4.9, 4.8, 0.0)
    only_best = SamplingParams(temperature=1.0, top_k=1, repetition_penalty=1.0)
    assert {pick_token(logits.copy(), [], only_best, rng) for _ in range(50)} == {0}
    tiny_p = SamplingParams(temperature=1.0, top_p=0.01, repetition_penalty=1.0)
    assert {pick_token(logits.copy(), [], tiny_p, rng) for _ in range(50)} == {0}
    wide = SamplingParams(temperature=1.0, top_k=3, top_p=1.0, repetition_penalty=1.0)
    assert {pick_token(logits.copy(), [], wide, rng) for _ in range(300)} == {0, 1, 2}


def test_a_seed_repeats_its_choices() -> None:
    params = SamplingParams(temperature=1.5, top_k=0, repetition_penalty=1.0, seed=7)
    logits = row(*np.linspace(0.0, 1.0, 50))

    def draws() -> list[int]:
        rng = np.random.default_rng(7)
        return [pick_token(logits.copy(), [], params, rng) for _ in range(20)]

    assert draws() == draws() and len(set(draws())) > 3
