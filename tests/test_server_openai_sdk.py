"""The official `openai` SDK, unchanged, against a real server on loopback (run by an event
loop in a background thread) with the scripted backend."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("aiohttp")
openai = pytest.importorskip("openai")

from server_support import ThreadedServer, config, keyed_scripted_app, sdk_client  # noqa: E402
from threadloom.server.app import init_app  # noqa: E402

STREAM_ORDER_HEAD = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
STREAM_ORDER_TAIL = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def sdk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    tmp = tmp_path_factory.mktemp("sdk")
    server = ThreadedServer(lambda: keyed_scripted_app(tmp)).start()
    yield server
    server.stop()


def test_openai_sdk_round_trip(sdk_server: ThreadedServer) -> None:
    client = sdk_client(sdk_server)
    [model] = client.models.list().data
    first = client.responses.create(model=model.id, input="My name is Alice.")
    assert first.status == "completed" and first.output_text == "[My name is Alice.]"
    assert first.usage is not None and first.usage.total_tokens > 0
    second = client.responses.create(
        model=model.id,
        previous_response_id=first.id,
        input=[{"role": "user", "content": "What is my name?"}],
        instructions="Answer briefly.",
        max_output_tokens=64,
        temperature=0.0,
        metadata={"session": "s1"},
    )
    assert second.output_text == "[My name is Alice. | What is my name?]"
    assert second.previous_response_id == first.id and second.metadata == {"session": "s1"}
    got = client.responses.retrieve(second.id)
    assert got.output_text == second.output_text and got.status == "completed"
    items = client.responses.input_items.list(second.id, order="asc")
    assert [(i.role, i.content[0].text) for i in items.data] == [
        ("system", "Answer briefly."),
        ("user", "What is my name?"),
    ]
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)


def test_openai_sdk_streaming(sdk_server: ThreadedServer) -> None:
    client = sdk_client(sdk_server)
    first = client.responses.create(model="default", input="one")
    events = list(
        client.responses.create(
            model="default", input="two", previous_response_id=first.id, stream=True
        )
    )
    types = [e.type for e in events]
    assert types[:4] == STREAM_ORDER_HEAD and types[-4:-1] == STREAM_ORDER_TAIL
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "[one | two]"
    final = events[-1].response
    assert final.output_text == deltas
    assert client.responses.retrieve(final.id).output_text == deltas


def test_openai_sdk_errors(sdk_server: ThreadedServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk_client(sdk_server, key="wrong").responses.create(model="default", input="x")
    client = sdk_client(sdk_server)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="default", input="x", max_output_tokens=-5)
    assert info.value.body["param"] == "max_output_tokens"  # type: ignore[index]
    mine = client.responses.create(model="default", input="x")
    with pytest.raises(openai.NotFoundError):
        sdk_client(sdk_server, key="key-bob").responses.retrieve(mine.id)


def test_openai_sdk_chat_completions(sdk_server: ThreadedServer) -> None:
    client = sdk_client(sdk_server)
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "again"},
    ]
    done = client.chat.completions.create(model="default", messages=messages, max_tokens=32)
    assert done.choices[0].message.content == "[hello | again]"
    assert done.choices[0].finish_reason == "stop" and done.usage.total_tokens > 0
    stream = client.chat.completions.create(
        model="default", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "[hello | again]"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="default", messages=[])


# ---- the real model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    pytest.importorskip("ctransformers")
    from threadloom.errors import ModelNotInstalled
    from threadloom.models import default_model_path

    try:
        default_model_path()
    except ModelNotInstalled as err:
        pytest.skip(str(err))
    tmp = tmp_path_factory.mktemp("sdk-model")
    cfg = config(tmp, cache_dir=str(tmp / "cache"), slots=1, context_length=1024)
    server = ThreadedServer(lambda: init_app(cfg)).start()
    yield server
    server.stop()


def test_real_model_responses_chain_stream_and_chat(model_server: ThreadedServer) -> None:
    client = sdk_client(model_server)
    system = "You are a helpful assistant."
    first = client.responses.create(
        model="default",
        instructions=system,
        input="What is the capital of France?",
        max_output_tokens=12,
    )
    assert "Paris" in first.output_text
    # Turn 2 is streamed and continues turn 1: the stream's first event names the stored id.
    events = list(
        client.responses.create(
            model="default",
            input="And of Italy?",
            previous_response_id=first.id,
            max_output_tokens=12,
            stream=True,
        )
    )
    created, done = events[0], events[-1]
    assert created.type == "response.created" and done.type in (
        "response.completed",
        "response.incomplete",
    )
    assert created.response.id == done.response.id
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == done.response.output_text
    stored = client.responses.retrieve(done.response.id)
    assert stored.previous_response_id == first.id and stored.output_text == text
    # The second prompt held the first turn, which the slot had already evaluated.
    assert stored.usage is not None and stored.usage.input_tokens > first.usage.input_tokens  # type: ignore[union-attr]
    chat = client.chat.completions.create(
        model="default",
        messages=[
            {"role": "system", "content": system},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=12,
    )
    assert "Paris" in (chat.choices[0].message.content or "")


def test_real_model_conversation(model_server: ThreadedServer) -> None:
    """The Conversations API with the real model: the second answer is generated with the
    first exchange in its prompt, and the conversation holds the four items in order."""
    client = sdk_client(model_server)
    conv = client.conversations.create(
        items=[{"type": "message", "role": "system", "content": "You are a helpful assistant."}]
    )
    first = client.responses.create(
        model="default",
        input="What is the capital of France?",
        conversation=conv.id,
        max_output_tokens=12,
    )
    assert "Paris" in first.output_text
    second = client.responses.create(
        model="default", input="And of Italy?", conversation=conv.id, max_output_tokens=12
    )
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + 5
    items = client.conversations.items.list(conv.id, order="asc")
    assert [i.role for i in items.data] == ["system", "user", "assistant", "user", "assistant"]
    assert items.data[2].content[0].text == first.output_text
