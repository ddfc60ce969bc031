"""The Conversations API through the official `openai` SDK against a real server (scripted
backend): a conversation is a thread, reachable from every dialect."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

openai = pytest.importorskip("openai")

from server_support import ThreadedServer, keyed_scripted_app, sdk_client  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    s = ThreadedServer(lambda: keyed_scripted_app(tmp_path_factory.mktemp("conv"))).start()
    yield s
    s.stop()


def test_create_read_update_delete(server: ThreadedServer) -> None:
    client = sdk_client(server)
    conv = client.conversations.create(
        items=[{"type": "message", "role": "user", "content": "Hello"}], metadata={"topic": "x"}
    )
    assert conv.object == "conversation" and conv.metadata == {"topic": "x"}
    assert client.conversations.retrieve(conv.id).id == conv.id
    updated = client.conversations.update(conv.id, metadata={"topic": "y"})
    assert updated.metadata == {"topic": "y"}
    items = client.conversations.items.list(conv.id)
    assert [i.content[0].text for i in items.data] == ["Hello"]
    deleted = client.conversations.delete(conv.id)
    assert deleted.deleted and deleted.object == "conversation.deleted"
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)


def test_responses_continue_a_conversation_and_items_page_both_ways(
    server: ThreadedServer,
) -> None:
    client = sdk_client(server)
    conv = client.conversations.create()
    for text in ("one", "two", "three"):
        r = client.responses.create(model="default", input=text, conversation=conv.id)
        assert r.conversation is not None and r.conversation.id == conv.id
    # The model saw the conversation's earlier items.
    assert r.output_text == "[one | two | three]"
    newest = client.conversations.items.list(conv.id, limit=2)
    assert [i.role for i in newest.data] == ["assistant", "user"] and newest.has_more
    assert newest.data[1].content[0].text == "three"
    older = client.conversations.items.list(conv.id, limit=2, after=newest.last_id)
    assert [i.content[0].text for i in older.data] == ["[one | two]", "two"]
    asc = client.conversations.items.list(conv.id, order="asc", limit=10)
    assert [i.content[0].text for i in asc.data][:2] == ["one", "[one]"] and not asc.has_more
    first = client.conversations.items.retrieve(asc.data[0].id, conversation_id=conv.id)
    assert first.content[0].text == "one"
    added = client.conversations.items.create(
        conv.id, items=[{"type": "message", "role": "user", "content": "four"}]
    )
    assert [i.content[0].text for i in added.data] == ["four"]
    # The same conversation is a thread to the other dialects.
    r = client.responses.create(model="default", input="five", conversation={"id": conv.id})
    assert r.output_text == "[one | two | three | four | five]"


def test_errors(server: ThreadedServer) -> None:
    alice, bob = sdk_client(server), sdk_client(server, "key-bob")
    conv = alice.conversations.create()
    with pytest.raises(openai.NotFoundError):
        bob.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model="default", input="x", conversation=conv.id)
    first = alice.responses.create(model="default", input="hi")
    with pytest.raises(openai.BadRequestError) as e:
        alice.responses.create(
            model="default", input="x", conversation=conv.id, previous_response_id=first.id
        )
    assert e.value.body["param"] == "conversation"
    with pytest.raises(openai.BadRequestError):
        alice.conversations.items.create(
            conv.id, items=[{"type": "message", "role": "user", "content": "x"}] * 21
        )
    with pytest.raises(openai.BadRequestError):
        alice.conversations.create(metadata={str(i): "v" for i in range(17)})
    listed = alice.conversations.items.list(conv.id)
    assert listed.data == []
    # Beyond OpenAI: listing a tenant's conversations.
    mine = alice.get("/conversations", cast_to=object, options={"params": {"limit": 100}})
    theirs = bob.get("/conversations", cast_to=object, options={"params": {"limit": 100}})
    assert conv.id in [c["id"] for c in mine["data"]]
    assert conv.id not in [c["id"] for c in theirs["data"]]


def test_an_agents_sdk_agent_keeps_its_memory_in_a_conversation(server: ThreadedServer) -> None:
    """openai-agents: OpenAIConversationsSession + OpenAIResponsesModel on a client pointed at
    the server; three turns; the memory is the server's conversation."""
    agents = pytest.importorskip("agents")
    from agents.memory import OpenAIConversationsSession

    agents.set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="key-alice", max_retries=0)
    model = agents.OpenAIResponsesModel(model="default", openai_client=client)
    agent = agents.Agent(name="echo", instructions="Be brief.", model=model)

    async def run() -> tuple[list[str], str]:
        session = OpenAIConversationsSession(openai_client=client)
        outputs = []
        for text in ("one", "two", "three"):
            result = await agents.Runner.run(agent, text, session=session)
            outputs.append(result.final_output)
        return outputs, await session._get_session_id()

    import asyncio

    outputs, conv_id = asyncio.run(run())
    # Each turn's prompt held the earlier turns: they came from the conversation.
    assert outputs == ["[one]", "[one | two]", "[one | two | three]"]
    items = sdk_client(server).conversations.items.list(conv_id, order="asc", limit=100)
    texts = [i.content[0].text for i in items.data]
    assert texts == ["one", "[one]", "two", "[one | two]", "three", "[one | two | three]"]


def test_an_agents_sdk_agent_chains_previous_response_id(server: ThreadedServer) -> None:
    agents = pytest.importorskip("agents")
    import asyncio

    agents.set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="key-alice", max_retries=0)
    model = agents.OpenAIResponsesModel(model="default", openai_client=client)
    agent = agents.Agent(name="echo", instructions="Be brief.", model=model)

    async def run() -> list[str]:
        first = await agents.Runner.run(agent, "one")
        second = await agents.Runner.run(agent, "two", previous_response_id=first.last_response_id)
        third = await agents.Runner.run(
            agent, "three", previous_response_id=second.last_response_id
        )
        return [first.final_output, second.final_output, third.final_output]

    assert asyncio.run(run()) == ["[one]", "[one | two]", "[one | two | three]"]


def test_background_responses_are_polled_and_cancelled(server: ThreadedServer) -> None:
    import time

    client = sdk_client(server)
    quick = client.responses.create(model="default", input="bg", background=True)
    assert quick.background and quick.status in ("in_progress", "queued")
    for _ in range(200):
        polled = client.responses.retrieve(quick.id)
        if polled.status != "in_progress":
            break
        time.sleep(0.01)
    assert polled.status == "completed" and polled.output_text == "[bg]"
    long = client.responses.create(
        model="default", input="long:100000", background=True, max_output_tokens=8000
    )
    cancelled = client.responses.cancel(long.id)
    assert cancelled.id == long.id and cancelled.status == "incomplete"
    # Stopped part way, and stored by the time the cancel answered.
    assert cancelled.usage is not None and 0 < cancelled.usage.output_tokens < 8000
    assert client.responses.retrieve(long.id).status == "incomplete"
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(quick.id)  # finished: nothing to cancel
    with pytest.raises(openai.NotFoundError):
        sdk_client(server, "key-bob").responses.cancel(long.id)
