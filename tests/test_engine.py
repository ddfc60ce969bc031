"""The Engine with the deterministic scripted backend: storage, branching, statuses, slots."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import threadloom
from threadloom.backends.base import SamplingParams
from threadloom.engine import Engine, Finished, Request, Started, TokenEvent
from threadloom.errors import InvalidInput, NotFound, StateConflict
from threadloom.testing import ScriptedFactory

EOS = 2


def make_engine(
    tmp_path: Path, reply: str = " Hello there.", slots: int = 2, **factory_kwargs: object
) -> tuple[Engine, ScriptedFactory]:
    holder: dict[str, threadloom.Tokenizer] = {}

    def script(ids: Sequence[int]) -> list[int]:
        return [*holder["tok"].encode(reply), EOS]

    factory = ScriptedFactory(script, **factory_kwargs)  # type: ignore[arg-type]
    try:
        engine = Engine(tmp_path / "store", backend=factory, slots=slots)
    except threadloom.errors.ModelNotInstalled as e:
        pytest.skip(str(e))
    holder["tok"] = engine.tokenizer
    return engine, factory


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e, _ = make_engine(tmp_path)
    yield e
    e.close()


def contents(engine: Engine, **anchor: str) -> list[tuple[str, str]]:
    return [(t.role, t.content) for t in engine.store.history(**anchor)]


def test_respond_stores_inputs_output_and_response(engine: Engine) -> None:
    r = engine.respond_sync("Hi", thread="t1")
    assert r.status == "completed" and r.finish_reason == "stop"
    assert r.text == " Hello there." and r.thread_id == "t1"
    assert contents(engine, thread="t1") == [("user", "Hi"), ("assistant", " Hello there.")]
    assert r.response_id is not None
    stored = engine.store.get_response(r.response_id)
    assert stored.status == "completed" and stored.input_count == 1
    expected = len(engine.tokenizer.encode(" Hello there."))
    assert stored.completion_tokens == r.usage.completion_tokens == expected
    assert stored.prompt_tokens == r.usage.prompt_tokens > 0


def test_second_turn_sees_first_and_reuses_prefix(tmp_path: Path) -> None:
    engine, factory = make_engine(tmp_path, slots=1)
    first = engine.respond_sync("My name is Ada.", thread="t")
    before = factory.instances[0].prompt_tokens_evaluated
    second = engine.respond_sync("What is my name?", thread="t")
    evaluated = factory.instances[0].prompt_tokens_evaluated - before
    assert second.usage.cached_tokens > first.usage.prompt_tokens // 2
    assert evaluated == second.usage.prompt_tokens - second.usage.cached_tokens
    assert "My name is Ada." in [c for _, c in contents(engine, thread="t")]
    engine.close()


def test_branch_from_an_earlier_response(engine: Engine) -> None:
    a = engine.respond_sync("one", thread="t")
    engine.respond_sync("two", thread="t")
    assert a.response_id is not None
    b = engine.respond_sync("branch", previous_response_id=a.response_id)
    assert b.response_id is not None and b.thread_id is None
    assert [c for _, c in contents(engine, response=b.response_id)] == [
        "one",
        " Hello there.",
        "branch",
        " Hello there.",
    ]
    assert len(contents(engine, thread="t")) == 4


def test_store_false_stores_nothing(engine: Engine) -> None:
    before = engine.store.stats()
    r = engine.respond_sync("hi", history=[{"role": "user", "content": "earlier"}], store=False)
    assert r.response_id is None and r.text == " Hello there."
    assert engine.store.stats()["turns"] == before["turns"]


def test_max_tokens_makes_it_incomplete(engine: Engine) -> None:
    r = engine.respond_sync("hi", thread="t", sampling=SamplingParams(max_tokens=2))
    assert r.status == "incomplete" and r.finish_reason == "length"
    assert r.usage.completion_tokens == 2
    assert r.response_id is not None
    # Incomplete responses are anchors.
    engine.respond_sync("go on", previous_response_id=r.response_id)


def test_stop_string_ends_the_reply(engine: Engine) -> None:
    r = engine.respond_sync("hi", sampling=SamplingParams(stop=("there",)), store=False)
    assert r.text == " Hello " and r.status == "completed"


def test_cancelled_stream_is_stored_incomplete(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path, reply=" a b c d e f g h i j", delay_s=0.02)

    async def run() -> None:
        got = []
        agen = engine.stream("count", thread="t")
        async for event in agen:
            if isinstance(event, TokenEvent):
                got.append(event.text)
                if len(got) == 2:
                    break
        await agen.aclose()

    asyncio.run(run())
    head = engine.store.history(thread="t")[-1]
    assert head.role == "assistant" and 0 < len(head.content) < len(" a b c d e f g h i j")
    thread = engine.store.get_thread("t")
    assert thread.message_count == 2
    engine.close()


def test_backend_failure_is_stored_failed_and_not_an_anchor(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path, fail_after=1)
    r = engine.respond_sync("hi")
    assert r.status == "failed" and r.error and "scripted failure" in r.error
    assert r.response_id is not None
    assert engine.store.get_response(r.response_id).status == "failed"
    with pytest.raises(StateConflict):
        engine.respond_sync("more", previous_response_id=r.response_id)
    engine.close()


def test_thinking_is_split_and_stored(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path, reply="<think>Let me see.</think>\n\nIt is 4.")
    r = engine.respond_sync("2+2?", thread="t", enable_thinking=True)
    assert r.reasoning == "Let me see." and r.text == "It is 4."
    turn = engine.store.history(thread="t")[-1]
    assert turn.reasoning == "Let me see." and turn.content == "It is 4."
    plain = engine.respond_sync("again", thread="t2")
    assert plain.reasoning is None
    engine.close()


def test_stream_events(engine: Engine) -> None:
    async def run() -> list[object]:
        return [e async for e in engine.stream("hi", thread="t")]

    events = asyncio.run(run())
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    tokens = [e.text for e in events if isinstance(e, TokenEvent)]
    assert "".join(tokens) == events[-1].result.text == " Hello there."


def test_conversations_keep_their_slots(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path, slots=2)
    results = {"A": [], "B": []}  # type: dict[str, list[threadloom.engine.Result]]
    for turn in range(4):
        for name in ("A", "B"):
            results[name].append(engine.respond_sync(f"{name} turn {turn}", thread=name))
    for name in ("A", "B"):
        later = results[name][1:]
        assert all(r.usage.cached_tokens > r.usage.prompt_tokens // 2 for r in later)
    engine.close()


def test_refusals_before_generation(engine: Engine) -> None:
    engine.respond_sync("hi", thread="locked")
    engine.store.update_thread("locked", state="locked")
    with pytest.raises(StateConflict, match="locked"):
        engine.respond_sync("more", thread="locked")
    with pytest.raises(NotFound):
        engine.respond_sync("x", previous_response_id="resp_00000000000000000000000000")
    with pytest.raises(InvalidInput):
        engine.respond_sync("x", thread="a", previous_response_id="resp_x")
    with pytest.raises(InvalidInput):
        engine.respond_sync("x", sampling=SamplingParams(max_tokens=0))
    with pytest.raises(InvalidInput):
        engine.respond_sync([])


def test_run_batch_keeps_order_and_survives_failures(engine: Engine) -> None:
    requests = [
        Request(inputs=f"q{i}", thread=f"t{i}")
        if i != 2
        else Request(inputs="bad", previous_response_id="resp_00000000000000000000000000")
        for i in range(5)
    ]
    results = engine.run_batch(requests, progress=False)
    assert [r.status for r in results] == [
        "completed",
        "completed",
        "failed",
        "completed",
        "completed",
    ]
    assert results[2].error is not None and "NotFound" in results[2].error
    assert [r.thread_id for r in results] == ["t0", "t1", None, "t3", "t4"]
    assert contents(engine, thread="t3")[0] == ("user", "q3")


def test_closing_right_after_start_frees_the_slot(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path, reply=" a b c d e f", slots=1, delay_s=0.01)

    async def run() -> None:
        agen = engine.stream("hi", thread="t")
        first = await agen.__anext__()
        assert isinstance(first, Started)
        await agen.aclose()
        # The one slot is free again: a second request gets it.
        r = await engine.respond("again", thread="u")
        assert r.status == "completed"

    asyncio.run(run())
    assert engine.scheduler.busy == 0
    assert engine.store.history(thread="t")[-1].role == "assistant"
    engine.close()


def test_cancel_while_waiting_for_a_slot_leaks_nothing(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path, reply=" a b c d e f g h", slots=1, delay_s=0.02)

    async def run() -> None:
        busy = asyncio.ensure_future(engine.respond("long", thread="a"))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(engine.respond("queued", thread="b"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (await busy).status == "completed"
        assert (await engine.respond("after", thread="c")).status == "completed"

    asyncio.run(run())
    assert engine.scheduler.busy == 0 and engine.scheduler.waiting == 0
    engine.close()


def test_requests_on_one_thread_take_turns(tmp_path: Path) -> None:
    """Two requests on one thread at once: the second runs after the first stored its reply,
    sees it, and both replies are on the thread, in arrival order."""
    engine, _ = make_engine(tmp_path, reply=" a b c d", slots=2, delay_s=0.01)

    async def run() -> list[threadloom.engine.Result]:
        first = asyncio.ensure_future(engine.respond("one", thread="t"))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(engine.respond("two", thread="t"))
        return [await first, await second]

    first, second = asyncio.run(run())
    assert first.thread_id == second.thread_id == "t"
    assert contents(engine, thread="t") == [
        ("user", "one"),
        ("assistant", " a b c d"),
        ("user", "two"),
        ("assistant", " a b c d"),
    ]
    # The second prompt held the first exchange (its prefix was reused, not re-evaluated).
    assert second.usage.cached_tokens > first.usage.prompt_tokens // 2
    engine.close()


def test_taking_back_an_empty_thread_waits_for_a_generation_on_it(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path, reply=" a b c", slots=1, delay_s=0.02)

    async def run() -> None:
        engine.store.create_thread("shared")
        writer = asyncio.ensure_future(engine.respond("hi", thread="shared"))
        await asyncio.sleep(0.02)
        # A request that created "shared" and failed takes it back: not while the writer runs.
        await engine.discard_thread_if_empty("default", "shared")
        assert (await writer).thread_id == "shared"
        engine.store.create_thread("unused")
        await engine.discard_thread_if_empty("default", "unused")

    asyncio.run(run())
    assert engine.store.get_thread("shared").message_count == 2
    with pytest.raises(NotFound):
        engine.store.get_thread("unused")
    engine.close()


def test_aclose_stores_running_generations_before_closing(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path, reply=" x" * 500, slots=1, delay_s=0.005)

    async def run() -> str | None:
        events = engine.stream("go", thread="t")
        started = await anext(events)
        assert isinstance(started, Started)
        await anext(events)
        consumer = asyncio.ensure_future(_drain(events))
        await engine.aclose()
        await asyncio.gather(consumer, return_exceptions=True)
        return started.response_id

    response_id = asyncio.run(run())
    assert response_id is not None
    # An LMDB store stays readable until dropped: what aclose stored is there.
    stored = engine.store.get_response(response_id)
    assert stored.status == "incomplete" and stored.completion_tokens > 0
    assert [t.role for t in engine.store.history(thread="t")] == ["user", "assistant"]


async def _drain(events: object) -> None:
    async for _ in events:  # type: ignore[attr-defined]
        pass


def test_only_a_reply_announced_early_is_recorded_as_pending(tmp_path: Path) -> None:
    """A stream shows its id before the reply is stored, so the id must answer (and survive a
    crash) from then on; `respond` shows it only with the stored reply, so it skips that
    durable write."""
    engine, _ = make_engine(tmp_path, reply=" a b c d e f", delay_s=0.02)

    async def run() -> tuple[list[str], list[str], str | None, str | None]:
        streamed = engine.stream("streamed")
        first = await anext(streamed)
        assert isinstance(first, Started) and first.response_id is not None
        while_streaming = [rid for _, rid, _ in engine.store.pending()]
        async for _ in streamed:
            pass
        quiet = asyncio.ensure_future(engine.respond("quiet"))
        await asyncio.sleep(0.05)  # generating now
        while_responding = [rid for _, rid, _ in engine.store.pending()]
        result = await quiet
        return while_streaming, while_responding, first.response_id, result.response_id

    while_streaming, while_responding, streamed_id, quiet_id = asyncio.run(run())
    assert while_streaming == [streamed_id]
    assert while_responding == [] and quiet_id is not None
    assert engine.store.get_response(quiet_id).status == "completed"
    assert engine.store.pending() == []
    engine.close()
