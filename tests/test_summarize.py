"""The `summarize` trimming strategy with the scripted backend: the turns that do not fit are
replaced by a summary the model writes once per cut point."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import threadloom
from threadloom.backends.base import SamplingParams
from threadloom.engine import Engine
from threadloom.summarize import INSTRUCTIONS, SUMMARY_HEADER
from threadloom.testing import ScriptedFactory

EOS = 2
CONTEXT = 1024
SHORT = SamplingParams(max_tokens=16)


class Script:
    """Answers summary requests with `SUMMARY-n` and everything else with `ok`; keeps every
    prompt it saw."""

    def __init__(self) -> None:
        self.tok: threadloom.Tokenizer | None = None
        self.prompts: list[str] = []
        self.summaries = 0

    def __call__(self, ids: Sequence[int]) -> list[int]:
        assert self.tok is not None
        prompt = self.tok.decode(list(ids))
        self.prompts.append(prompt)
        if INSTRUCTIONS in prompt:
            self.summaries += 1
            return [*self.tok.encode(f"SUMMARY-{self.summaries}"), EOS]
        return [*self.tok.encode("ok"), EOS]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Engine, Script]]:
    script = Script()
    try:
        engine = Engine(
            tmp_path / "store",
            backend=ScriptedFactory(script, context_length=CONTEXT),
            slots=1,
        )
    except threadloom.errors.ModelNotInstalled as e:
        pytest.skip(str(e))
    script.tok = engine.tokenizer
    yield engine, script
    engine.close()


def fill(engine: Engine, thread: str, turns: int) -> None:
    """A thread far longer than the context: a system prompt, then numbered user/assistant
    pairs of about 40 tokens each."""
    body = "the quick brown fox jumps over the lazy dog " * 4
    messages = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"fact {i}: {body}"})
        messages.append({"role": "assistant", "content": f"noted {i}"})
    engine.store.create_thread(thread)
    engine.store.append(messages, thread=thread)


def test_dropped_turns_become_a_summary_in_the_system_message(setup: tuple[Engine, Script]) -> None:
    engine, script = setup
    fill(engine, "long", 60)
    r = engine.respond_sync("and now?", thread="long", strategy="summarize", sampling=SHORT)
    # Summarized turns are not dropped: nothing is missing from what the model sees.
    assert r.status == "completed" and r.text == "ok" and r.messages_dropped == 0
    summary_prompt, prompt = script.prompts
    assert INSTRUCTIONS in summary_prompt
    # The summarizer saw exactly the turns the reply prompt no longer holds: the newest dropped
    # fact (the transcript keeps its newest part when it is longer than the context allows).
    kept = [i for i in range(60) if f"fact {i}:" in prompt]
    assert kept and kept == list(range(kept[0], 60)) and kept[0] > 0
    assert f"fact {kept[0] - 1}:" in summary_prompt
    assert not any(f"fact {i}:" in summary_prompt for i in kept)
    # The reply prompt opens with the original system text followed by the summary.
    system = prompt.split("<|im_end|>", 1)[0]
    assert "You are terse." in system and f"{SUMMARY_HEADER}\nSUMMARY-1" in system
    assert r.usage.prompt_tokens + SHORT.max_tokens <= CONTEXT
    # What is stored is the conversation itself, not the summary.
    stored = [t.content for t in engine.store.history(thread="long")]
    assert not any("SUMMARY" in c for c in stored) and stored[-2:] == ["and now?", "ok"]


def test_summary_is_written_once_per_cut_point(setup: tuple[Engine, Script]) -> None:
    engine, script = setup
    fill(engine, "long", 60)
    for i in range(3):
        engine.respond_sync(f"more {i}", thread="long", strategy="summarize", sampling=SHORT)
    # Trimming moves its cut in blocks, so the next turns reuse the cached summary and start
    # with the same prefix.
    assert script.summaries == 1
    replies = [p for p in script.prompts if INSTRUCTIONS not in p]
    assert len(replies) == 3
    first_system = replies[0].split("<|im_end|>", 1)[0]
    assert all(p.startswith(first_system) for p in replies)


def test_short_conversations_are_not_summarized(setup: tuple[Engine, Script]) -> None:
    engine, script = setup
    fill(engine, "short", 2)
    r = engine.respond_sync("hi", thread="short", strategy="summarize", sampling=SHORT)
    assert r.messages_dropped == 0 and script.summaries == 0
    assert "fact 0:" in script.prompts[0]


def test_stateless_history_is_summarized_too(setup: tuple[Engine, Script]) -> None:
    engine, script = setup
    body = "the quick brown fox jumps over the lazy dog " * 4
    history = [{"role": "user", "content": f"fact {i}: {body}"} for i in range(60)]
    r = engine.respond_sync("and?", history=history, strategy="summarize", sampling=SHORT)
    assert r.status == "completed" and script.summaries == 1
    assert f"{SUMMARY_HEADER}\nSUMMARY-1" in script.prompts[-1]
    # Nothing is stored for a stateless request.
    assert engine.store.stats()["turns"] == 0


def test_a_summary_is_kept_across_a_restart(store_spec: str) -> None:
    """Written once per cut point, also across a restart: the store keeps it (both stores)."""
    import gc

    def open_engine(script: Script) -> Engine:
        engine = Engine(
            store_spec, backend=ScriptedFactory(script, context_length=CONTEXT), slots=1
        )
        script.tok = engine.tokenizer
        return engine

    first = Script()
    engine = open_engine(first)
    try:
        fill(engine, "long", 60)
        r = engine.respond_sync("and now?", thread="long", strategy="summarize", sampling=SHORT)
        assert r.status == "completed" and first.summaries == 1
        [tail] = engine.store.history(thread="long", limit=1)
    finally:
        engine.close()
    del engine
    gc.collect()  # the LMDB store closes with its last reference
    second = Script()
    engine = open_engine(second)
    try:
        # The same cut point (the question's answer moved the head by two turns only).
        r = engine.respond_sync(
            "again?", after_turn=tail.id, strategy="summarize", sampling=SHORT, store=False
        )
        assert r.status == "completed" and second.summaries == 0
        assert any("SUMMARY-1" in p for p in second.prompts)
    finally:
        engine.close()
