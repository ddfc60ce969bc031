"""The conversation store through its Python API: every operation and every error path."""

from __future__ import annotations

import gc
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import threadloom
from support import (
    MakeStore,
    assert_fields,
    contents,
    missing_response_id,
    missing_turn_id,
    msg,
    msgs,
    snapshot,
)
from threadloom import ResponseInfo, Retention, Store
from threadloom._core import new_response_id
from threadloom.errors import (
    InvalidInput,
    LimitExceeded,
    NotFound,
    StateConflict,
    StoreError,
    StoreFull,
    ThreadloomError,
)
from threadloom.storage import is_postgres_url

ID_RE = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}$")
MAX_MESSAGES = 10_000
MAX_METADATA = 16 * 1024


def now_ms() -> int:
    return int(time.time() * 1000)


# ---- the store itself --------------------------------------------------------------------------


def test_store_properties(store: Store, store_spec: str) -> None:
    assert str(store.path) == store_spec
    # LMDB's on-disk layout version; PostgreSQL's schema migration version.
    assert store.format_version == (7 if is_postgres_url(store_spec) else 1)
    r = store.retention
    assert r.thread_inactivity_s == 90 * 86400
    assert r.thread_max_age_s == 365 * 86400
    assert r.response_ttl_s == 30 * 86400
    assert r.anchor_window_s == 86400
    assert store.stats()["threads"] == 0
    assert store.stats()["turns"] == 0
    assert store.stats()["responses"] == 0
    assert "Store(" in repr(store)
    store.verify()


def test_retention_settings() -> None:
    r = Retention(
        thread_inactivity_s=1.5, thread_max_age_s=2, response_ttl_s=3, anchor_window_s=0.25
    )
    assert (r.thread_inactivity_s, r.thread_max_age_s, r.response_ttl_s, r.anchor_window_s) == (
        1.5,
        2,
        3,
        0.25,
    )
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidInput, match="thread_inactivity_s"):
            Retention(thread_inactivity_s=bad)
    with pytest.raises(InvalidInput, match="anchor_window_s"):
        Retention(anchor_window_s=-0.5)


def test_store_keeps_its_retention(make_store: MakeStore) -> None:
    s = make_store(retention=Retention(response_ttl_s=60))
    assert s.retention.response_ttl_s == 60


def test_exception_hierarchy() -> None:
    for cls in (NotFound, StateConflict, LimitExceeded, InvalidInput, StoreError):
        assert issubclass(cls, ThreadloomError)
    assert issubclass(NotFound, LookupError)
    assert issubclass(InvalidInput, ValueError)
    assert issubclass(StoreFull, StoreError)
    assert threadloom.NotFound is NotFound


@pytest.mark.lmdb_only
def test_open_on_a_file_is_a_store_error(tmp_path: Path) -> None:
    f = tmp_path / "not-a-dir"
    f.write_text("hello")
    with pytest.raises(StoreError, match="not-a-dir"):
        Store(f)


def test_reopen_sees_the_data(make_store: MakeStore) -> None:
    s = make_store()
    s.create_thread("kept", metadata={"k": "v"})
    a = s.append(msgs("hello", "world"), thread="kept", response=ResponseInfo("m"))
    hidden = s.create_thread(visible=False)
    response_id = a.response.id if a.response else ""
    del s, a
    gc.collect()

    s = make_store()
    t = s.get_thread("kept")
    assert t.metadata == {"k": "v"}
    assert t.message_count == 2
    assert contents(s.history(thread="kept")) == ["hello", "world"]
    assert s.get_response(response_id).last_turn == t.head
    assert s.get_thread(hidden.id).visible is False
    s.append([msg("again")], thread="kept")
    s.verify()
    del s
    gc.collect()

    s = make_store()
    assert contents(s.history(thread="kept")) == ["hello", "world", "again"]
    s.verify()


# ---- create / get ------------------------------------------------------------------------------


def test_create_thread_with_generated_id(store: Store) -> None:
    before = now_ms()
    t = store.create_thread()
    assert t.id.startswith("thread_")
    assert ID_RE.match(t.id.removeprefix("thread_"))
    assert_fields(
        t,
        {
            "owner": "default",
            "head": None,
            "metadata": {},
            "metadata_json": "{}",
            "state": "open",
            "visible": True,
            "message_count": 0,
        },
    )
    assert before - 5 <= t.created_ms <= now_ms() + 5
    assert t.last_activity_ms == t.created_ms
    assert store.create_thread().id != t.id
    assert "Thread(" in repr(t)


def test_create_thread_with_client_id_and_metadata(store: Store) -> None:
    t = store.create_thread(
        "user-123_session:1.a", owner="alice", metadata={"a": [1, 2], "b": None}
    )
    assert t.id == "user-123_session:1.a"
    assert t.owner == "alice"
    assert t.metadata == {"a": [1, 2], "b": None}
    assert json.loads(t.metadata_json) == {"a": [1, 2], "b": None}
    got = store.get_thread("user-123_session:1.a", owner="alice")
    assert_fields(
        got,
        {
            "id": t.id,
            "owner": "alice",
            "metadata": t.metadata,
            "created_ms": t.created_ms,
            "state": "open",
        },
    )


@pytest.mark.parametrize(
    "metadata",
    ['{"x": 1, "y": "z"}', b'{"x": 1, "y": "z"}', {"x": 1, "y": "z"}],
    ids=["str", "bytes", "dict"],
)
def test_metadata_forms(store: Store, metadata: str | bytes | dict[str, object]) -> None:
    t = store.create_thread(metadata=metadata)
    assert t.metadata == {"x": 1, "y": "z"}
    assert t.metadata_json == '{"x":1,"y":"z"}'


@pytest.mark.parametrize("thread_id", ["x", "x" * 128, "A.b:c-d_e", "0123456789"])
def test_valid_thread_ids(store: Store, thread_id: str) -> None:
    assert store.create_thread(thread_id).id == thread_id
    assert store.get_thread(thread_id).id == thread_id


BAD_THREAD_IDS = ["", "x" * 129, "has space", "é", "a/b", "a\0b", "tab\t", "new\nline", "a,b"]


@pytest.mark.parametrize("thread_id", BAD_THREAD_IDS)
def test_invalid_thread_ids(store: Store, thread_id: str) -> None:
    with pytest.raises(InvalidInput, match="invalid thread id"):
        store.create_thread(thread_id)
    with pytest.raises(InvalidInput, match="invalid thread id"):
        store.get_thread(thread_id)
    with pytest.raises(InvalidInput, match="invalid thread id"):
        store.update_thread(thread_id, state="locked")
    with pytest.raises(InvalidInput, match="invalid thread id"):
        store.delete_thread(thread_id)
    with pytest.raises(InvalidInput, match="invalid thread id"):
        store.append([msg("x")], thread=thread_id)
    with pytest.raises(InvalidInput, match="invalid thread id"):
        store.history(thread=thread_id)
    assert store.stats()["threads"] == 0


@pytest.mark.parametrize("owner", ["", "o" * 129, "a\0b"])
def test_invalid_owners(store: Store, owner: str) -> None:
    store.create_thread("t")
    with pytest.raises(InvalidInput, match="invalid owner"):
        store.create_thread("t2", owner=owner)
    with pytest.raises(InvalidInput, match="invalid owner"):
        store.get_thread("t", owner=owner)
    with pytest.raises(InvalidInput, match="invalid owner"):
        store.list_threads(owner=owner)
    with pytest.raises(InvalidInput, match="invalid owner"):
        store.append([msg("x")], thread="t", owner=owner)
    with pytest.raises(InvalidInput, match="invalid owner"):
        store.append([msg("x")], owner=owner, response=ResponseInfo("m"))
    assert store.stats()["threads"] == 1


def test_duplicate_thread_is_a_state_conflict(store: Store) -> None:
    store.create_thread("t", metadata={"v": 1})
    store.append([msg("a")], thread="t")
    before = snapshot(store)
    with pytest.raises(StateConflict, match='"t" already exists'):
        store.create_thread("t", metadata={"v": 2})
    assert snapshot(store) == before
    same = store.create_thread("t", metadata={"v": 2}, exist_ok=True)
    assert same.metadata == {"v": 1}
    assert same.message_count == 1
    assert snapshot(store) == before
    # The same id under another owner is a different thread.
    other = store.create_thread("t", owner="bob")
    assert other.owner == "bob"
    assert other.message_count == 0
    assert store.get_thread("t").message_count == 1


def test_get_unknown_thread(store: Store) -> None:
    with pytest.raises(NotFound, match='thread "nope" not found'):
        store.get_thread("nope")


def test_a_missing_record_says_what_it_is_about(store: Store) -> None:
    """NotFound carries the kind and id of the record it is about, on both stores, so a
    caller tells a missing thread from a missing response without reading the message."""
    store.create_thread("t", owner="alice")
    a = store.append(msgs("q", "a"), owner="alice", thread="t", response=ResponseInfo("m"))
    assert a.response is not None
    response_id, turn_id = a.response.id, a.turn_ids[0]
    lookups: list[tuple[Callable[[], object], str, str]] = [
        (lambda: store.get_thread("t", owner="bob"), "thread", "t"),
        (lambda: store.get_response(response_id, owner="bob"), "response", response_id),
        (lambda: store.history(owner="bob", turn=turn_id), "turn", turn_id),
    ]
    for lookup, kind, ident in lookups:
        with pytest.raises(NotFound) as caught:
            lookup()
        assert (caught.value.kind, caught.value.id) == (kind, ident)


def test_owner_isolation(store: Store) -> None:
    store.create_thread("t", owner="alice")
    a = store.append(msgs("q", "a"), owner="alice", thread="t", response=ResponseInfo("m"))
    assert a.response is not None
    response_id = a.response.id
    turn_id = a.turn_ids[0]
    before = snapshot(store, owners=("alice", "bob"))

    with pytest.raises(NotFound):
        store.get_thread("t", owner="bob")
    with pytest.raises(NotFound):
        store.get_thread("t")  # the default owner is someone else too
    with pytest.raises(NotFound):
        store.history(owner="bob", thread="t")
    with pytest.raises(NotFound):
        store.update_thread("t", owner="bob", state="locked")
    with pytest.raises(NotFound):
        store.delete_thread("t", owner="bob")
    with pytest.raises(NotFound):
        store.append([msg("x")], owner="bob", thread="t")
    with pytest.raises(NotFound):
        store.get_response(response_id, owner="bob")
    with pytest.raises(NotFound):
        store.delete_response(response_id, owner="bob")
    with pytest.raises(NotFound):
        store.history(owner="bob", response=response_id)
    with pytest.raises(NotFound):
        store.append(
            [msg("x")], owner="bob", previous_response_id=response_id, response=ResponseInfo("m")
        )
    with pytest.raises(NotFound):
        store.history(owner="bob", turn=turn_id)
    with pytest.raises(NotFound):
        store.append([msg("x")], owner="bob", after_turn=turn_id, response=ResponseInfo("m"))
    assert store.list_threads(owner="bob").threads == []
    assert store.list_threads(owner="alic").threads == []
    assert store.list_threads(owner="alicex").threads == []
    assert snapshot(store, owners=("alice", "bob")) == before
    # Messages about another owner's id read exactly like those about a missing one.
    with pytest.raises(NotFound) as theirs:
        store.get_response(response_id, owner="bob")
    assert str(theirs.value) == f"response {response_id!r}".replace("'", '"') + " not found"


# ---- list ---------------------------------------------------------------------------------------


def test_list_newest_activity_first(store: Store) -> None:
    for name in ("a", "b", "c"):
        store.create_thread(name)
        time.sleep(0.003)
    assert [t.id for t in store.list_threads().threads] == ["c", "b", "a"]
    time.sleep(0.003)
    store.append([msg("bump")], thread="a")
    assert [t.id for t in store.list_threads().threads] == ["a", "c", "b"]
    # Metadata and state changes are not activity.
    store.update_thread("b", metadata={"x": 1}, state="locked")
    assert [t.id for t in store.list_threads().threads] == ["a", "c", "b"]
    store.delete_thread("c")
    assert [t.id for t in store.list_threads().threads] == ["a", "b"]


def test_list_ties_are_ordered_by_id(store: Store) -> None:
    for i in range(30):
        store.create_thread(f"t{i:02d}")
    threads = store.list_threads(limit=1000).threads
    keys = [(-t.last_activity_ms, t.id) for t in threads]
    assert keys == sorted(keys)
    assert len(threads) == 30


def test_list_pagination(store: Store) -> None:
    made = []
    for i in range(7):
        made.append(store.create_thread(f"p{i}").id)
        time.sleep(0.002)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = store.list_threads(limit=3, after=cursor)
        pages += 1
        assert len(page.threads) <= 3
        seen.extend(t.id for t in page.threads)
        cursor = page.next_cursor
        if cursor is None:
            break
        assert len(page.threads) == 3
    assert pages == 3
    assert seen == list(reversed(made))
    exact = store.list_threads(limit=7)
    assert [t.id for t in exact.threads] == seen
    assert exact.next_cursor is None
    assert store.list_threads(limit=1000).next_cursor is None
    first = store.list_threads(limit=6)
    last = store.list_threads(limit=6, after=first.next_cursor)
    assert [t.id for t in last.threads] == [made[0]]
    assert last.next_cursor is None


def test_list_cursor_is_stable_while_threads_move(store: Store) -> None:
    names = [f"s{i}" for i in range(6)]
    for name in names:
        store.create_thread(name)
        time.sleep(0.002)
    first = store.list_threads(limit=3)
    assert [t.id for t in first.threads] == ["s5", "s4", "s3"]
    # s1 (not yet listed) becomes the most recently active, s4 (listed) too.
    time.sleep(0.002)
    store.append([msg("bump")], thread="s1")
    time.sleep(0.002)  # activity is in ms: the same ms would order the two by id instead
    store.append([msg("bump")], thread="s4")
    rest = store.list_threads(limit=3, after=first.next_cursor)
    # The next page continues after the boundary: no thread twice, s1 moved behind the cursor.
    assert [t.id for t in rest.threads] == ["s2", "s0"]
    assert rest.next_cursor is None
    assert [t.id for t in store.list_threads().threads][:2] == ["s4", "s1"]


def test_list_visible_and_hidden(store: Store) -> None:
    store.create_thread("shown")
    store.create_thread("hidden", visible=False)
    t = store.get_thread("hidden")
    assert t.visible is False
    assert [t.id for t in store.list_threads().threads] == ["shown"]
    assert [t.id for t in store.list_threads(visible=False).threads] == ["hidden"]
    store.append([msg("x")], thread="hidden")
    assert store.get_thread("hidden").visible is False
    assert [t.id for t in store.list_threads(visible=False).threads] == ["hidden"]
    assert [t.id for t in store.list_threads().threads] == ["shown"]


@pytest.mark.parametrize("limit", [0, 1001])
def test_list_invalid_limit(store: Store, limit: int) -> None:
    with pytest.raises(InvalidInput, match="limit"):
        store.list_threads(limit=limit)


def test_list_negative_limit_is_rejected(store: Store) -> None:
    with pytest.raises((InvalidInput, OverflowError)):
        store.list_threads(limit=-1)


@pytest.mark.parametrize("cursor", ["", "zz", "abc", "00", "0011223344556677"])
def test_list_invalid_cursor(store: Store, cursor: str) -> None:
    store.create_thread("t")
    with pytest.raises(InvalidInput, match="cursor"):
        store.list_threads(after=cursor)


# ---- update -------------------------------------------------------------------------------------

STATES = ("open", "locked", "archived")
LEGAL = {
    ("open", "open"),
    ("open", "locked"),
    ("open", "archived"),
    ("locked", "locked"),
    ("locked", "open"),
    ("locked", "archived"),
}


def put_in_state(store: Store, thread_id: str, state: str) -> None:
    if state != "open":
        store.update_thread(thread_id, state=state)
    assert store.get_thread(thread_id).state == state


@pytest.mark.parametrize("to", STATES)
@pytest.mark.parametrize("start", STATES)
def test_state_transitions(store: Store, start: str, to: str) -> None:
    store.create_thread("t")
    store.append([msg("x")], thread="t")
    put_in_state(store, "t", start)
    before = snapshot(store)
    if (start, to) in LEGAL:
        assert store.update_thread("t", state=to).state == to
        assert store.get_thread("t").state == to
    else:
        with pytest.raises(StateConflict, match=f"from {start} to {to}"):
            store.update_thread("t", state=to)
        assert snapshot(store) == before


def test_update_metadata(store: Store) -> None:
    store.create_thread("t", metadata={"a": 1})
    t = store.update_thread("t", metadata={"b": 2})
    assert t.metadata == {"b": 2}
    assert store.get_thread("t").metadata == {"b": 2}
    assert store.update_thread("t", metadata="{}").metadata == {}
    # Neither argument: nothing changes.
    assert store.update_thread("t").metadata == {}
    store.update_thread("t", state="locked")
    assert store.update_thread("t", metadata={"c": 3}).metadata == {"c": 3}
    t = store.update_thread("t", metadata={"final": True}, state="archived")
    assert (t.state, t.metadata) == ("archived", {"final": True})
    before = snapshot(store)
    with pytest.raises(StateConflict, match="archived"):
        store.update_thread("t", metadata={"d": 4})
    assert snapshot(store) == before


def test_update_errors(store: Store) -> None:
    store.create_thread("t")
    before = snapshot(store)
    with pytest.raises(InvalidInput, match="invalid thread state"):
        store.update_thread("t", state="closed")
    with pytest.raises(NotFound):
        store.update_thread("missing", state="locked")
    with pytest.raises(InvalidInput, match="JSON object"):
        store.update_thread("t", metadata="[1, 2]")
    with pytest.raises(LimitExceeded, match="metadata"):
        store.update_thread("t", metadata={"k": "x" * MAX_METADATA})
    assert snapshot(store) == before


# ---- metadata -----------------------------------------------------------------------------------


def test_metadata_size_limit(store: Store) -> None:
    fits = {"k": "x" * (MAX_METADATA - len('{"k":""}'))}
    assert len(store.create_thread("fits", metadata=fits).metadata_json) == MAX_METADATA
    too_big = {"k": "x" * (MAX_METADATA - len('{"k":""}') + 1)}
    before = snapshot(store)
    with pytest.raises(LimitExceeded, match="16384"):
        store.create_thread("big", metadata=too_big)
    with pytest.raises(LimitExceeded, match="metadata"):
        store.append([msg("x")], response=ResponseInfo("m", metadata=too_big))
    assert snapshot(store) == before


@pytest.mark.parametrize(
    "metadata",
    ["[1]", "3", '"text"', "null", "true", "{", "{'a': 1}", b"[]", b"\xff\xfe", [1, 2], 5, 1.5],
)
def test_metadata_must_be_a_json_object(
    store: Store, metadata: str | bytes | list[int] | float
) -> None:
    with pytest.raises(InvalidInput, match="metadata"):
        store.create_thread("t", metadata=metadata)  # type: ignore[arg-type]
    store.create_thread("ok")
    with pytest.raises(InvalidInput, match="metadata"):
        store.update_thread("ok", metadata=metadata)  # type: ignore[arg-type]
    assert store.get_thread("ok").metadata == {}
    assert store.stats()["threads"] == 1


def test_unencodable_metadata(store: Store) -> None:
    with pytest.raises(InvalidInput, match="metadata"):
        store.create_thread("t", metadata={"x": object()})
    with pytest.raises(InvalidInput, match="metadata"):
        ResponseInfo("m", metadata={"x": {1, 2}})
    # Python's json writes NaN and Infinity, which are not JSON.
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InvalidInput, match="not valid JSON"):
            store.create_thread("t", metadata={"x": bad})
    deep: dict[str, object] = {}
    node = deep
    for _ in range(300):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    with pytest.raises(InvalidInput, match="metadata"):
        store.create_thread("t", metadata=deep)
    with pytest.raises(InvalidInput, match="trailing"):
        store.create_thread("t", metadata='{"a": 1} {}')
    assert store.stats()["threads"] == 0


def test_metadata_unicode_round_trip(store: Store) -> None:
    meta = {"名前": "🧵 loom", "nested": {"list": [1, 2.5, None, True]}}
    assert store.create_thread("t", metadata=meta).metadata == meta
    assert store.get_thread("t").metadata == meta


# ---- append to a thread ------------------------------------------------------------------------


def test_append_to_thread(store: Store) -> None:
    t0 = store.create_thread("t")
    time.sleep(0.002)
    a = store.append(
        [msg("sys", "system"), msg("hi"), msg("hello", "assistant"), msg("out", "tool")],
        thread="t",
    )
    assert len(a.turn_ids) == 4
    assert len(set(a.turn_ids)) == 4
    assert all(i.startswith("msg_") and ID_RE.match(i[4:]) for i in a.turn_ids)
    assert a.response is None
    assert a.thread is not None
    assert a.thread.head == a.turn_ids[-1]
    assert a.thread.message_count == 4
    assert a.thread.last_activity_ms > t0.last_activity_ms
    assert a.thread.created_ms == t0.created_ms

    h = store.history(thread="t")
    assert [x.id for x in h] == a.turn_ids
    assert [x.role for x in h] == ["system", "user", "assistant", "tool"]
    assert contents(h) == ["sys", "hi", "hello", "out"]
    assert [x.depth for x in h] == [1, 2, 3, 4]
    assert [x.parent_id for x in h] == [None, *a.turn_ids[:-1]]
    assert all(x.reasoning is None for x in h)
    assert all(abs(x.created_ms - a.thread.last_activity_ms) < 1000 for x in h)
    assert "Turn(" in repr(h[0])

    b = store.append([msg("more")], thread="t")
    assert b.thread is not None
    assert b.thread.message_count == 5
    h = store.history(thread="t")
    assert [x.id for x in h] == [*a.turn_ids, *b.turn_ids]
    assert h[-1].parent_id == a.turn_ids[-1]
    assert store.stats()["turns"] == 5
    store.verify()


def test_history_of_empty_thread(store: Store) -> None:
    store.create_thread("t")
    assert store.history(thread="t") == []
    assert store.history(thread="t", limit=3) == []


def test_history_limit_reads_the_newest_turns(store: Store) -> None:
    store.create_thread("t")
    a = store.append(msgs(*(f"m{i}" for i in range(7))), thread="t")
    every = store.history(thread="t")
    assert [t.id for t in store.history(thread="t", limit=3)] == [t.id for t in every[-3:]]
    assert [t.id for t in store.history(thread="t", limit=100)] == [t.id for t in every]
    assert store.history(thread="t", limit=0) == []
    # Paging back: the page before a turn ends at its parent.
    page = store.history(turn=every[-3].parent_id, limit=3)
    assert contents(page) == ["m1", "m2", "m3"]
    assert contents(store.history(turn=a.turn_ids[0], limit=5)) == ["m0"]


def test_append_accepts_any_iterable(store: Store) -> None:
    store.create_thread("t")
    store.append((msg(str(i)) for i in range(3)), thread="t")
    store.append((msg("tuple"),), thread="t")
    assert contents(store.history(thread="t")) == ["0", "1", "2", "tuple"]


@pytest.mark.parametrize("state", ["locked", "archived"])
def test_append_to_closed_thread(store: Store, state: str) -> None:
    store.create_thread("t")
    store.append([msg("a")], thread="t")
    store.update_thread("t", state=state)
    before = snapshot(store)
    with pytest.raises(StateConflict, match=f"is {state}"):
        store.append([msg("b")], thread="t")
    with pytest.raises(StateConflict, match=f"is {state}"):
        store.append([msg("b")], thread="t", response=ResponseInfo("m"))
    assert snapshot(store) == before
    if state == "locked":
        store.update_thread("t", state="open")
        store.append([msg("b")], thread="t")
        assert contents(store.history(thread="t")) == ["a", "b"]


def test_append_to_missing_thread(store: Store) -> None:
    with pytest.raises(NotFound, match='thread "ghost" not found'):
        store.append([msg("a")], thread="ghost")
    assert store.stats()["turns"] == 0


def test_expected_head(store: Store) -> None:
    store.create_thread("t")
    a = store.append([msg("a")], thread="t", expected_head="")
    b = store.append([msg("b")], thread="t", expected_head=a.turn_ids[-1])
    before = snapshot(store)
    with pytest.raises(StateConflict, match="moved on"):
        store.append([msg("c")], thread="t", expected_head=a.turn_ids[-1])
    with pytest.raises(StateConflict, match="moved on"):
        store.append([msg("c")], thread="t", expected_head="")
    with pytest.raises(StateConflict, match="moved on"):
        store.append([msg("c")], thread="t", expected_head=missing_turn_id())
    with pytest.raises(InvalidInput, match="invalid turn id"):
        store.append([msg("c")], thread="t", expected_head="msg_nope")
    assert snapshot(store) == before
    store.append([msg("c")], thread="t", expected_head=b.turn_ids[-1])
    assert contents(store.history(thread="t")) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("turns", "match"),
    [
        ([], "empty"),
        ([{"role": "user"}], r"turns\[0\].content is missing"),
        ([{"content": "x"}], r"turns\[0\].role is missing"),
        ([msg("ok"), {"role": "robot", "content": "x"}], r"turns\[1\].role"),
        ([{"role": "user", "content": 5}], r"turns\[0\].content must be a string"),
        ([{"role": "user", "content": b"bytes"}], "must be a string"),
        ([{"role": "user", "content": "x", "reasoning": 1}], "reasoning must be a string"),
        ([{"role": "USER", "content": "x"}], "role"),
        (["user: hi"], r"turns\[0\] must be a dict"),
        ([("user", "hi")], "must be a dict"),
        ([{"role": "user", "content": "\ud800"}], "content"),
    ],
)
def test_invalid_turns(store: Store, turns: list[object], match: str) -> None:
    store.create_thread("t")
    store.append([msg("first")], thread="t")
    before = snapshot(store)
    with pytest.raises(InvalidInput, match=match):
        store.append(turns, thread="t")  # type: ignore[arg-type]
    assert snapshot(store) == before


def test_turn_text_limit(store: Store) -> None:
    store.create_thread("t")
    before = snapshot(store)
    huge = "x" * (64 * 1024 * 1024 + 1)
    with pytest.raises(LimitExceeded, match="bytes of text"):
        store.append([msg("fine"), msg(huge)], thread="t")
    with pytest.raises(LimitExceeded, match="bytes of text"):
        store.append(
            [msg("x" * (32 * 1024 * 1024), reasoning=huge[: 32 * 1024 * 1024 + 1])], thread="t"
        )
    assert snapshot(store) == before


@pytest.mark.parametrize(
    "anchors",
    [
        # (thread with previous_response_id continues the thread from the response at its
        # head: see test_a_thread_append_continuing_its_head_response_records_it)
        {"thread": "t", "after_turn": missing_turn_id()},
        {"previous_response_id": missing_response_id(), "after_turn": missing_turn_id()},
    ],
)
def test_two_anchors_are_invalid(store: Store, anchors: dict[str, str]) -> None:
    store.create_thread("t")
    with pytest.raises(InvalidInput, match="at most one"):
        store.append([msg("x")], response=ResponseInfo("m"), **anchors)  # type: ignore[arg-type]
    assert store.stats()["turns"] == 0


def test_append_outside_a_thread_needs_a_response(store: Store) -> None:
    a = store.append([msg("root")], response=ResponseInfo("m", output_count=0))
    with pytest.raises(InvalidInput, match="under a response"):
        store.append([msg("x")])
    with pytest.raises(InvalidInput, match="under a response"):
        store.append([msg("x")], after_turn=a.turn_ids[0])
    assert a.response is not None
    with pytest.raises(InvalidInput, match="under a response"):
        store.append([msg("x")], previous_response_id=a.response.id)
    assert store.stats()["turns"] == 1


def test_history_needs_exactly_one_anchor(store: Store) -> None:
    store.create_thread("t")
    with pytest.raises(InvalidInput, match="one of"):
        store.history()
    with pytest.raises(InvalidInput):
        store.history(thread="t", turn=missing_turn_id())


# ---- responses ---------------------------------------------------------------------------------


def test_response_fields(store: Store) -> None:
    store.create_thread("t")
    first = store.append([msg("before")], thread="t")
    info = ResponseInfo(
        "qwen3-8b",
        status="incomplete",
        output_count=2,
        prompt_tokens=11,
        completion_tokens=22,
        cached_tokens=3,
        error=None,
        metadata={"dialect": "openai"},
    )
    t_before = now_ms()
    a = store.append(
        [msg("q"), msg("tool call", "assistant"), msg("result", "tool")],
        thread="t",
        response=info,
    )
    r = a.response
    assert r is not None
    assert r.id.startswith("resp_")
    assert ID_RE.match(r.id.removeprefix("resp_"))
    expected = {
        "owner": "default",
        "status": "incomplete",
        "model": "qwen3-8b",
        "last_turn": a.turn_ids[-1],
        "parent_turn": first.turn_ids[-1],
        "input_count": 1,
        "output_count": 2,
        "thread_id": "t",
        "previous_response_id": None,
        "prompt_tokens": 11,
        "completion_tokens": 22,
        "cached_tokens": 3,
        "error": None,
        "metadata": {"dialect": "openai"},
    }
    assert_fields(r, expected)
    assert t_before - 5 <= r.created_ms <= now_ms() + 5
    got = store.get_response(r.id)
    assert_fields(got, {**expected, "id": r.id, "created_ms": r.created_ms})
    assert "Response(" in repr(got)
    assert contents(store.history(response=r.id)) == ["before", "q", "tool call", "result"]
    assert store.stats()["responses"] == 1


def test_response_defaults_and_root_conversation(store: Store) -> None:
    a = store.append(msgs("q", "a"), response=ResponseInfo("m"))
    r = a.response
    assert r is not None
    assert a.thread is None
    assert_fields(
        r,
        {
            "status": "completed",
            "input_count": 1,
            "output_count": 1,
            "parent_turn": None,
            "thread_id": None,
            "previous_response_id": None,
            "prompt_tokens": 0,
            "metadata": {},
            "error": None,
        },
    )
    h = store.history(response=r.id)
    assert contents(h) == ["q", "a"]
    assert h[0].parent_id is None
    assert store.stats()["threads"] == 0


def test_response_info_validation(store: Store) -> None:
    with pytest.raises(InvalidInput, match="invalid response status"):
        ResponseInfo("m", status="done")
    with pytest.raises(InvalidInput, match="output_count 3 exceeds"):
        store.append(msgs("a", "b"), response=ResponseInfo("m", output_count=3))
    with pytest.raises(OverflowError):
        ResponseInfo("m", output_count=-1)
    assert store.stats()["turns"] == 0
    a = store.append(msgs("a", "b"), response=ResponseInfo("m", output_count=2))
    assert a.response is not None
    assert (a.response.input_count, a.response.output_count) == (0, 2)


def test_branching_after_a_response(store: Store) -> None:
    store.create_thread("t")
    a = store.append(msgs("q1", "a1"), thread="t", response=ResponseInfo("m"))
    b = store.append(msgs("q2", "a2"), thread="t", response=ResponseInfo("m"))
    assert a.response is not None and b.response is not None
    left = store.append(
        msgs("left q", "left a"), previous_response_id=a.response.id, response=ResponseInfo("m")
    )
    right = store.append(
        msgs("right q", "right a"), previous_response_id=a.response.id, response=ResponseInfo("m")
    )
    assert left.response is not None and right.response is not None
    assert left.thread is None
    assert left.response.previous_response_id == a.response.id
    assert left.response.parent_turn == a.response.last_turn
    assert left.response.thread_id is None
    assert contents(store.history(response=left.response.id)) == ["q1", "a1", "left q", "left a"]
    assert contents(store.history(response=right.response.id)) == ["q1", "a1", "right q", "right a"]
    # The thread did not move; the branches share the first two turns, nothing is copied.
    assert contents(store.history(thread="t")) == ["q1", "a1", "q2", "a2"]
    assert store.get_thread("t").message_count == 4
    assert store.stats()["turns"] == 8
    lh = store.history(response=left.response.id)
    rh = store.history(response=right.response.id)
    assert [x.id for x in lh[:2]] == [x.id for x in rh[:2]] == a.turn_ids
    assert lh[2].depth == 3
    # Continue a branch further.
    deeper = store.append(
        [msg("deeper")],
        previous_response_id=left.response.id,
        response=ResponseInfo("m", output_count=0),
    )
    assert deeper.response is not None
    assert contents(store.history(response=deeper.response.id))[-2:] == ["left a", "deeper"]
    assert contents(store.history(response=right.response.id))[-1] == "right a"
    store.verify()


def test_branching_after_a_turn(store: Store) -> None:
    store.create_thread("t")
    a = store.append(msgs("1", "2", "3", "4"), thread="t")
    b = store.append([msg("2b")], after_turn=a.turn_ids[1], response=ResponseInfo("m"))
    assert b.response is not None
    assert b.response.parent_turn == a.turn_ids[1]
    assert b.response.previous_response_id is None
    assert contents(store.history(turn=b.turn_ids[0])) == ["1", "2", "2b"]
    assert contents(store.history(turn=a.turn_ids[2])) == ["1", "2", "3"]
    assert contents(store.history(thread="t")) == ["1", "2", "3", "4"]
    root = store.append([msg("new root")], response=ResponseInfo("m"))
    c = store.append(
        [msg("after root")], after_turn=root.turn_ids[0], response=ResponseInfo("m", output_count=0)
    )
    assert contents(store.history(turn=c.turn_ids[0])) == ["new root", "after root"]
    assert store.history(turn=c.turn_ids[0])[1].depth == 2
    store.verify()


def test_turn_anchor_errors(store: Store) -> None:
    store.create_thread("t")
    store.append([msg("x")], thread="t")
    before = snapshot(store)
    with pytest.raises(NotFound, match="turn"):
        store.append([msg("y")], after_turn=missing_turn_id(), response=ResponseInfo("m"))
    with pytest.raises(NotFound, match="turn"):
        store.history(turn=missing_turn_id())
    for bad in ("msg_short", "resp_" + "0" * 26, "msg_" + "u" * 26, "msg_" + "z" * 26, ""):
        with pytest.raises(InvalidInput, match="invalid turn id"):
            store.append([msg("y")], after_turn=bad, response=ResponseInfo("m"))
        with pytest.raises(InvalidInput, match="invalid turn id"):
            store.history(turn=bad)
    assert snapshot(store) == before


def test_turn_ids_are_case_insensitive(store: Store) -> None:
    store.create_thread("t")
    a = store.append([msg("x")], thread="t")
    upper = "msg_" + a.turn_ids[0][4:].upper()
    assert store.history(turn=upper)[0].id == a.turn_ids[0]


@pytest.mark.parametrize("bad", ["resp_x", "msg_" + "0" * 26, "resp_" + "u" * 26, "", "resp_"])
def test_invalid_response_ids(store: Store, bad: str) -> None:
    with pytest.raises(InvalidInput, match="invalid response id"):
        store.get_response(bad)
    with pytest.raises(InvalidInput, match="invalid response id"):
        store.delete_response(bad)
    with pytest.raises(InvalidInput, match="invalid response id"):
        store.history(response=bad)
    with pytest.raises(InvalidInput, match="invalid response id"):
        store.append([msg("x")], previous_response_id=bad, response=ResponseInfo("m"))


def test_missing_response(store: Store) -> None:
    rid = missing_response_id()
    for op in (
        lambda: store.get_response(rid),
        lambda: store.delete_response(rid),
        lambda: store.history(response=rid),
        lambda: store.append([msg("x")], previous_response_id=rid, response=ResponseInfo("m")),
    ):
        with pytest.raises(NotFound, match="not found"):
            op()
    assert store.stats()["turns"] == 0


def test_failed_response_is_not_an_anchor(store: Store) -> None:
    store.create_thread("t")
    a = store.append(
        msgs("q", "partial"),
        thread="t",
        response=ResponseInfo("m", status="failed", error="model crashed"),
    )
    assert a.response is not None
    failed = a.response.id
    got = store.get_response(failed)
    assert (got.status, got.error) == ("failed", "model crashed")
    assert contents(store.history(response=failed)) == ["q", "partial"]
    before = snapshot(store)
    with pytest.raises(StateConflict, match="failed"):
        store.append([msg("again")], previous_response_id=failed, response=ResponseInfo("m"))
    with pytest.raises(StateConflict, match="failed"):
        store.append(
            [msg("again")],
            previous_response_id=failed,
            response=ResponseInfo("m"),
            anchor_window=True,
        )
    assert snapshot(store) == before
    # Incomplete responses are anchors.
    b = store.append(
        [msg("cut off")], after_turn=a.turn_ids[0], response=ResponseInfo("m", status="incomplete")
    )
    assert b.response is not None
    c = store.append([msg("go on")], previous_response_id=b.response.id, response=ResponseInfo("m"))
    assert contents(store.history(response=c.response.id if c.response else "")) == [
        "q",
        "cut off",
        "go on",
    ]


def test_delete_response(store: Store) -> None:
    a = store.append(msgs("q", "a"), response=ResponseInfo("m"))
    assert a.response is not None
    b = store.append(
        msgs("q2", "a2"), previous_response_id=a.response.id, response=ResponseInfo("m")
    )
    assert b.response is not None
    assert store.stats()["turns"] == 4
    store.delete_response(a.response.id)
    with pytest.raises(NotFound):
        store.get_response(a.response.id)
    with pytest.raises(NotFound):
        store.delete_response(a.response.id)
    # b's history still reaches a's turns.
    assert contents(store.history(response=b.response.id)) == ["q", "a", "q2", "a2"]
    assert contents(store.history(turn=a.turn_ids[1])) == ["q", "a"]
    assert store.stats()["turns"] == 4
    store.verify()
    store.delete_response(b.response.id)
    assert store.stats() | {"file_bytes": 0, "map_bytes": 0} == {
        "threads": 0,
        "responses": 0,
        "turns": 0,
        "file_bytes": 0,
        "map_bytes": 0,
    }
    with pytest.raises(NotFound):
        store.history(turn=a.turn_ids[0])
    store.verify()


def test_delete_response_keeps_thread_turns(store: Store) -> None:
    store.create_thread("t")
    a = store.append(msgs("q", "a"), thread="t", response=ResponseInfo("m"))
    assert a.response is not None
    store.delete_response(a.response.id)
    assert contents(store.history(thread="t")) == ["q", "a"]
    assert store.stats()["turns"] == 2
    store.verify()


# ---- delete threads ----------------------------------------------------------------------------


def test_delete_thread_removes_its_turns(store: Store) -> None:
    store.create_thread("t", metadata={"a": 1})
    a = store.append(msgs("1", "2", "3"), thread="t")
    store.create_thread("other")
    store.append([msg("o")], thread="other")
    assert store.stats()["turns"] == 4
    store.delete_thread("t")
    with pytest.raises(NotFound):
        store.get_thread("t")
    with pytest.raises(NotFound):
        store.history(thread="t")
    with pytest.raises(NotFound):
        store.delete_thread("t")
    with pytest.raises(NotFound):
        store.history(turn=a.turn_ids[0])
    assert [t.id for t in store.list_threads().threads] == ["other"]
    assert store.stats()["threads"] == 1
    assert store.stats()["turns"] == 1
    store.verify()
    # The id is free again and starts empty.
    t = store.create_thread("t")
    assert (t.message_count, t.head, t.metadata) == (0, None, {})


@pytest.mark.parametrize("state", STATES)
def test_delete_thread_in_any_state(store: Store, state: str) -> None:
    store.create_thread("t")
    store.append([msg("x")], thread="t")
    put_in_state(store, "t", state)
    store.delete_thread("t")
    assert store.stats()["turns"] == 0
    store.verify()


def test_delete_thread_keeps_shared_turns(store: Store) -> None:
    store.create_thread("t")
    a = store.append(msgs("1", "2"), thread="t", response=ResponseInfo("m"))
    b = store.append(msgs("3", "4"), thread="t")
    c = store.append(msgs("5", "6"), thread="t")
    assert a.response is not None
    # A branch off turn "3" (held by its own response) and the response on "2".
    branch = store.append([msg("3x")], after_turn=b.turn_ids[0], response=ResponseInfo("m"))
    assert branch.response is not None
    assert store.stats()["turns"] == 7
    store.delete_thread("t")
    # "4", "5" and "6" were reachable only from the thread; "1", "2", "3" and "3x" survive.
    assert store.stats()["turns"] == 4
    assert contents(store.history(response=a.response.id)) == ["1", "2"]
    assert contents(store.history(response=branch.response.id)) == ["1", "2", "3", "3x"]
    for gone in (b.turn_ids[1], *c.turn_ids):
        with pytest.raises(NotFound):
            store.history(turn=gone)
    store.verify()
    store.delete_response(branch.response.id)
    assert store.stats()["turns"] == 2
    store.verify()
    store.delete_response(a.response.id)
    assert store.stats()["turns"] == 0
    store.verify()


def test_delete_one_of_two_threads_never_touches_the_other(store: Store) -> None:
    for name in ("a", "b"):
        store.create_thread(name)
        store.append(msgs(f"{name}1", f"{name}2"), thread=name)
    store.delete_thread("a")
    assert contents(store.history(thread="b")) == ["b1", "b2"]
    assert store.stats()["turns"] == 2
    store.verify()


# ---- the 10,000 message limit ------------------------------------------------------------------


@dataclass
class Full:
    store: Store
    ids: list[str]
    response: str


@pytest.fixture
def nearly_full(store: Store) -> Full:
    store.create_thread("big")
    a = store.append(
        [msg(f"m{i}") for i in range(MAX_MESSAGES - 2)],
        thread="big",
        response=ResponseInfo("m", output_count=1),
    )
    assert a.response is not None
    return Full(store, a.turn_ids, a.response.id)


def test_message_limit_on_a_thread(nearly_full: Full) -> None:
    store = nearly_full.store
    assert store.get_thread("big").message_count == MAX_MESSAGES - 2
    before = snapshot(store)
    with pytest.raises(LimitExceeded, match="at most 10000 messages; it has 9998 and 3 more"):
        store.append(msgs("a", "b", "c"), thread="big")
    assert snapshot(store) == before
    t = store.append(msgs("a", "b"), thread="big").thread
    assert t is not None
    assert t.message_count == MAX_MESSAGES
    before = snapshot(store)
    with pytest.raises(LimitExceeded):
        store.append([msg("one more")], thread="big")
    with pytest.raises(LimitExceeded):
        store.append([msg("one more")], thread="big", response=ResponseInfo("m"))
    with pytest.raises(LimitExceeded):
        store.append([msg("one more")], after_turn=t.head, response=ResponseInfo("m"))
    assert snapshot(store) == before
    h = store.history(thread="big")
    assert len(h) == MAX_MESSAGES
    assert h[-1].depth == MAX_MESSAGES
    store.verify()


def test_message_limit_on_branches(nearly_full: Full) -> None:
    store = nearly_full.store
    resp = nearly_full.response  # its last turn is at depth 9,998
    before = snapshot(store)
    with pytest.raises(LimitExceeded):
        store.append(msgs("a", "b", "c"), previous_response_id=resp, response=ResponseInfo("m"))
    with pytest.raises(LimitExceeded):
        store.append(
            msgs("a", "b", "c"), after_turn=nearly_full.ids[-1], response=ResponseInfo("m")
        )
    assert snapshot(store) == before
    ok = store.append(msgs("a", "b"), previous_response_id=resp, response=ResponseInfo("m"))
    assert ok.response is not None
    assert len(store.history(response=ok.response.id)) == MAX_MESSAGES
    # A branch lower down has room again.
    mid = store.append(
        [msg(str(i)) for i in range(11)],
        after_turn=nearly_full.ids[-12],
        response=ResponseInfo("m"),
    )
    assert len(mid.turn_ids) == 11
    assert store.get_thread("big").message_count == MAX_MESSAGES - 2
    store.verify()


# ---- anchors and retention ---------------------------------------------------------------------


def test_anchor_window(make_store: MakeStore) -> None:
    store = make_store(retention=Retention(anchor_window_s=0.3))
    a = store.append(msgs("q", "a"), response=ResponseInfo("m"))
    assert a.response is not None
    rid = a.response.id
    store.append(
        [msg("in time")], previous_response_id=rid, response=ResponseInfo("m"), anchor_window=True
    )
    time.sleep(0.45)
    before = snapshot(store)
    with pytest.raises(NotFound, match="window"):
        store.append(
            [msg("late")], previous_response_id=rid, response=ResponseInfo("m"), anchor_window=True
        )
    assert snapshot(store) == before
    # Without the window (other dialects) the anchor is still fine, and so are reads.
    store.append([msg("late ok")], previous_response_id=rid, response=ResponseInfo("m"))
    assert store.get_response(rid).id == rid


def test_thread_inactivity_expiry_and_sweep(make_store: MakeStore) -> None:
    store = make_store(retention=Retention(thread_inactivity_s=0.3))
    store.create_thread("t", metadata={"x": 1})
    a = store.append(msgs("1", "2", "3"), thread="t")
    store.create_thread("hidden", visible=False)
    time.sleep(0.45)
    for op in (
        lambda: store.get_thread("t"),
        lambda: store.history(thread="t"),
        lambda: store.append([msg("4")], thread="t"),
        lambda: store.update_thread("t", state="locked"),
        lambda: store.update_thread("t", metadata={"y": 2}),
        lambda: store.delete_thread("t"),
        lambda: store.get_thread("hidden"),
    ):
        with pytest.raises(NotFound):
            op()
    assert store.list_threads().threads == []
    assert store.list_threads(visible=False).threads == []
    # Expired but not yet swept: the records are still there, unreachable through the API.
    assert store.stats()["threads"] == 2
    assert store.stats()["turns"] == 3
    counts = store.sweep()
    assert counts == {"threads": 2, "responses": 0, "turns": 3}
    assert store.stats()["threads"] == 0
    assert store.stats()["turns"] == 0
    with pytest.raises(NotFound):
        store.history(turn=a.turn_ids[0])
    assert store.sweep() == {"threads": 0, "responses": 0, "turns": 0}
    store.verify()


def test_expired_thread_keeps_turns_of_live_responses(make_store: MakeStore) -> None:
    store = make_store(retention=Retention(thread_inactivity_s=0.2))
    store.create_thread("t")
    a = store.append(msgs("q", "a"), thread="t", response=ResponseInfo("m"))
    store.append(msgs("q2", "a2"), thread="t")
    assert a.response is not None
    time.sleep(0.3)
    with pytest.raises(NotFound):
        store.history(thread="t")
    assert store.get_response(a.response.id).thread_id == "t"
    assert store.sweep() == {"threads": 1, "responses": 0, "turns": 2}
    assert contents(store.history(response=a.response.id)) == ["q", "a"]
    cont = store.append(
        [msg("go on")], previous_response_id=a.response.id, response=ResponseInfo("m")
    )
    assert cont.response is not None
    assert contents(store.history(response=cont.response.id)) == ["q", "a", "go on"]
    store.verify()


def test_expired_thread_id_is_reused_only_by_an_explicit_create(make_store: MakeStore) -> None:
    store = make_store(retention=Retention(thread_inactivity_s=0.2))
    store.create_thread("t", metadata={"old": True})
    store.append(msgs("1", "2"), thread="t")
    time.sleep(0.3)
    # Create-if-missing does not revive it (a client would continue a thread that lost its
    # history); an explicit create reuses the id.
    with pytest.raises(NotFound, match="deleted or expired"):
        store.create_thread("t", exist_ok=True)
    t = store.create_thread("t")
    assert (t.metadata, t.message_count, t.head) == ({}, 0, None)
    assert store.stats()["turns"] == 0
    assert store.history(thread="t") == []
    assert store.create_thread("t", exist_ok=True).created_ms == t.created_ms
    store.verify()


def test_a_deleted_thread_id_is_not_revived_by_create_if_missing(store: Store) -> None:
    store.create_thread("t")
    store.append(msgs("1", "2"), thread="t")
    store.delete_thread("t")
    with pytest.raises(NotFound, match="deleted or expired"):
        store.create_thread("t", exist_ok=True)
    assert store.stats()["threads"] == 0
    store.create_thread("t", owner="other", exist_ok=True)  # owners have their own ids
    assert store.create_thread("t").message_count == 0
    # An empty thread had no history to lose: its id stays free.
    store.delete_thread("t")
    assert store.create_thread("t", exist_ok=True).message_count == 0
    store.verify()


def test_activity_keeps_a_thread_alive(make_store: MakeStore) -> None:
    store = make_store(retention=Retention(thread_inactivity_s=0.5))
    store.create_thread("t")
    time.sleep(0.3)
    store.append([msg("keepalive")], thread="t")
    time.sleep(0.3)
    assert store.get_thread("t").message_count == 1  # 0.6 s old, 0.3 s idle
    assert store.sweep()["threads"] == 0
    time.sleep(0.6)
    with pytest.raises(NotFound):
        store.get_thread("t")


def test_thread_max_age(make_store: MakeStore) -> None:
    store = make_store(retention=Retention(thread_max_age_s=0.6))
    store.create_thread("t")
    for _ in range(3):
        time.sleep(0.15)
        store.append([msg("busy")], thread="t")
    time.sleep(0.25)
    # Active 0.1 s ago, but older than the maximum age.
    with pytest.raises(NotFound):
        store.get_thread("t")
    assert store.sweep() == {"threads": 1, "responses": 0, "turns": 3}


def test_response_ttl(make_store: MakeStore) -> None:
    store = make_store(retention=Retention(response_ttl_s=0.3))
    store.create_thread("t")
    a = store.append(msgs("q", "a"), thread="t", response=ResponseInfo("m"))
    b = store.append(
        [msg("branch")], after_turn=a.turn_ids[0], response=ResponseInfo("m", output_count=0)
    )
    assert a.response is not None and b.response is not None
    time.sleep(0.45)
    for rid in (a.response.id, b.response.id):
        with pytest.raises(NotFound):
            store.get_response(rid)
        with pytest.raises(NotFound):
            store.history(response=rid)
        with pytest.raises(NotFound):
            store.append([msg("x")], previous_response_id=rid, response=ResponseInfo("m"))
        with pytest.raises(NotFound):
            store.delete_response(rid)
    # The thread is not expired and keeps its turns; the branch turn goes with its response.
    assert store.sweep() == {"threads": 0, "responses": 2, "turns": 1}
    assert contents(store.history(thread="t")) == ["q", "a"]
    assert store.stats()["responses"] == 0
    assert store.stats()["turns"] == 2
    store.verify()


# ---- content -----------------------------------------------------------------------------------


def test_reasoning_round_trip(store: Store) -> None:
    store.create_thread("t")
    store.append(
        [
            msg("q"),
            msg("answer", "assistant", reasoning="let me think\n<step>1</step>"),
            msg("empty reasoning", "assistant", reasoning=""),
            {"role": "assistant", "content": "explicit none", "reasoning": None},
        ],
        thread="t",
    )
    h = store.history(thread="t")
    assert [x.reasoning for x in h] == [None, "let me think\n<step>1</step>", "", None]


UNICODE = [
    "",
    "héllo wörld",
    "日本語のテキスト",
    "🧵🪡 emoji 👩‍👩‍👧‍👦 zwj",
    "עברית مرحبا",
    "e\u0301 combining",
    "nul \x00 inside",
    "\t\n\r\x0b\x0c",
    "\U0010ffff max code point",
    "x" * 100_000,
]


def test_unicode_round_trip(store: Store) -> None:
    store.create_thread("t")
    turns = [msg(text, reasoning=text[::-1]) for text in UNICODE]
    store.append(turns, thread="t")
    h = store.history(thread="t")
    assert contents(h) == UNICODE
    assert [x.reasoning for x in h] == [text[::-1] for text in UNICODE]


def test_history_turns_outlive_the_call(store: Store) -> None:
    store.create_thread("t")
    store.append(msgs("a", "b"), thread="t")
    h = store.history(thread="t")
    store.delete_thread("t")
    gc.collect()
    assert contents(h) == ["a", "b"]


# ---- map size ----------------------------------------------------------------------------------


@pytest.mark.lmdb_only
def test_map_grows(store_path: Path) -> None:
    store = Store(store_path, map_size=64 * 1024)
    assert store.stats()["map_bytes"] == 64 * 1024
    store.create_thread("t")
    chunk = "x" * 50_000
    for i in range(40):
        store.append([msg(f"{i}:{chunk}")], thread="t")
    assert store.stats()["map_bytes"] > 2 * 1024 * 1024
    h = store.history(thread="t")
    assert [x.content.split(":")[0] for x in h] == [str(i) for i in range(40)]
    # One append bigger than the whole map.
    store.append([msg("y" * 8_000_000)], thread="t")
    assert store.history(thread="t")[-1].content == "y" * 8_000_000
    store.verify()
    del store, h
    gc.collect()
    again = Store(store_path, map_size=64 * 1024)
    assert again.get_thread("t").message_count == 41


@pytest.mark.lmdb_only
def test_store_full(store_path: Path) -> None:
    store = Store(store_path, map_size=64 * 1024, max_map_size=512 * 1024)
    store.create_thread("t")
    chunk = "x" * 30_000
    before = snapshot(store)
    appended = 0
    with pytest.raises(StoreFull, match="maximum map size"):
        for _ in range(100):
            before = snapshot(store)
            store.append([msg(chunk)], thread="t")
            appended += 1
    assert 0 < appended < 100
    assert snapshot(store) == before
    assert store.get_thread("t").message_count == appended
    assert store.stats()["map_bytes"] == 512 * 1024
    store.verify()
    # Still usable: reads work and deletes free room.
    store.delete_thread("t")
    store.create_thread("t2")
    store.append([msg(chunk)], thread="t2")
    store.verify()


# ---- every error leaves the data unchanged -------------------------------------------------------


@dataclass
class World:
    store: Store
    head: str
    response: str
    failed: str
    branch_turn: str


@pytest.fixture
def world(store: Store) -> World:
    store.create_thread("open", metadata={"m": 1})
    a = store.append(msgs("q", "a"), thread="open", response=ResponseInfo("m"))
    store.create_thread("locked")
    store.append([msg("l")], thread="locked")
    store.update_thread("locked", state="locked")
    store.create_thread("archived")
    store.update_thread("archived", state="archived")
    store.create_thread("hidden", visible=False)
    f = store.append(
        [msg("f")], after_turn=a.turn_ids[0], response=ResponseInfo("m", status="failed")
    )
    store.create_thread("theirs", owner="bob")
    assert a.response is not None and f.response is not None and a.thread is not None
    assert a.thread.head is not None
    return World(store, a.thread.head, a.response.id, f.response.id, f.turn_ids[0])


R = ResponseInfo("m")
ERROR_CASES: list[tuple[str, Callable[[World], object], type[Exception]]] = [
    ("create duplicate", lambda w: w.store.create_thread("open"), StateConflict),
    ("create bad id", lambda w: w.store.create_thread("a b"), InvalidInput),
    ("create bad metadata", lambda w: w.store.create_thread("n", metadata="[]"), InvalidInput),
    (
        "create big metadata",
        lambda w: w.store.create_thread("n", metadata={"k": "x" * MAX_METADATA}),
        LimitExceeded,
    ),
    ("update missing", lambda w: w.store.update_thread("nope", state="open"), NotFound),
    ("update other owner", lambda w: w.store.update_thread("theirs", state="locked"), NotFound),
    ("unarchive", lambda w: w.store.update_thread("archived", state="open"), StateConflict),
    ("archived metadata", lambda w: w.store.update_thread("archived", metadata={}), StateConflict),
    ("bad state", lambda w: w.store.update_thread("open", state="gone"), InvalidInput),
    ("delete missing", lambda w: w.store.delete_thread("nope"), NotFound),
    ("delete other owner", lambda w: w.store.delete_thread("theirs"), NotFound),
    ("append locked", lambda w: w.store.append([msg("x")], thread="locked"), StateConflict),
    ("append archived", lambda w: w.store.append([msg("x")], thread="archived"), StateConflict),
    ("append missing", lambda w: w.store.append([msg("x")], thread="nope"), NotFound),
    ("append other owner", lambda w: w.store.append([msg("x")], thread="theirs"), NotFound),
    (
        "append stale head",
        lambda w: w.store.append([msg("x")], thread="open", expected_head=""),
        StateConflict,
    ),
    ("append bad role", lambda w: w.store.append([msg("x", "robot")], thread="open"), InvalidInput),
    (
        "append after failed",
        lambda w: w.store.append([msg("x")], previous_response_id=w.failed, response=R),
        StateConflict,
    ),
    (
        "append after missing response",
        lambda w: w.store.append(
            [msg("x")], previous_response_id=missing_response_id(), response=R
        ),
        NotFound,
    ),
    (
        "append after response of other owner",
        lambda w: w.store.append(
            [msg("x")], owner="bob", previous_response_id=w.response, response=R
        ),
        NotFound,
    ),
    (
        "append after missing turn",
        lambda w: w.store.append([msg("x")], after_turn=missing_turn_id(), response=R),
        NotFound,
    ),
    (
        "append after turn of other owner",
        lambda w: w.store.append([msg("x")], owner="bob", after_turn=w.head, response=R),
        NotFound,
    ),
    (
        "append without response",
        lambda w: w.store.append([msg("x")], after_turn=w.head),
        InvalidInput,
    ),
    (
        "append response metadata too big",
        lambda w: w.store.append(
            [msg("x")],
            thread="open",
            response=ResponseInfo("m", metadata={"k": "x" * MAX_METADATA}),
        ),
        LimitExceeded,
    ),
    (
        "append output_count too big",
        lambda w: w.store.append(
            [msg("x")], thread="open", response=ResponseInfo("m", output_count=2)
        ),
        InvalidInput,
    ),
    ("delete missing response", lambda w: w.store.delete_response(missing_response_id()), NotFound),
    (
        "delete response of other owner",
        lambda w: w.store.delete_response(w.response, owner="bob"),
        NotFound,
    ),
    ("list bad cursor", lambda w: w.store.list_threads(after="xyz"), InvalidInput),
]


@pytest.mark.parametrize(
    ("op", "error"), [(c[1], c[2]) for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_errors_change_nothing(
    world: World, op: Callable[[World], object], error: type[Exception]
) -> None:
    before = snapshot(world.store, owners=("default", "bob"))
    responses_before = {
        rid: world.store.get_response(rid).last_turn for rid in (world.response, world.failed)
    }
    with pytest.raises(error) as raised:
        op(world)
    assert type(raised.value) is error
    assert str(raised.value)  # every error says what was wrong
    assert snapshot(world.store, owners=("default", "bob")) == before
    assert {
        rid: world.store.get_response(rid).last_turn for rid in (world.response, world.failed)
    } == responses_before
    world.store.verify()


# ---- branches recorded for a thread ----------------------------------------------------------


def test_branches_are_recorded_per_thread_and_replaced(store: Store) -> None:
    store.create_thread("t")
    first = store.append(msgs("q", "a"), thread="t")
    off = store.append(
        [msg("other q"), msg("other a", "assistant")],
        after_turn=first.turn_ids[0],
        response=ResponseInfo("m"),
    )
    assert off.response is not None
    rewrite = store.append(msgs("new first", "reply"), response=ResponseInfo("m"))
    assert rewrite.response is not None
    store.add_branch("t", off.response.id, after_turn=first.turn_ids[0])
    store.add_branch("t", rewrite.response.id)
    assert sorted(store.branches("t")) == sorted(
        [(off.response.id, first.turn_ids[0]), (rewrite.response.id, None)]
    )
    # Continuing a branch replaces its record, in the same transaction.
    more = store.append(
        msgs("more", "sure"), previous_response_id=off.response.id, response=ResponseInfo("m")
    )
    assert more.response is not None
    store.add_branch("t", more.response.id, after_turn=off.turn_ids[-1], replaces=[off.response.id])
    assert sorted(store.branches("t")) == sorted(
        [(more.response.id, off.turn_ids[-1]), (rewrite.response.id, None)]
    )
    # Recording the same response again updates its record rather than adding one.
    store.add_branch("t", more.response.id, after_turn=first.turn_ids[0])
    assert len(store.branches("t")) == 2


def test_branch_records_are_the_owners_and_go_with_the_thread(make_store: MakeStore) -> None:
    store = make_store(retention=Retention(thread_inactivity_s=0.4))
    store.create_thread("t")
    store.create_thread("t", owner="bob")
    r = store.append(msgs("q", "a"), response=ResponseInfo("m"))
    assert r.response is not None
    store.add_branch("t", r.response.id)
    assert store.branches("t", owner="bob") == []
    with pytest.raises(NotFound):
        store.branches("missing")
    with pytest.raises(NotFound):
        store.add_branch("missing", r.response.id)
    with pytest.raises(InvalidInput):
        store.add_branch("t", "resp_bad")
    with pytest.raises(InvalidInput):
        store.add_branch("t", r.response.id, after_turn="msg_bad")
    # A thread deleted and made again under the same id starts with no branches.
    store.delete_thread("t")
    store.create_thread("t")
    assert store.branches("t") == []
    # An expired thread's records go at the sweep; a new thread of that id has none.
    store.add_branch("t", r.response.id)
    time.sleep(0.6)
    store.sweep()
    store.create_thread("t")
    assert store.branches("t") == []
    store.verify()


# ---- continuing a thread from the response at its head (issue 26) ------------------------------


def test_a_thread_append_continuing_its_head_response_records_it(store: Store) -> None:
    store.create_thread("t")
    first = store.append(msgs("q", "a"), thread="t", response=ResponseInfo("m", output_count=1))
    assert first.response is not None
    second = store.append(
        msgs("q2", "a2"),
        thread="t",
        previous_response_id=first.response.id,
        response=ResponseInfo("m", output_count=1),
    )
    assert second.response is not None and second.thread is not None
    assert second.thread.head == second.turn_ids[-1]
    stored = store.get_response(second.response.id)
    assert stored.previous_response_id == first.response.id
    assert stored.thread_id == "t"
    assert contents(store.history(thread="t")) == ["q", "a", "q2", "a2"]


def test_a_thread_append_continuing_an_older_response_is_refused(store: Store) -> None:
    store.create_thread("t")
    first = store.append(msgs("q", "a"), thread="t", response=ResponseInfo("m", output_count=1))
    store.append(msgs("q2", "a2"), thread="t")
    assert first.response is not None
    with pytest.raises(StateConflict, match="moved on"):
        store.append(
            msgs("q3"),
            thread="t",
            previous_response_id=first.response.id,
            response=ResponseInfo("m"),
        )
    with pytest.raises(NotFound):
        store.append(
            msgs("q3"), thread="t", previous_response_id=missing_response_id(), response=None
        )
    # Nothing was written by the refused appends.
    assert contents(store.history(thread="t")) == ["q", "a", "q2", "a2"]


def test_settle_pending_removes_the_record_with_the_append(store: Store) -> None:
    rid = new_response_id()
    kept = new_response_id()
    store.put_pending(rid, b"{}", owner="alice")
    store.put_pending(kept, b"{}", owner="alice")
    store.append(
        msgs("q", "a"),
        owner="alice",
        response=ResponseInfo("m", output_count=1, id=rid),
        settle_pending=True,
    )
    assert store.get_pending(rid, owner="alice") is None
    assert store.get_pending(kept, owner="alice") == b"{}"
    # A refused append leaves the record: the response is still to be stored.
    with pytest.raises(NotFound):
        store.append(
            msgs("q"),
            owner="alice",
            thread="missing",
            response=ResponseInfo("m", id=kept),
            settle_pending=True,
        )
    assert store.get_pending(kept, owner="alice") == b"{}"


def test_a_history_read_names_its_end_and_a_limit_that_is_not_negative(store: Store) -> None:
    """Both stores refuse alike (the core's rule), with InvalidInput, not a conversion error."""
    store.create_thread("t")
    store.append([{"role": "user", "content": "hi"}], thread="t")
    with pytest.raises(threadloom.errors.InvalidInput, match="give one of thread"):
        store.history()
    with pytest.raises(threadloom.errors.InvalidInput, match="must not be negative"):
        store.history(thread="t", limit=-1)
    assert store.history(thread="t", limit=0) == []
    assert [t.content for t in store.history(thread="t", limit=1)] == ["hi"]
