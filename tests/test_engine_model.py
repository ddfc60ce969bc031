"""The Engine end to end with the real default model (SmolLM2-135M through ctransformers)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import stream_then_cancel
from threadloom.backends.base import SamplingParams
from threadloom.engine import Engine
from threadloom.errors import ModelNotInstalled

GREEDY = SamplingParams(max_tokens=24)
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    pytest.importorskip("ctransformers")
    root = tmp_path_factory.mktemp("engine")
    try:
        e = Engine(root / "store", cache_dir=root / "cache", slots=2, context_length=2048)
    except ModelNotInstalled as err:
        pytest.skip(str(err))
    yield e
    e.close()


def ask(engine: Engine, text: str, **kwargs: object) -> str:
    return engine.respond_sync(text, sampling=GREEDY, **kwargs).text


def test_greedy_answer_is_sensible_and_deterministic(engine: Engine) -> None:
    q = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
    first = engine.respond_sync(q, history=[], sampling=GREEDY)
    again = engine.respond_sync(q, history=[], sampling=GREEDY)
    assert "Paris" in first.text
    assert first.text == again.text
    assert first.status in ("completed", "incomplete")
    assert first.usage.completion_tokens > 0


def test_turn_two_depends_on_turn_one(engine: Engine) -> None:
    engine.respond_sync(
        [SYSTEM, {"role": "user", "content": "What is the capital of France?"}],
        thread="geo",
        sampling=GREEDY,
    )
    follow_up = "What is that city famous for?"
    in_thread = engine.respond_sync(follow_up, thread="geo", sampling=GREEDY)
    alone = engine.respond_sync([SYSTEM, {"role": "user", "content": follow_up}], history=[])
    assert in_thread.text != alone.text
    assert in_thread.usage.cached_tokens > 0
    history = engine.store.history(thread="geo")
    assert [t.role for t in history] == ["system", "user", "assistant", "user", "assistant"]
    assert history[-1].content == in_thread.text


def test_branch_and_store_false(engine: Engine) -> None:
    root = engine.respond_sync([SYSTEM, {"role": "user", "content": "Name a colour."}])
    assert root.response_id is not None
    a = engine.respond_sync("Name another one.", previous_response_id=root.response_id)
    b = engine.respond_sync("Name a fruit instead.", previous_response_id=root.response_id)
    assert a.response_id and b.response_id
    ha = engine.store.history(response=a.response_id)
    hb = engine.store.history(response=b.response_id)
    assert [t.id for t in ha[:3]] == [t.id for t in hb[:3]]
    assert ha[3].content != hb[3].content
    turns = engine.store.stats()["turns"]
    c = engine.respond_sync("Name a third.", previous_response_id=root.response_id, store=False)
    assert c.response_id is None and engine.store.stats()["turns"] == turns


def test_cancelled_stream_is_stored_incomplete(engine: Engine) -> None:
    partial = stream_then_cancel(
        engine,
        [SYSTEM, {"role": "user", "content": "Write a long story about a dragon."}],
        5,
        thread="story",
        sampling=SamplingParams(max_tokens=200),
    )
    thread = engine.store.get_thread("story")
    last = engine.store.history(thread="story")[-1]
    assert last.role == "assistant" and last.content.startswith(partial)
    assert thread.head is not None
    assert len(engine.store.history(thread="story")) == 3


def test_converted_model_is_cached(engine: Engine, tmp_path: Path) -> None:
    from threadloom.convert import prepared_model

    cache = engine.model_path
    first = prepared_model(cache, tmp_path / "c", progress=False)
    mtime = first.stat().st_mtime_ns
    second = prepared_model(cache, tmp_path / "c", progress=False)
    assert first == second and second.stat().st_mtime_ns == mtime


def test_four_concurrent_conversations_each_keep_their_own_history(engine: Engine) -> None:
    """Four 3-turn conversations at once on two slots (so they also queue and take each
    other's slots) give exactly the answers each gives when it runs alone: no state leaks
    between sequences, and every turn's prompt holds its own conversation's turns. Every
    prompt is evaluated whole (no prefix reuse), so both runs compute the same thing."""
    openers = [
        "My name is Ada and I keep bees.",
        "My name is Bram and I build boats.",
        "My name is Chloe and I grow roses.",
        "My name is Dmitri and I fix clocks.",
    ]
    follow_ups = ["What do I do?", "What is my name?"]
    engine.scheduler.affinity = False

    async def conversation(tag: str, opener: str) -> list[str]:
        answers = []
        for text in [opener, *follow_ups]:
            r = await engine.respond(text, thread=tag, sampling=GREEDY)
            assert r.status in ("completed", "incomplete")
            answers.append(r.text)
        return answers

    async def together() -> list[list[str]]:
        return await asyncio.gather(*(conversation(f"c{i}", o) for i, o in enumerate(openers)))

    try:
        concurrent = asyncio.run(together())
        alone = [asyncio.run(conversation(f"a{i}", o)) for i, o in enumerate(openers)]
    finally:
        engine.scheduler.affinity = True
    assert concurrent == alone
    for i, opener in enumerate(openers):
        history = engine.store.history(thread=f"c{i}")
        users = [t.content for t in history if t.role == "user"]
        assert users == [opener, *follow_ups]
        assert [t.content for t in history if t.role == "assistant"] == concurrent[i]
