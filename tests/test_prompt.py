"""Prompt assembly with the real default model: exact counts, trimming, prefix stability, from
either store (`storage.assemble`: the Rust core reads LMDB in place; PostgreSQL hands over the
history it returns)."""

from __future__ import annotations

import pytest
import threadloom
from threadloom.errors import ContextLengthExceeded, InvalidInput, NotFound
from threadloom.models import default_model_path
from threadloom.storage import assemble


@pytest.fixture(scope="module")
def engine() -> threadloom.PromptEngine:
    try:
        path = default_model_path()
    except threadloom.errors.ModelNotInstalled as e:
        pytest.skip(str(e))
    return threadloom.PromptEngine.from_gguf(path)


def exchange(i: int, words: int = 12) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"question {i}: " + " ".join(["why"] * words)},
        {"role": "assistant", "content": f"answer {i}: " + " ".join(["because"] * words)},
    ]


def fill(store: threadloom.Store, n: int, system: str | None = "Be brief.") -> str:
    thread = store.create_thread()
    if system is not None:
        store.append([{"role": "system", "content": system}], thread=thread.id)
    for i in range(n):
        store.append(exchange(i), thread=thread.id)
    return thread.id


def test_model_metadata(engine: threadloom.PromptEngine) -> None:
    assert engine.context_length == 8192
    assert not engine.template_is_fallback
    assert engine.tokenizer.vocab_size == 49152


def test_prompt_matches_template_and_exact_count(
    engine: threadloom.PromptEngine, store: threadloom.Store
) -> None:
    tid = fill(store, 3)
    new = [{"role": "user", "content": "And the weather? ☀️ 天气"}]
    a = assemble(engine, store, new, thread=tid, max_tokens=64)
    history = [{"role": t.role, "content": t.content} for t in store.history(thread=tid)]
    assert a.prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    tail = "<|im_start|>user\nAnd the weather? ☀️ 天气<|im_end|>\n<|im_start|>assistant\n"
    assert a.prompt.endswith(tail)
    for m in history + new:
        assert m["content"] in a.prompt
    assert a.ids == engine.tokenizer.encode(a.prompt)
    assert a.prompt_tokens == len(a.ids)
    assert a.messages_total == 8 and a.messages_kept == 8 and a.messages_dropped == 0
    assert a.cut_after is None


def test_stateless_matches_stored(engine: threadloom.PromptEngine, store: threadloom.Store) -> None:
    tid = fill(store, 4)
    new = [{"role": "user", "content": "next"}]
    stored = assemble(engine, store, new, thread=tid)
    history = [{"role": t.role, "content": t.content} for t in store.history(thread=tid)]
    stateless = engine.assemble_messages(history + new)
    assert stateless.prompt == stored.prompt and stateless.ids == stored.ids


def test_stateless_protects_all_new_inputs_like_stored(
    engine: threadloom.PromptEngine, store: threadloom.Store
) -> None:
    """A history handed over in full (a PostgreSQL store, a stateless request) trims exactly as
    the store path does once it says how many messages are the request's own."""
    tid = fill(store, 60)
    new = [
        {"role": "user", "content": "first new question " * 40},
        {"role": "assistant", "content": "an answer given in the request " * 40},
        {"role": "user", "content": "and the last one"},
    ]
    stored = assemble(engine, store, new, thread=tid, strategy="window", window=2)
    history = [{"role": t.role, "content": t.content} for t in store.history(thread=tid)]
    both = engine.assemble_messages(history + new, strategy="window", window=2, protected=3)
    assert both.prompt == stored.prompt and both.ids == stored.ids
    assert "first new question" in both.prompt
    # Protecting only the last message lets the window drop the other new inputs.
    last_only = engine.assemble_messages(history + new, strategy="window", window=2)
    assert "first new question" not in last_only.prompt


def test_none_strategy_raises_with_both_numbers(
    engine: threadloom.PromptEngine, store: threadloom.Store
) -> None:
    tid = fill(store, 400)
    with pytest.raises(ContextLengthExceeded) as info:
        assemble(engine, store, [{"role": "user", "content": "x"}], thread=tid, strategy="none")
    e = info.value
    assert e.context_length == 8192 and e.max_tokens == 256
    assert e.prompt_tokens > 8192 - 256
    assert str(e.prompt_tokens) in str(e) and "8192" in str(e)
    assert isinstance(e, threadloom.errors.LimitExceeded)


def test_tokens_strategy_fits_keeps_system_and_starts_with_user(
    engine: threadloom.PromptEngine, store: threadloom.Store
) -> None:
    tid = fill(store, 400)
    a = assemble(engine, store, [{"role": "user", "content": "last"}], thread=tid, max_tokens=512)
    assert a.prompt_tokens + 512 <= 8192
    assert a.messages_dropped > 0
    # Both stores name the stored turn the trimmed part ends at.
    assert a.cut_after in [t.id for t in store.history(thread=tid)]
    assert a.prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert a.ids == engine.tokenizer.encode(a.prompt)
    budget = assemble(engine, store, [{"role": "user", "content": "last"}], thread=tid, budget=300)
    assert budget.prompt_tokens <= 300
    assert budget.prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_window_strategy(engine: threadloom.PromptEngine, store: threadloom.Store) -> None:
    tid = fill(store, 10)
    a = assemble(
        engine, store, [{"role": "user", "content": "now"}], thread=tid, strategy="window", window=5
    )
    # System + the last 5 messages: question 8 .. answer 9, then the new input.
    assert a.messages_kept == 1 + 5
    assert a.prompt.count("<|im_start|>user") == 3
    assert "question 8" in a.prompt and "answer 7" not in a.prompt
    # With 4, the first kept message would be an assistant turn: it is dropped too.
    b = assemble(
        engine, store, [{"role": "user", "content": "now"}], thread=tid, strategy="window", window=4
    )
    assert b.messages_kept == 1 + 3
    assert "answer 8" not in b.prompt and "question 9" in b.prompt
    with pytest.raises(InvalidInput):
        assemble(engine, store, [], thread=tid, strategy="window")
    with pytest.raises(InvalidInput):
        assemble(engine, store, [], thread=tid, strategy="summarise")


def test_new_inputs_are_never_dropped(
    engine: threadloom.PromptEngine, store: threadloom.Store
) -> None:
    tid = fill(store, 2)
    huge = " ".join(["word"] * 9000)
    with pytest.raises(ContextLengthExceeded):
        assemble(engine, store, [{"role": "user", "content": huge}], thread=tid)


def test_prefix_is_stable_over_a_long_conversation(
    engine: threadloom.PromptEngine, store: threadloom.Store
) -> None:
    thread = store.create_thread()
    store.append([{"role": "system", "content": "Be brief."}], thread=thread.id)
    reused = 0
    for i in range(50):
        new = exchange(i, words=40)
        a = assemble(engine, store, new[:1], thread=thread.id, budget=1500, cache_key=thread.id)
        assert a.prompt_tokens <= 1500
        if i > 0 and a.shared_prefix_tokens > a.prompt_tokens // 2:
            reused += 1
        store.append(new, thread=thread.id)
    # Trimming starts after ~10 turns; the cut moves in blocks, not every turn.
    assert reused >= 35, f"prefix reused on only {reused} of 49 turns"


def test_repeat_assembly_reuses_cached_counts_and_is_identical(
    engine: threadloom.PromptEngine, store: threadloom.Store
) -> None:
    tid = fill(store, 5)
    first = assemble(engine, store, [], thread=tid, cache_key="k")
    second = assemble(engine, store, [], thread=tid, cache_key="k")
    assert first.ids == second.ids
    assert second.shared_prefix_tokens == len(second.ids)
    # Counting writes only the cache, never a turn.
    assert store.stats()["turns"] == 11
    store.verify()


def test_assemble_errors(engine: threadloom.PromptEngine, store: threadloom.Store) -> None:
    with pytest.raises(NotFound):
        assemble(engine, store, [], thread="missing")
    with pytest.raises(InvalidInput):
        assemble(engine, store, [{"role": "robot", "content": "x"}])
    with pytest.raises(InvalidInput):
        assemble(engine, store, [{"role": "user", "content": "x"}], max_tokens=8192)
    tid = fill(store, 1)
    with pytest.raises(NotFound):
        assemble(engine, store, [], thread=tid, owner="someone-else")
