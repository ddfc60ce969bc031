"""Property test: random sequences of store operations agree with a plain in-memory model.

The model is a dict of threads, a dict of responses and a dict of every turn ever written. A
turn is alive while a thread head or a response's last turn reaches it (walking parents), which
is exactly what the store's reference counting must implement. Every operation is run against
both; results and error classes must match, and after every step the store's record counts
equal the model's and `Store.verify()` passes.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from support import POSTGRES_URL, create_pg_schema, drop_pg_schema
from threadloom import ResponseInfo, Store
from threadloom.errors import InvalidInput, NotFound, StateConflict, ThreadloomError
from threadloom.storage import close_store, open_store

OWNERS = ("alice", "bob")
THREAD_NAMES = ("a", "b", "c")
STATES = ("open", "locked", "archived")
STATUSES = ("completed", "incomplete", "failed")
LEGAL = {
    ("open", "open"),
    ("open", "locked"),
    ("open", "archived"),
    ("locked", "locked"),
    ("locked", "open"),
    ("locked", "archived"),
}
MISSING_THREAD = "ghost"
MISSING_RESPONSE = "resp_" + "0" * 26
MISSING_TURN = "msg_" + "0" * 26

T = TypeVar("T")


@dataclass
class MTurn:
    id: str
    parent: str | None
    owner: str
    role: str
    content: str
    reasoning: str | None
    depth: int


@dataclass
class MThread:
    id: str
    owner: str
    metadata: dict[str, Any]
    visible: bool
    created_ms: int
    last_activity_ms: int
    state: str = "open"
    head: str | None = None
    message_count: int = 0


@dataclass
class MResponse:
    id: str
    owner: str
    status: str
    model: str
    last_turn: str
    parent_turn: str | None
    input_count: int
    output_count: int
    thread_id: str | None
    previous_response_id: str | None


@dataclass
class Model:
    threads: dict[tuple[str, str], MThread] = field(default_factory=dict)
    # Ids of deleted threads that held messages: create-if-missing refuses them, an explicit
    # create reuses them.
    tombstones: set[tuple[str, str]] = field(default_factory=set)
    responses: dict[str, MResponse] = field(default_factory=dict)
    # Every turn ever written, live or not, so that rules can also pick deleted ones.
    turns: dict[str, MTurn] = field(default_factory=dict)
    deleted_responses: list[str] = field(default_factory=list)

    def chain(self, head: str | None) -> list[MTurn]:
        out: list[MTurn] = []
        while head is not None:
            t = self.turns[head]
            out.append(t)
            head = t.parent
        out.reverse()
        return out

    def alive(self) -> set[str]:
        roots = [t.head for t in self.threads.values()]
        roots += [r.last_turn for r in self.responses.values()]
        return {t.id for head in roots for t in self.chain(head)}


json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=6)
metadata_st = st.dictionaries(
    st.text(max_size=6), json_scalars | st.lists(json_scalars, max_size=3), max_size=3
)
turn_st = st.fixed_dictionaries(
    {
        "role": st.sampled_from(("system", "user", "assistant", "tool")),
        "content": st.text(max_size=12),
    },
    optional={"reasoning": st.none() | st.text(max_size=8)},
)
turns_st = st.lists(turn_st, min_size=1, max_size=3)
pick_st = st.integers(min_value=0, max_value=1 << 16)
owner_st = st.sampled_from(OWNERS)
Target = tuple[int, int]
target_st = st.tuples(st.integers(0, 9), pick_st)


def pick(pool: list[T], index: int) -> T:
    return pool[index % len(pool)]


def other(owner: str) -> str:
    return OWNERS[1 - OWNERS.index(owner)]


class StoreMachine(RuleBasedStateMachine):
    """Runs against a fresh LMDB store per example."""

    def __init__(self) -> None:
        super().__init__()
        self.store = self.open_store()
        self.model = Model()

    def open_store(self) -> Store:
        self.dir = Path(tempfile.mkdtemp(prefix="threadloom-model-"))
        return Store(self.dir / "store")

    def teardown(self) -> None:
        del self.store
        gc.collect()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- picking ids: known ones, deleted ones, other owners' ones and missing ones ----------

    # A target `at` is (mode, index): mode 0 names a missing id, mode 1 a known id under the other
    # owner, mode 2 a deleted one where there is one, anything else a live id of its owner.

    def thread_target(self, at: Target, prefer: str | None = None) -> tuple[str, str]:
        """With `prefer`, live picks favour threads in that state (to reach more transitions)."""
        mode, index = at
        known = sorted(self.model.threads)
        preferred = [k for k in known if self.model.threads[k].state == prefer]
        if mode >= 5 and preferred:
            known = preferred
        if mode == 0 or not known:
            return pick(list(OWNERS), index), MISSING_THREAD
        owner, name = pick(known, index)
        return (other(owner) if mode == 1 else owner), name

    def response_target(self, at: Target) -> tuple[str, str]:
        mode, index = at
        live = list(self.model.responses.values())
        if mode == 0 or not live:
            return pick(list(OWNERS), index), MISSING_RESPONSE
        if mode == 2 and self.model.deleted_responses:
            return pick(list(OWNERS), index), pick(self.model.deleted_responses, index)
        r = pick(live, index)
        return (other(r.owner) if mode == 1 else r.owner), r.id

    def turn_target(self, at: Target) -> tuple[str, str]:
        mode, index = at
        alive = self.model.alive()
        live = [t for t in self.model.turns.values() if t.id in alive]
        dead = [t for t in self.model.turns.values() if t.id not in alive]
        if mode == 0 or not live:
            return pick(list(OWNERS), index), MISSING_TURN
        if mode == 2 and dead:
            d = pick(dead, index)
            return d.owner, d.id
        t = pick(live, index)
        return (other(t.owner) if mode == 1 else t.owner), t.id

    # ---- checking ----------------------------------------------------------------------------

    def check_thread(self, got: Any, want: MThread) -> None:
        assert (got.id, got.owner, got.state, got.visible) == (
            want.id,
            want.owner,
            want.state,
            want.visible,
        )
        assert got.metadata == want.metadata
        assert got.head == want.head
        assert got.message_count == want.message_count
        assert got.created_ms == want.created_ms
        assert got.last_activity_ms == want.last_activity_ms

    def check_response(self, got: Any, want: MResponse) -> None:
        assert got.id == want.id
        assert got.owner == want.owner
        assert got.status == want.status
        assert got.model == want.model
        assert got.last_turn == want.last_turn
        assert got.parent_turn == want.parent_turn
        assert (got.input_count, got.output_count) == (want.input_count, want.output_count)
        assert got.thread_id == want.thread_id
        assert got.previous_response_id == want.previous_response_id

    def expect_error(self, error: type[ThreadloomError], op: Any) -> None:
        before = self.store.stats()
        with pytest.raises(error) as raised:
            op()
        assert type(raised.value) is error, f"{type(raised.value).__name__}: {raised.value}"
        after = self.store.stats()
        assert {k: after[k] for k in ("threads", "responses", "turns")} == {
            k: before[k] for k in ("threads", "responses", "turns")
        }

    def record_turns(
        self, owner: str, parent: str | None, turns: list[dict[str, Any]], ids: list[str]
    ) -> None:
        assert len(ids) == len(turns)
        assert len(set(ids)) == len(ids)
        depth = self.model.turns[parent].depth if parent else 0
        for turn_id, turn in zip(ids, turns, strict=True):
            assert turn_id not in self.model.turns
            depth += 1
            self.model.turns[turn_id] = MTurn(
                turn_id,
                parent,
                owner,
                turn["role"],
                turn["content"],
                turn.get("reasoning"),
                depth,
            )
            parent = turn_id

    def record_response(
        self,
        appended: Any,
        owner: str,
        status: str,
        output_count: int,
        parent: str | None,
        n: int,
        thread_id: str | None,
        previous: str | None,
    ) -> None:
        r = appended.response
        assert r is not None
        want = MResponse(
            r.id,
            owner,
            status,
            "model-x",
            appended.turn_ids[-1],
            parent,
            n - output_count,
            output_count,
            thread_id,
            previous,
        )
        self.check_response(r, want)
        assert r.id not in self.model.responses
        self.model.responses[r.id] = want

    # ---- rules -------------------------------------------------------------------------------

    @initialize(turns=turns_st)
    def start(self, turns: list[dict[str, Any]]) -> None:
        """Every example starts with one thread per owner, one of them with a response."""
        for owner in OWNERS:
            self.create_thread(owner, "a", None, True, False)
        self.append_to_thread((3, 0), turns, True, "completed", 1)

    @rule(
        owner=owner_st,
        name=st.none() | st.sampled_from(THREAD_NAMES),
        metadata=st.none() | metadata_st,
        visible=st.booleans(),
        exist_ok=st.booleans(),
    )
    def create_thread(
        self,
        owner: str,
        name: str | None,
        metadata: dict[str, Any] | None,
        visible: bool,
        exist_ok: bool,
    ) -> None:
        def op() -> Any:
            return self.store.create_thread(
                name, owner=owner, metadata=metadata, visible=visible, exist_ok=exist_ok
            )

        existing = self.model.threads.get((owner, name)) if name else None
        if existing is not None:
            if exist_ok:
                self.check_thread(op(), existing)
            else:
                self.expect_error(StateConflict, op)
            return
        if name is not None and (owner, name) in self.model.tombstones:
            if exist_ok:
                self.expect_error(NotFound, op)
                return
            self.model.tombstones.discard((owner, name))
        t = op()
        if name is None:
            assert t.id.startswith("thread_")
        else:
            assert t.id == name
        assert t.last_activity_ms == t.created_ms
        want = MThread(t.id, owner, metadata or {}, visible, t.created_ms, t.last_activity_ms)
        self.check_thread(t, want)
        self.model.threads[(owner, t.id)] = want

    @rule(
        at=target_st,
        turns=turns_st,
        with_response=st.booleans(),
        status=st.sampled_from(STATUSES),
        outputs=st.integers(0, 3),
    )
    def append_to_thread(
        self,
        at: Target,
        turns: list[dict[str, Any]],
        with_response: bool,
        status: str,
        outputs: int,
    ) -> None:
        owner, name = self.thread_target(at)
        output_count = min(outputs, len(turns))
        info = ResponseInfo("model-x", status=status, output_count=output_count)

        def op() -> Any:
            return self.store.append(
                turns, owner=owner, thread=name, response=info if with_response else None
            )

        t = self.model.threads.get((owner, name))
        if t is None:
            self.expect_error(NotFound, op)
            return
        if t.state != "open":
            self.expect_error(StateConflict, op)
            return
        a = op()
        parent = t.head
        self.record_turns(owner, parent, turns, a.turn_ids)
        assert a.thread is not None
        assert a.thread.last_activity_ms >= t.last_activity_ms
        t.last_activity_ms = a.thread.last_activity_ms
        t.head = a.turn_ids[-1]
        t.message_count += len(turns)
        self.check_thread(a.thread, t)
        if with_response:
            self.record_response(a, owner, status, output_count, parent, len(turns), name, None)
        else:
            assert a.response is None

    @rule(
        at=target_st,
        turns=turns_st,
        status=st.sampled_from(STATUSES),
    )
    def append_after_response(self, at: Target, turns: list[dict[str, Any]], status: str) -> None:
        owner, rid = self.response_target(at)

        def op() -> Any:
            return self.store.append(
                turns,
                owner=owner,
                previous_response_id=rid,
                response=ResponseInfo("model-x", status=status),
            )

        r = self.model.responses.get(rid)
        if r is None or r.owner != owner:
            self.expect_error(NotFound, op)
            return
        if r.status == "failed":
            self.expect_error(StateConflict, op)
            return
        a = op()
        assert a.thread is None
        self.record_turns(owner, r.last_turn, turns, a.turn_ids)
        self.record_response(a, owner, status, 1, r.last_turn, len(turns), None, rid)

    @rule(
        at=target_st,
        turns=turns_st,
        status=st.sampled_from(STATUSES),
        root=st.booleans(),
    )
    def append_after_turn(
        self, at: Target, turns: list[dict[str, Any]], status: str, root: bool
    ) -> None:
        owner, anchor = self.turn_target(at)
        turn_id = None if root else anchor
        info = ResponseInfo("model-x", status=status, output_count=0)

        def op() -> Any:
            return self.store.append(turns, owner=owner, after_turn=turn_id, response=info)

        if turn_id is not None:
            known = self.model.turns.get(turn_id)
            if known is None or known.owner != owner or turn_id not in self.model.alive():
                self.expect_error(NotFound, op)
                return
        a = op()
        self.record_turns(owner, turn_id, turns, a.turn_ids)
        self.record_response(a, owner, status, 0, turn_id, len(turns), None, None)

    def change_state(self, at: Target, state: str, prefer: str | None = None) -> None:
        owner, name = self.thread_target(at, prefer)

        def op() -> Any:
            return self.store.update_thread(name, owner=owner, state=state)

        t = self.model.threads.get((owner, name))
        if state not in STATES:
            self.expect_error(InvalidInput, op)
        elif t is None:
            self.expect_error(NotFound, op)
        elif (t.state, state) not in LEGAL:
            self.expect_error(StateConflict, op)
        else:
            t.state = state
            self.check_thread(op(), t)

    @rule(at=target_st, state=st.sampled_from((*STATES, "closed")))
    def set_state(self, at: Target, state: str) -> None:
        self.change_state(at, state)

    @rule(at=target_st)
    def lock(self, at: Target) -> None:
        self.change_state(at, "locked", prefer="open")

    @rule(at=target_st)
    def unlock(self, at: Target) -> None:
        self.change_state(at, "open", prefer="locked")

    @rule(at=target_st, metadata=metadata_st)
    def update_metadata(self, at: Target, metadata: dict[str, Any]) -> None:
        owner, name = self.thread_target(at)

        def op() -> Any:
            return self.store.update_thread(name, owner=owner, metadata=metadata)

        t = self.model.threads.get((owner, name))
        if t is None:
            self.expect_error(NotFound, op)
        elif t.state == "archived":
            self.expect_error(StateConflict, op)
        else:
            t.metadata = metadata
            self.check_thread(op(), t)

    @rule(at=target_st)
    def delete_thread(self, at: Target) -> None:
        owner, name = self.thread_target(at)
        if (owner, name) not in self.model.threads:
            self.expect_error(NotFound, lambda: self.store.delete_thread(name, owner=owner))
            return
        self.store.delete_thread(name, owner=owner)
        gone = self.model.threads.pop((owner, name))
        if gone.head is not None:
            self.model.tombstones.add((owner, name))

    @rule(at=target_st)
    def delete_response(self, at: Target) -> None:
        owner, rid = self.response_target(at)
        r = self.model.responses.get(rid)
        if r is None or r.owner != owner:
            self.expect_error(NotFound, lambda: self.store.delete_response(rid, owner=owner))
            return
        self.store.delete_response(rid, owner=owner)
        del self.model.responses[rid]
        self.model.deleted_responses.append(rid)

    @rule(at=target_st, kind=st.sampled_from(("thread", "response", "turn")))
    def history(self, at: Target, kind: str) -> None:
        want: list[MTurn] | None
        if kind == "thread":
            owner, name = self.thread_target(at)
            t = self.model.threads.get((owner, name))
            want = None if t is None else self.model.chain(t.head)
            args = {"thread": name}
        elif kind == "response":
            owner, rid = self.response_target(at)
            r = self.model.responses.get(rid)
            want = None if r is None or r.owner != owner else self.model.chain(r.last_turn)
            args = {"response": rid}
        else:
            owner, turn_id = self.turn_target(at)
            known = self.model.turns.get(turn_id)
            ok = known is not None and known.owner == owner and turn_id in self.model.alive()
            want = self.model.chain(turn_id) if ok else None
            args = {"turn": turn_id}
        if want is None:
            self.expect_error(NotFound, lambda: self.store.history(owner=owner, **args))
            return
        got = self.store.history(owner=owner, **args)
        assert [(x.id, x.parent_id, x.role, x.content, x.reasoning, x.depth) for x in got] == [
            (m.id, m.parent, m.role, m.content, m.reasoning, m.depth) for m in want
        ]

    @rule(at=target_st)
    def get_thread(self, at: Target) -> None:
        owner, name = self.thread_target(at)
        t = self.model.threads.get((owner, name))
        if t is None:
            self.expect_error(NotFound, lambda: self.store.get_thread(name, owner=owner))
        else:
            self.check_thread(self.store.get_thread(name, owner=owner), t)

    @rule(at=target_st)
    def get_response(self, at: Target) -> None:
        owner, rid = self.response_target(at)
        r = self.model.responses.get(rid)
        if r is None or r.owner != owner:
            self.expect_error(NotFound, lambda: self.store.get_response(rid, owner=owner))
        else:
            self.check_response(self.store.get_response(rid, owner=owner), r)

    @rule(owner=owner_st, visible=st.booleans(), limit=st.integers(1, 4))
    def list_threads(self, owner: str, visible: bool, limit: int) -> None:
        mine = [t for t in self.model.threads.values() if t.owner == owner and t.visible == visible]
        mine.sort(key=lambda t: (-t.last_activity_ms, t.id))
        got: list[Any] = []
        cursor: str | None = None
        for _ in range(len(mine) + 2):
            page = self.store.list_threads(owner=owner, visible=visible, limit=limit, after=cursor)
            assert len(page.threads) <= limit
            got.extend(page.threads)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert cursor is None
        assert [t.id for t in got] == [t.id for t in mine]
        for g, want in zip(got, mine, strict=True):
            self.check_thread(g, want)

    @invariant()
    def counts_match(self) -> None:
        stats = self.store.stats()
        assert stats["threads"] == len(self.model.threads)
        assert stats["responses"] == len(self.model.responses)
        assert stats["turns"] == len(self.model.alive())
        self.store.verify()


class PostgresStoreMachine(StoreMachine):
    """The same rules against a fresh PostgreSQL schema per example."""

    def open_store(self) -> Store:
        assert POSTGRES_URL is not None
        self.schema, url = create_pg_schema(POSTGRES_URL)
        return open_store(url)

    def teardown(self) -> None:
        close_store(self.store)
        assert POSTGRES_URL is not None
        drop_pg_schema(POSTGRES_URL, self.schema)


SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
StoreMachine.TestCase.settings = SETTINGS
PostgresStoreMachine.TestCase.settings = SETTINGS
TestStoreModel = StoreMachine.TestCase
TestStoreModelPostgres = pytest.mark.skipif(
    POSTGRES_URL is None, reason="THREADLOOM_TEST_POSTGRES_URL is not set"
)(PostgresStoreMachine.TestCase)
