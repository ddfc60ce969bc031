"""A thread's branch tree read from the store's branch records, and the hidden registry threads
of earlier versions adopted into them."""

from __future__ import annotations

from support import msg, msgs
from threadloom import ResponseInfo, Store, branches


def test_tree_holds_the_thread_and_its_recorded_branches(store: Store) -> None:
    store.create_thread("t")
    line = store.append(msgs("q", "a"), thread="t")
    off = store.append(
        [msg("q2")], after_turn=line.turn_ids[0], response=ResponseInfo("m", output_count=0)
    )
    assert off.response is not None
    branches.register(store, "default", "t", off.response.id, line.turn_ids[0])
    tree = branches.build(store, "default", "t", None)
    by_id = {n.turn.id: n for n in tree.nodes}
    assert set(by_id) == {*line.turn_ids, *off.turn_ids}
    assert by_id[line.turn_ids[0]].children == [line.turn_ids[1], off.turn_ids[0]]
    assert by_id[off.turn_ids[0]].response_id == off.response.id
    assert not by_id[off.turn_ids[0]].on_thread and by_id[line.turn_ids[1]].on_thread


def test_a_legacy_registry_thread_is_adopted_and_removed(store: Store) -> None:
    t = store.create_thread("t")
    line = store.append(msgs("q", "a"), thread="t")
    off = store.append(
        [msg("q2")], after_turn=line.turn_ids[0], response=ResponseInfo("m", output_count=0)
    )
    assert off.response is not None
    legacy = branches.legacy_registry_id("t")
    store.create_thread(
        legacy,
        visible=False,
        metadata={
            "threadloom_branches_of": "t",
            "thread_created_ms": t.created_ms,
            "branches": [[off.response.id, line.turn_ids[0]], ["resp_bad", None]],
        },
    )
    tree = branches.build(store, "default", "t", None)
    assert off.turn_ids[0] in {n.turn.id for n in tree.nodes}
    assert store.branches("t") == [(off.response.id, line.turn_ids[0])]
    assert store.list_threads(visible=False).threads == []
    # A registry of an earlier thread under the same id is dropped without adopting it.
    store.create_thread(
        legacy,
        visible=False,
        metadata={
            "threadloom_branches_of": "t",
            "thread_created_ms": 1,
            "branches": [["resp_x", None]],
        },
    )
    branches.build(store, "default", "t", None)
    assert store.list_threads(visible=False).threads == []
    assert store.branches("t") == [(off.response.id, line.turn_ids[0])]


def test_tree_holds_branches_nobody_recorded(store: Store) -> None:
    """A continuation of any of the thread's turns (here after a turn, as the Responses API's
    `previous_response_id` of an older response stores it) is in the tree through the store's
    children index, with its own continuations."""
    store.create_thread("t")
    line = store.append(msgs("q", "a"), thread="t")
    off = store.append(
        msgs("q2", "a2"), after_turn=line.turn_ids[1], response=ResponseInfo("m", output_count=1)
    )
    deeper = store.append(
        [msg("q3")], after_turn=off.turn_ids[1], response=ResponseInfo("m", output_count=0)
    )
    assert store.children([line.turn_ids[1], line.turn_ids[0]]) == [
        [off.turn_ids[0]],
        [line.turn_ids[1]],
    ]
    assert store.children([line.turn_ids[1]], owner="other") == [[]]
    assert store.children([]) == []
    tree = branches.build(store, "default", "t", None)
    by_id = {n.turn.id: n for n in tree.nodes}
    assert set(by_id) == {*line.turn_ids, *off.turn_ids, *deeper.turn_ids}
    assert by_id[line.turn_ids[1]].children == [off.turn_ids[0]]
    assert by_id[off.turn_ids[1]].children == deeper.turn_ids
    assert tree.roots == [line.turn_ids[0]]
    # The turns go with the response that held them, and so do their index entries.
    assert deeper.response is not None
    store.delete_response(deeper.response.id)
    assert store.children([off.turn_ids[1]]) == [[]]
    tree = branches.build(store, "default", "t", None)
    assert {n.turn.id for n in tree.nodes} == {*line.turn_ids, *off.turn_ids}
