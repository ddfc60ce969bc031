"""`Store.rebase_thread` (moving a thread's head to a new path) and tool data on turns, on both
backends: same results, same errors, nothing changed by a refused call."""

from __future__ import annotations

import json

import pytest
import threadloom
from support import contents, msg, msgs, snapshot
from threadloom import ResponseInfo, Store
from threadloom.errors import InvalidInput, NotFound, StateConflict
from threadloom.models import default_model_path
from threadloom.storage import assemble

CALL = json.dumps(
    {"type": "function_call", "call_id": "c1", "name": "add", "arguments": '{"a":1}'},
    separators=(",", ":"),
)
RESULT = '{"type":"function_call_output","call_id":"c1"}'


def conversation(store: Store) -> tuple[str, str, list[str]]:
    """Thread "t": u1 a1 (response one) u2 a2 (response two); the responses and turn ids."""
    store.create_thread("t")
    one = store.append(msgs("u1", "a1"), thread="t", response=ResponseInfo("m"))
    two = store.append(msgs("u2", "a2"), thread="t", response=ResponseInfo("m"))
    assert one.response is not None and two.response is not None
    return one.response.id, two.response.id, [*one.turn_ids, *two.turn_ids]


def test_rebase_drops_a_middle_turn_and_responses_keep_theirs(store: Store) -> None:
    one, two, ids = conversation(store)
    t = store.rebase_thread("t", msgs("u2", "a2"), after_turn=ids[0], expected_head=ids[3])
    assert t.message_count == 3 and t.head not in ids
    path = store.history(thread="t")
    assert contents(path) == ["u1", "u2", "a2"]
    assert path[0].id == ids[0] and path[1].parent_id == ids[0]
    assert contents(store.history(response=one)) == ["u1", "a1"]
    assert contents(store.history(response=two)) == ["u1", "a1", "u2", "a2"]
    assert store.stats()["turns"] == 6
    store.verify()
    store.delete_response(two)
    store.delete_response(one)
    assert store.stats()["turns"] == 3
    store.verify()


def test_rebase_without_turns_pops_and_empties(store: Store) -> None:
    store.create_thread("t")
    ids = store.append(msgs("u1", "a1"), thread="t").turn_ids
    t = store.rebase_thread("t", after_turn=ids[0])
    assert (t.head, t.message_count) == (ids[0], 1)
    assert store.stats()["turns"] == 1
    t = store.rebase_thread("t", [], expected_head=ids[0])
    assert (t.head, t.message_count) == (None, 0)
    assert store.history(thread="t") == [] and store.stats()["turns"] == 0
    t = store.rebase_thread("t", msgs("x"), expected_head="")
    assert contents(store.history(thread="t")) == ["x"]
    store.verify()


def test_rebase_refusals_change_nothing(store: Store) -> None:
    _, _, ids = conversation(store)
    store.create_thread("b", owner="bob")
    before = snapshot(store, ("default", "bob"))
    with pytest.raises(StateConflict, match="moved on"):
        store.rebase_thread("t", after_turn=ids[0], expected_head=ids[1])
    with pytest.raises(NotFound):
        store.rebase_thread("t", owner="bob", after_turn=ids[0])
    with pytest.raises(NotFound):  # another owner's turn is no base
        store.rebase_thread("b", owner="bob", after_turn=ids[0])
    with pytest.raises(InvalidInput, match=r"turns\[0\].tool"):
        store.rebase_thread("t", [{"role": "user", "content": "x", "tool": "[1]"}])
    assert snapshot(store, ("default", "bob")) == before
    store.update_thread("t", state="locked")
    with pytest.raises(StateConflict, match="locked"):
        store.rebase_thread("t", after_turn=ids[0])
    store.update_thread("t", state="archived")
    with pytest.raises(StateConflict, match="archived"):
        store.rebase_thread("t", after_turn=ids[0])
    assert store.stats()["turns"] == before["turns"]
    assert store.get_thread("t").head == ids[3]
    store.verify()


def test_tool_data_round_trips(store: Store) -> None:
    store.create_thread("t")
    turns = [
        msg("what is 1+1?"),
        {"role": "assistant", "content": "", "tool": CALL},
        {"role": "tool", "content": "2", "tool": RESULT},
        msg("It is 2.", "assistant"),
    ]
    store.append(turns, thread="t")
    path = store.history(thread="t")
    assert [t.tool for t in path] == [None, CALL, RESULT, None]
    assert [t.role for t in path] == ["user", "assistant", "tool", "assistant"]
    # Copies keep it (what a rebase writes again).
    store.rebase_thread(
        "t",
        [{"role": t.role, "content": t.content, "tool": t.tool} for t in path[2:]],
        after_turn=path[1].id,
    )
    assert [t.tool for t in store.history(thread="t")] == [None, CALL, RESULT, None]
    for bad in ("{", "[1]", '"x"'):
        with pytest.raises(InvalidInput, match=r"turns\[0\]\.tool"):
            store.append([{"role": "user", "content": "x", "tool": bad}], thread="t")
    with pytest.raises(InvalidInput, match=r"turns\[0\]\.tool must be a string"):
        store.append([{"role": "user", "content": "x", "tool": 1}], thread="t")  # type: ignore[dict-item]
    store.verify()


def test_tool_data_reaches_the_chat_template(store: Store) -> None:
    """Assembly (from either store, and stateless) renders a stored call as the assistant's
    `tool_calls` and a result's call id as `tool_call_id`, OpenAI's chat format, which the
    templates read; arguments that are JSON arrive parsed."""
    try:
        path = default_model_path()
    except threadloom.errors.ModelNotInstalled as e:
        pytest.skip(str(e))
    template = (
        "{% for m in messages %}{{ m.role }}:{{ m.content }}"
        "{% for c in m.tool_calls or [] %}<call {{ c.id }} {{ c.function.name }} "
        "{{ c.function.arguments.a }}>{% endfor %}"
        "{% if m.tool_call_id %}<for {{ m.tool_call_id }}>{% endif %}|{% endfor %}"
    )
    engine = threadloom.PromptEngine.from_gguf(path, chat_template=template)
    store.create_thread("t")
    turns = [
        msg("q"),
        {"role": "assistant", "content": "", "tool": CALL},
        {"role": "tool", "content": "2", "tool": RESULT},
    ]
    store.append(turns, thread="t")
    expected = "user:q|assistant:<call c1 add 1>|tool:2<for c1>|user:next|"
    stored = assemble(engine, store, [msg("next")], thread="t", add_generation_prompt=False)
    assert stored.prompt.endswith(expected), stored.prompt
    stateless = engine.assemble_messages([*turns, msg("next")], add_generation_prompt=False)
    assert stateless.prompt.endswith(expected), stateless.prompt
