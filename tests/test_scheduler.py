"""The scheduler with the scripted backend: token-level round robin, chunked prefill,
cancellation, first-come-first-served admission, the queue limit and per-owner prefix reuse."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from threadloom.backends.base import SamplingParams
from threadloom.engine import Engine, Started
from threadloom.errors import Overloaded
from threadloom.scheduler import ComputeTurns, Finish, Job, Scheduler
from threadloom.testing import ScriptedBackend, ScriptedFactory

TOKEN = 7


def forever(ids: Sequence[int]) -> list[int]:
    return [TOKEN] * 10_000


class Collect(Job):
    def __init__(self, ids: Sequence[int], max_tokens: int, owner: str = "a") -> None:
        super().__init__(ids, SamplingParams(max_tokens=max_tokens), owner)
        self.tokens: list[int] = []
        self.started = threading.Event()
        self.done = threading.Event()
        self.finish: Finish | None = None
        self.refused: Exception | None = None

    def on_start(self) -> None:
        self.started.set()

    def on_token(self, token: int) -> Finish | None:
        self.tokens.append(token)
        return None

    def on_end(self, finish: Finish, error: str | None) -> None:
        self.finish = finish
        self.done.set()

    def on_refused(self, error: Exception) -> None:
        self.refused = error
        self.done.set()


def scheduler(
    sequences: int = 2, delay_s: float = 0.0, **kwargs: int
) -> tuple[Scheduler, ScriptedBackend]:
    backend = ScriptedBackend(forever, sequences, 100_000, delay_s=delay_s)
    return Scheduler(backend, **kwargs), backend


def decodes(backend: ScriptedBackend) -> list[int]:
    return [seq for kind, seq, _ in list(backend.log) if kind == "decode"]


def test_two_generations_alternate_tokens() -> None:
    s, backend = scheduler(delay_s=0.001)
    a, b = Collect([1, 2, 3], 60), Collect([4, 5, 6], 60)
    s.submit(a)
    s.submit(b)
    assert a.done.wait(10) and b.done.wait(10)
    s.close()
    steps = decodes(backend)
    both = steps.index(b.seq)
    # From the first step of the second stream until the first one ends: strict alternation.
    overlap = steps[both : both + 2 * min(60 - steps[:both].count(a.seq), 60)]
    assert len(overlap) > 40
    assert all(x != y for x, y in itertools.pairwise(overlap))
    assert a.finish == b.finish == "length" and len(a.tokens) == len(b.tokens) == 60


def test_a_new_conversation_goes_beside_the_running_ones() -> None:
    """llama.cpp decodes a run of consecutive sequence ids in one pass and a gap costs
    another: a new conversation takes a free slot next to a running one, even where a
    slot elsewhere was used less recently."""
    s, _ = scheduler(sequences=4)
    try:
        first = Collect([1, 2, 3], 10_000)
        s.submit(first)
        assert first.started.wait(10)
        assert first.seq == 0
        # Slots 1 and 2 run a job each and go free again; slot 3 was never used.
        brief = [Collect([9, 9, 9], 10_000, owner="b"), Collect([8, 8, 8], 10_000, owner="b")]
        for job in brief:
            s.submit(job)
            assert job.started.wait(10)
        assert [job.seq for job in brief] == [1, 2]
        for job in brief:
            s.cancel(job)
            assert job.done.wait(10)
        # The least recently used free slot is 3; the one beside the running 0 is 1.
        new = Collect([4, 5, 6], 10_000, owner="c")
        s.submit(new)
        assert new.started.wait(10)
        assert new.seq == 1
    finally:
        s.close()


def test_prompt_evaluation_lasts_until_the_step_that_evaluates_it() -> None:
    """A batching backend evaluates queued prompt chunks in the step's decode call (the
    scripted one takes `delay_s` there): the prompt's evaluation time covers that call, so
    the time to the first token is the queue wait plus the prompt's evaluation."""
    s, _ = scheduler(sequences=1, delay_s=0.05, prefill_chunk=4)
    try:
        job = Collect(list(range(1, 11)), 1)
        s.submit(job)
        assert job.done.wait(10)
    finally:
        s.close()
    t = job.timings
    assert t.prompt_eval_s >= 0.05
    assert t.time_to_first_token_s is not None
    assert abs(t.time_to_first_token_s - (t.queue_s + t.prompt_eval_s)) < 1e-9


def test_long_prompt_is_prefilled_in_chunks_between_decode_steps() -> None:
    s, backend = scheduler(prefill_chunk=4, delay_s=0.001)
    decoding = Collect([1, 2, 3], 500)
    s.submit(decoding)
    while not decoding.tokens:
        threading.Event().wait(0.001)
    long_prompt = Collect(list(range(10, 40)), 5)
    s.submit(long_prompt)
    assert long_prompt.done.wait(10)
    s.cancel(decoding)
    assert decoding.done.wait(10)
    s.close()
    log = list(backend.log)
    chunks = [i for i, (kind, seq, _) in enumerate(log) if kind == "prefill" and seq == 1]
    assert [log[i][2] for i in chunks] == [4, 4, 4, 4, 4, 4, 4, 2]
    # The running stream got a token between every two chunks of the long prompt.
    for i, j in itertools.pairwise(chunks):
        assert ("decode", 0, 1) in log[i:j]
    assert long_prompt.finish == "length" and decoding.finish == "cancelled"


def test_waiting_prompts_share_one_budget_per_step() -> None:
    """Short new turns arriving together start in the same step (their chunks fit in one
    budget, oldest first); a long prompt is still cut into whole chunks from its start."""
    s, backend = scheduler(sequences=4, prefill_chunk=8, delay_s=0.001)
    decoding = Collect([1, 2, 3], 500)
    s.submit(decoding)
    while not decoding.tokens:
        threading.Event().wait(0.001)
    short, shorter, long = (
        Collect(list(range(10, 15)), 3),
        Collect(list(range(20, 23)), 3),
        Collect(list(range(30, 50)), 3),
    )
    with s._cond:  # all admitted in the same iteration
        for job in (short, shorter, long):
            s.submit(job)
    assert short.done.wait(10) and shorter.done.wait(10) and long.done.wait(10)
    s.cancel(decoding)
    assert decoding.done.wait(10)
    s.close()
    log = list(backend.log)
    prefills = [(i, seq, n) for i, (kind, seq, n) in enumerate(log) if kind == "prefill"]
    mine = prefills[-5:]
    assert [(seq, n) for _, seq, n in mine] == [
        (short.seq, 5),
        (shorter.seq, 3),
        (long.seq, 8),
        (long.seq, 8),
        (long.seq, 4),
    ]
    # The two short ones in one step (no decode between them), then a step per chunk.
    starts = [i for i, _, _ in mine]
    assert ("decode", decoding.seq, 1) not in log[starts[0] : starts[1]]
    for i, j in itertools.pairwise(starts[1:]):
        assert ("decode", decoding.seq, 1) in log[i:j]


def test_cancelling_one_sequence_leaves_the_others_running() -> None:
    s, _ = scheduler(delay_s=0.001)
    a, b = Collect([1, 2], 10_000), Collect([3, 4], 100)
    s.submit(a)
    s.submit(b)
    while len(a.tokens) < 5:
        threading.Event().wait(0.001)
    s.cancel(a)
    assert a.done.wait(10) and b.done.wait(10)
    s.close()
    assert a.finish == "cancelled" and len(a.tokens) < 10_000
    assert b.finish == "length" and len(b.tokens) == 100


def test_first_come_first_served_and_the_queue_limit() -> None:
    s, _ = scheduler(sequences=1, delay_s=0.002, max_queue=3)
    order: list[str] = []

    class Named(Collect):
        def __init__(self, name: str) -> None:
            super().__init__([1, 2, 3], 20)
            self.name = name

        def on_start(self) -> None:
            order.append(self.name)

    jobs = [Named(n) for n in "ABCD"]
    for job in jobs:
        s.submit(job)
    # One running, three waiting: the fifth is refused at once.
    with pytest.raises(Overloaded):
        s.submit(Named("E"))
    for job in jobs:
        assert job.done.wait(10)
    s.close()
    assert order == ["A", "B", "C", "D"]


def test_cancelled_while_queued_is_refused_and_never_runs() -> None:
    s, _ = scheduler(sequences=1, delay_s=0.002)
    running, queued = Collect([1, 2], 200), Collect([3, 4], 200)
    s.submit(running)
    s.submit(queued)
    s.cancel(queued)
    assert queued.done.wait(10) and running.done.wait(10)
    s.close()
    assert isinstance(queued.refused, Overloaded) and not queued.tokens
    assert running.finish == "length"


def test_close_cancels_running_and_refuses_waiting() -> None:
    s, _ = scheduler(sequences=1, delay_s=0.002)
    running, queued = Collect([1, 2], 10_000), Collect([3, 4], 10)
    s.submit(running)
    s.submit(queued)
    assert running.started.wait(10)
    s.close()
    assert running.finish == "cancelled" and queued.refused is not None
    with pytest.raises(Overloaded):
        s.submit(Collect([1], 1))


def test_prefix_reuse_is_per_owner(tmp_path: Path) -> None:
    """A slot holding one tenant's conversation gives another tenant with the very same
    prompt nothing: no cached tokens and a full evaluation. The same tenant reuses it."""
    factory = ScriptedFactory(lambda ids: [2])
    engine = Engine(tmp_path / "store", backend=factory, slots=1)
    backend = factory.instances[0]
    history = [{"role": "user", "content": "a shared opening line " * 20}]

    def run(owner: str) -> tuple[Started, int]:
        before = backend.prompt_tokens_evaluated
        started = asyncio.run(_started(engine, history, owner))
        return started, backend.prompt_tokens_evaluated - before

    try:
        alice, _ = run("alice")
        alice_again, evaluated = run("alice")
        assert alice_again.cached_tokens == alice.prompt_tokens - 1 and evaluated == 1
        bob, evaluated = run("bob")
        assert bob.prompt_tokens == alice.prompt_tokens
        assert bob.cached_tokens == 0 and evaluated == bob.prompt_tokens
        # The slot is Bob's now: Alice gets nothing from Bob's copy of her prompt either.
        alice_after, evaluated = run("alice")
        assert alice_after.cached_tokens == 0 and evaluated == alice.prompt_tokens
    finally:
        engine.close()


async def _started(engine: Engine, history: list[dict[str, str]], owner: str) -> Started:
    events = engine.stream("hi", history=history, owner=owner, store=False)
    first = await anext(events)
    assert isinstance(first, Started)
    async for _ in events:
        pass
    return first


def test_compute_turns_are_first_come_first_served() -> None:
    """Two models' schedulers stepping without pause alternate: a step that ends and asks
    again goes behind the one already waiting (a plain lock lets it jump the queue)."""
    turns = ComputeTurns()
    turns.join()
    turns.join()
    order: list[str] = []
    both = threading.Barrier(2)

    def step_often(name: str) -> None:
        both.wait()
        for _ in range(100):
            ticket = turns.take()
            try:
                order.append(name)
                threading.Event().wait(0.0002)  # a step's work, the GIL released
            finally:
                turns.give(ticket)

    threads = [threading.Thread(target=step_often, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(order) == 200
    middle = "".join(order[20:180])
    assert "aaa" not in middle and "bbb" not in middle, "".join(order)


def test_a_scheduler_alone_takes_no_compute_turn() -> None:
    """Turns cost a step three Condition round trips: only schedulers that share the cores
    with another take them, from the moment the second joins until it leaves."""
    turns = ComputeTurns()
    turns.join()
    assert turns.take() is None
    turns.join()
    ticket = turns.take()
    assert ticket == 0
    turns.give(ticket)
    turns.leave()
    assert turns.take() is None


def test_a_new_conversation_copies_the_opening_its_owner_holds_elsewhere() -> None:
    """A conversation sharing its beginning (a system prompt) with another of the same owner
    goes to a free slot of its own and gets that beginning copied, not evaluated; the other
    conversation keeps its slot. Another tenant with the same opening gets nothing."""
    s, backend = scheduler(sequences=3)
    opening = list(range(100, 160))
    try:
        first = Collect([*opening, *range(1, 21)], 2, owner="alice")
        s.submit(first)
        assert first.done.wait(5)
        second = Collect([*opening, *range(21, 41)], 2, owner="alice")
        s.submit(second)
        assert second.done.wait(5)
        assert second.seq != first.seq and second.cached == len(opening)
        assert ("share", second.seq, len(opening)) in backend.log
        assert backend.held(first.seq)[: len(opening) + 20] == [*opening, *range(1, 21)]
        evaluated = backend.prompt_tokens_evaluated
        other = Collect([*opening, *range(41, 61)], 2, owner="bob")
        s.submit(other)
        assert other.done.wait(5)
        assert other.cached == 0 and backend.prompt_tokens_evaluated - evaluated == 80
        assert [e for e in backend.log if e[0] == "share"] == [("share", second.seq, 60)]
    finally:
        s.close()


def test_a_continuation_keeps_its_slot_when_its_reply_re_tokenizes_differently() -> None:
    """The stored reply is rendered again as text, and its tokens need not be the ones the
    model sampled (a word sampled in byte tokens is merged when re-tokenized). A prompt that
    holds all of the previous prompt is still that conversation's continuation: it takes its
    own slot, not an empty one."""
    s, _ = scheduler(sequences=3)
    prompt = list(range(100, 140))
    try:
        first = Collect(prompt, 20, owner="alice")
        s.submit(first)
        assert first.done.wait(5)
        # The reply re-tokenized: its first 5 tokens as sampled, then different ones.
        again = Collect([*prompt, *[TOKEN] * 5, *[9] * 15, *range(200, 210)], 2, owner="alice")
        s.submit(again)
        assert again.done.wait(5)
        assert again.seq == first.seq and again.cached == len(prompt) + 5
    finally:
        s.close()
