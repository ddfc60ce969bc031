"""Function tools on the Responses API, through the official `openai` SDK on the scripted
backend: `function_call` output items, their stream events (and no call text as output text),
the next request's `function_call_output` (stateless, `previous_response_id`, `conversation`)
and the stored history, which keeps the call and its output as tool turns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from server_support import ThreadedServer, attach_tokenizer, config, scripted, sdk_client
from tool_support import RESPONSES_TOOLS, TWO_CALLS, SayScript

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CALL_TEXT = '<tool_call>[{"name": "weather", "arguments": {"city": "Paris"}}]</tool_call>'


@pytest.fixture(scope="module")
def script() -> SayScript:
    return SayScript()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, script: SayScript) -> Iterator[ThreadedServer]:
    from threadloom.server.app import init_app

    tmp = tmp_path_factory.mktemp("tools-responses")

    def make() -> Any:
        app = init_app(config(tmp), backend=scripted(script))
        attach_tokenizer(app, script)
        return app

    running = ThreadedServer(make).start()
    yield running
    running.stop()


def test_calls_are_function_call_items(server: ThreadedServer) -> None:
    client = sdk_client(server)
    r = client.responses.create(
        model="default", input="say:" + TWO_CALLS, tools=RESPONSES_TOOLS, tool_choice="required"
    )
    assert r.status == "completed" and r.output_text == ""
    calls = [o for o in r.output if o.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("weather", {"city": "Paris"}),
        ("time", {"zone": "JST"}),
    ]
    assert all(c.call_id.startswith("call_") and c.status == "completed" for c in calls)
    assert len({c.id for c in calls}) == 2 and len(r.output) == 2  # no empty message
    assert r.tool_choice == "required" and [t.name for t in r.tools] == ["weather", "time"]
    got = client.responses.retrieve(r.id)
    assert [o.model_dump() for o in got.output] == [o.model_dump() for o in r.output]


def test_the_stream_sends_calls_as_items_never_as_text(server: ThreadedServer) -> None:
    client = sdk_client(server)
    events = list(
        client.responses.create(
            model="default",
            input="say:Let me look. " + TWO_CALLS,
            tools=RESPONSES_TOOLS,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Let me look. "
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [(e.output_index, e.item.type) for e in added] == [
        (0, "message"),
        (1, "function_call"),
        (2, "function_call"),
    ]
    for index, name in ((1, "weather"), (2, "time")):
        deltas = [
            e.delta
            for e in events
            if e.type == "response.function_call_arguments.delta" and e.output_index == index
        ]
        [done] = [
            e
            for e in events
            if e.type == "response.function_call_arguments.done" and e.output_index == index
        ]
        assert "".join(deltas) == done.arguments and done.name == name
        json.loads(done.arguments)
    # The message is done before the first call is added; every item is done before the end.
    assert kinds.index("response.output_item.done") < kinds.index(
        "response.function_call_arguments.delta"
    )
    assert kinds.count("response.output_item.done") == 3 and kinds[-1] == "response.completed"
    final = events[-1].response
    assert [o.type for o in final.output] == ["message", "function_call", "function_call"]
    assert final.output[1].id == added[1].item.id


def test_function_call_output_continues_after_previous_response(
    server: ThreadedServer, script: SayScript
) -> None:
    client = sdk_client(server)
    first = client.responses.create(
        model="default", input="say:" + CALL_TEXT, tools=RESPONSES_TOOLS
    )
    [call] = [o for o in first.output if o.type == "function_call"]
    second = client.responses.create(
        model="default",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=RESPONSES_TOOLS,
    )
    assert second.output_text == "[tool said: sunny]"
    # The model saw its call (as the fallback format's text) and the output.
    assert CALL_TEXT in script.prompts[-1]
    items = client.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data] == ["function_call_output"]
    assert items.data[0].call_id == call.call_id


def test_stateless_history_with_calls(server: ThreadedServer, script: SayScript) -> None:
    client = sdk_client(server)
    r = client.responses.create(
        model="default",
        store=False,
        tools=RESPONSES_TOOLS,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_x",
                "name": "weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_x", "output": "rain"},
        ],
    )
    assert r.output_text == "[tool said: rain]"
    assert CALL_TEXT in script.prompts[-1]


def test_a_conversation_keeps_the_whole_exchange(server: ThreadedServer) -> None:
    client = sdk_client(server)
    conv = client.conversations.create()
    first = client.responses.create(
        model="default", conversation=conv.id, input="say:" + CALL_TEXT, tools=RESPONSES_TOOLS
    )
    [call] = [o for o in first.output if o.type == "function_call"]
    answer = client.responses.create(
        model="default",
        conversation=conv.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=RESPONSES_TOOLS,
    )
    assert answer.output_text == "[tool said: sunny]"
    items = client.conversations.items.list(conv.id, order="asc").data
    assert [i.type for i in items] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]
    assert items[1].call_id == call.call_id and json.loads(items[1].arguments) == {"city": "Paris"}
    assert items[2].output == "sunny" and items[3].content[0].text == "[tool said: sunny]"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools[0].type"),
        ({"tools": [RESPONSES_TOOLS[0], {"type": "mcp"}]}, "tools[1].type"),
        (
            {"tools": RESPONSES_TOOLS, "tool_choice": {"type": "function", "name": "x"}},
            "tool_choice",
        ),
        ({"tools": RESPONSES_TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ],
)
def test_bad_tools_are_a_400_naming_the_field(
    server: ThreadedServer, body: dict[str, Any], param: str
) -> None:
    client = sdk_client(server)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="default", input="x", **body)
    assert e.value.body["param"] == param, e.value.body


def test_input_tokens_count_the_tools(server: ThreadedServer) -> None:
    client = sdk_client(server)
    bare = client.responses.input_tokens.count(model="default", input="hi")
    offered = client.responses.input_tokens.count(
        model="default", input="hi", tools=RESPONSES_TOOLS
    )
    assert offered.input_tokens > bare.input_tokens + 50  # the definitions and the call format
