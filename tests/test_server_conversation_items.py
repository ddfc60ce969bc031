"""Conversation items beyond messages, through the official `openai` SDK and `openai-agents`
against a real server (scripted backend) on both stores: `function_call` and
`function_call_output` items stored and replayed as the SDK's types, and deleting an item (the
conversation moves to a new path without it; responses keep theirs)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

openai = pytest.importorskip("openai")

from server_support import (  # noqa: E402
    ThreadedServer,
    echo_server,
    sdk_client,
)
from support import BACKENDS  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CALL = {"type": "function_call", "call_id": "call_1", "name": "add", "arguments": '{"a": 1}'}
OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "2"}


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[ThreadedServer]:
    with echo_server(request.param, tmp_path_factory.mktemp("items"), 0.0) as s:
        yield s


def texts(client: Any, conv_id: str) -> list[str]:
    items = client.conversations.items.list(conv_id, order="asc", limit=100).data
    return [i.content[0].text if i.type == "message" else i.type for i in items]


def test_function_call_items_round_trip(server: ThreadedServer) -> None:
    client = sdk_client(server)
    conv = client.conversations.create(
        items=[{"role": "user", "content": "What is 1 + 1?"}, CALL, OUTPUT]
    )
    listed = client.conversations.items.list(conv.id, order="asc").data
    assert [i.type for i in listed] == ["message", "function_call", "function_call_output"]
    call, output = listed[1], listed[2]
    assert type(call).__name__ == "ResponseFunctionToolCallItem"
    assert (call.call_id, call.name, call.arguments, call.status) == (
        "call_1",
        "add",
        '{"a": 1}',
        "completed",
    )
    assert type(output).__name__ == "ResponseFunctionToolCallOutputItem"
    assert (output.call_id, output.output, output.status) == ("call_1", "2", "completed")
    assert call.id.startswith("msg_") and output.id.startswith("msg_")
    again = client.conversations.items.retrieve(call.id, conversation_id=conv.id)
    assert again.model_dump() == call.model_dump()
    # Appended items, and a list output, come back the same way.
    added = client.conversations.items.create(
        conv.id,
        items=[
            {**CALL, "call_id": "call_2", "status": "incomplete"},
            {
                "type": "function_call_output",
                "call_id": "call_2",
                "output": [{"type": "input_text", "text": "3"}],
            },
        ],
    ).data
    assert [(i.type, i.call_id, i.status) for i in added] == [
        ("function_call", "call_2", "incomplete"),
        ("function_call_output", "call_2", "completed"),
    ]
    assert added[1].output == "3"
    # A response continues the conversation; its input items may be function calls too.
    r = client.responses.create(model="default", input="And 2 + 1?", conversation=conv.id)
    assert r.output_text == "[What is 1 + 1? | And 2 + 1?]"
    r2 = client.responses.create(
        model="default",
        input=[{**CALL, "call_id": "call_3"}, {**OUTPUT, "call_id": "call_3"}],
        previous_response_id=r.id,
    )
    inputs = client.responses.input_items.list(r2.id, order="asc").data
    assert [(i.type, i.call_id) for i in inputs] == [
        ("function_call", "call_3"),
        ("function_call_output", "call_3"),
    ]


def test_unsupported_and_malformed_items_name_the_field(server: ThreadedServer) -> None:
    client = sdk_client(server)
    conv = client.conversations.create()
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": []}
    cases = [
        (lambda: client.conversations.create(items=[reasoning]), "items[0].type"),
        (
            lambda: client.conversations.items.create(conv.id, items=[OUTPUT, reasoning]),
            "items[1].type",
        ),
        (
            lambda: client.responses.create(model="default", input=[reasoning]),
            "input[0].type",
        ),
        (
            lambda: client.conversations.items.create(
                conv.id, items=[{"type": "function_call", "name": "f", "arguments": "{}"}]
            ),
            "items[0].call_id",
        ),
        (
            lambda: client.conversations.items.create(conv.id, items=[{**CALL, "output": "x"}]),
            "items[0].output",
        ),
    ]
    for call, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            call()
        assert e.value.body["param"] == param, e.value.body
    assert client.conversations.items.list(conv.id).data == []


def test_deleting_an_item_moves_the_conversation_to_a_new_path(server: ThreadedServer) -> None:
    client = sdk_client(server)
    conv = client.conversations.create()
    one = client.responses.create(model="default", input="one", conversation=conv.id)
    two = client.responses.create(model="default", input="two", conversation=conv.id)
    assert texts(client, conv.id) == ["one", "[one]", "two", "[one | two]"]
    before = client.conversations.items.list(conv.id, order="asc").data
    # A middle item: the later ones come back under new ids.
    answer = client.conversations.items.delete(before[1].id, conversation_id=conv.id)
    assert answer.id == conv.id and answer.object == "conversation"
    after = client.conversations.items.list(conv.id, order="asc").data
    assert texts(client, conv.id) == ["one", "two", "[one | two]"]
    assert after[0].id == before[0].id and after[1].id != before[2].id
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(before[1].id, conversation_id="nope")
    # The responses keep the turns they reached.
    assert [i.content[0].text for i in client.responses.input_items.list(one.id).data] == ["one"]
    assert client.responses.retrieve(two.id).output_text == "[one | two]"
    # The next response sees the new path; the newest item pops.
    r = client.responses.create(model="default", input="three", conversation=conv.id)
    assert r.output_text == "[one | two | three]"
    newest = client.conversations.items.list(conv.id, limit=1).data[0]
    client.conversations.items.delete(newest.id, conversation_id=conv.id)
    assert texts(client, conv.id) == ["one", "two", "[one | two]", "three"]
    # Errors: an item not on the path, another tenant, a locked conversation.
    with pytest.raises(openai.NotFoundError) as e:
        client.conversations.items.delete(before[1].id, conversation_id=conv.id)
    assert e.value.body["param"] == "item_id"
    with pytest.raises(openai.NotFoundError) as e:
        sdk_client(server, "key-bob").conversations.items.delete(
            after[0].id, conversation_id=conv.id
        )
    assert e.value.body["param"] == "conversation_id"
    client.patch(f"/threads/{conv.id}", body={"state": "locked"}, cast_to=object)
    with pytest.raises(openai.ConflictError):
        client.conversations.items.delete(after[0].id, conversation_id=conv.id)
    assert texts(client, conv.id) == ["one", "two", "[one | two]", "three"]
    # Every item can go; the conversation is then empty.
    client.patch(f"/threads/{conv.id}", body={"state": "open"}, cast_to=object)
    for _ in range(4):
        newest = client.conversations.items.list(conv.id, limit=1).data[0]
        client.conversations.items.delete(newest.id, conversation_id=conv.id)
    assert client.conversations.items.list(conv.id).data == []


def test_an_agents_sdk_session_pops_items(server: ThreadedServer) -> None:
    """openai-agents: `OpenAIConversationsSession.pop_item()` (what `/undo`-style agent loops
    call) and function-call items kept in the session."""
    agents = pytest.importorskip("agents")
    from agents.memory import OpenAIConversationsSession

    agents.set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="key-alice", max_retries=0)
    model = agents.OpenAIResponsesModel(model="default", openai_client=client)
    agent = agents.Agent(name="echo", instructions="Be brief.", model=model)

    async def run() -> tuple[list[Any], list[str], list[Any]]:
        session = OpenAIConversationsSession(openai_client=client)
        outputs = []
        for text in ("one", "two"):
            outputs.append((await agents.Runner.run(agent, text, session=session)).final_output)
        popped = [await session.pop_item(), await session.pop_item()]
        outputs.append((await agents.Runner.run(agent, "three", session=session)).final_output)
        await session.add_items([CALL, OUTPUT])  # type: ignore[list-item]
        items = await session.get_items()
        return popped, outputs, items

    popped, outputs, items = asyncio.run(run())
    assert popped[0] is not None and popped[0]["content"][0]["text"] == "[one | two]"
    assert popped[1] is not None and popped[1]["content"][0]["text"] == "two"
    # The popped turn is gone from the memory the next run read.
    assert outputs == ["[one]", "[one | two]", "[one | three]"]
    assert [i.get("type") for i in items[-2:]] == ["function_call", "function_call_output"]
    assert items[-2]["call_id"] == "call_1" and items[-1]["output"] == "2"
