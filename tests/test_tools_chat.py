"""Function tools on chat completions, through the official `openai` SDK: on the scripted
backend (the model writes what the test says, under the call grammar) and on the real default
model, SmolLM2 (the fallback format, `tool_choice="required"`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from server_support import ThreadedServer, attach_tokenizer, config, scripted, sdk_client
from threadloom.errors import ModelNotInstalled
from tool_support import SCHEMAS, TIME, TOOLS, TWO_CALLS, SayScript

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def script() -> SayScript:
    return SayScript()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, script: SayScript) -> Iterator[ThreadedServer]:
    from threadloom.server.app import init_app

    tmp = tmp_path_factory.mktemp("tools")

    def make() -> Any:
        app = init_app(config(tmp), backend=scripted(script))
        attach_tokenizer(app, script)
        return app

    running = ThreadedServer(make).start()
    yield running
    running.stop()


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_two_parallel_calls(server: ThreadedServer, script: SayScript) -> None:
    client = sdk_client(server)
    c = client.chat.completions.create(
        model="default", messages=ask("say:" + TWO_CALLS), tools=TOOLS, tool_choice="required"
    )
    choice = c.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert [(x.function.name, json.loads(x.function.arguments)) for x in calls] == [
        ("weather", {"city": "Paris"}),
        ("time", {"zone": "JST"}),
    ]
    assert all(x.id.startswith("call_") and x.type == "function" for x in calls)
    assert calls[0].id != calls[1].id
    # The fallback block showed the model its tools and the call format.
    assert '"name": "weather"' in script.prompts[-1] and "<tool_call>[" in script.prompts[-1]


def test_streamed_calls_have_their_own_index_id_and_name(server: ThreadedServer) -> None:
    client = sdk_client(server)
    stream = client.chat.completions.create(
        model="default",
        messages=ask("say:Checking. " + TWO_CALLS),
        tools=TOOLS,
        stream=True,
    )
    content, firsts, args, finish = "", {}, {0: "", 1: ""}, None
    for chunk in stream:
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or []:
            if d.index not in firsts:
                firsts[d.index] = (d.id, d.function.name)
            else:
                assert d.id is None and d.function.name is None
            args[d.index] += d.function.arguments or ""
        finish = choice.finish_reason or finish
    assert content == "Checking. "  # no call text in the content
    assert [firsts[0][1], firsts[1][1]] == ["weather", "time"]
    assert firsts[0][0].startswith("call_") and firsts[0][0] != firsts[1][0]
    assert json.loads(args[0]) == {"city": "Paris"} and json.loads(args[1]) == {"zone": "JST"}
    assert finish == "tool_calls"


def test_auto_lets_the_model_answer_in_text(server: ThreadedServer) -> None:
    client = sdk_client(server)
    c = client.chat.completions.create(model="default", messages=ask("say:Sunny."), tools=TOOLS)
    assert c.choices[0].message.content == "Sunny." and c.choices[0].message.tool_calls is None
    assert c.choices[0].finish_reason == "stop"


def test_calls_keep_to_the_grammar(server: ThreadedServer) -> None:
    client = sdk_client(server)
    # One call only: the grammar closes the group after the first call.
    one = client.chat.completions.create(
        model="default",
        messages=ask("say:" + TWO_CALLS),
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    assert [x.function.name for x in one.choices[0].message.tool_calls] == ["weather"]
    # Arguments that break the schema cannot be written: the grammar masks them.
    bad = '<tool_call>[{"name": "time", "arguments": {"zone": "Mars"}}]</tool_call>'
    c = client.chat.completions.create(
        model="default",
        messages=ask("say:" + bad),
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "time"}},
    )
    calls = c.choices[0].message.tool_calls
    assert calls
    for call in calls:
        assert call.function.name == "time"
        jsonschema.validate(json.loads(call.function.arguments), TIME)


def test_the_tool_loop_continues(server: ThreadedServer, script: SayScript) -> None:
    client = sdk_client(server)
    history: list[Any] = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    c = client.chat.completions.create(model="default", messages=history, tools=TOOLS)
    assert c.choices[0].finish_reason == "stop"
    prompt = script.prompts[-1]
    # The fallback template ignores tool_calls: the call is shown as the text it was written as.
    assert '<tool_call>[{"name": "weather", "arguments": {"city": "Paris"}}]</tool_call>' in prompt
    assert "<|im_start|>tool\nsunny, 21 C<|im_end|>" in prompt


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].name"),
        (
            {
                "tools": [
                    TOOLS[0],
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"$ref": "#/$defs/missing"}},
                    },
                ]
            },
            "tools[1].parameters",
        ),
    ],
)
def test_bad_tools_are_a_400_naming_the_field(
    server: ThreadedServer, body: dict[str, Any], param: str
) -> None:
    client = sdk_client(server)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="default", messages=ask("x"), **body)
    assert e.value.body["param"] == param, e.value.body


# ---- the real default model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    pytest.importorskip("ctransformers")
    from threadloom.server.app import init_app

    tmp = tmp_path_factory.mktemp("tools-smol")
    try:
        running = ThreadedServer(
            lambda: init_app(config(tmp, cache_dir=str(tmp / "cache"), slots=2))
        ).start()
    except ModelNotInstalled as e:
        pytest.skip(str(e))
    yield running
    running.stop()


def test_smollm2_required_calls_parse_and_validate(smol_server: ThreadedServer) -> None:
    client = sdk_client(smol_server)
    questions = ["What is the weather in Paris?", "What time is it in Tokyo?", "Weather in Rome?"]
    for q in questions:  # greedy: the model closes its calls
        c = client.chat.completions.create(
            model="default", messages=ask(q), tools=TOOLS, tool_choice="required", max_tokens=80
        )
        choice = c.choices[0]
        assert choice.finish_reason == "tool_calls", c
        assert choice.message.tool_calls
        for call in choice.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    for seed in range(3):  # temperature 1: a 135M model may ramble to max_tokens, never invalidly
        c = client.chat.completions.create(
            model="default",
            messages=ask(questions[seed]),
            tools=TOOLS,
            tool_choice="required",
            max_tokens=80,
            temperature=1.0,
            seed=seed,
        )
        choice = c.choices[0]
        assert choice.finish_reason in ("tool_calls", "length"), c
        for call in choice.message.tool_calls or []:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    stream = client.chat.completions.create(
        model="default",
        messages=ask(questions[0]),
        tools=TOOLS,
        tool_choice="required",
        max_tokens=80,
        stream=True,
    )
    args: dict[int, str] = {}
    names: dict[int, str] = {}
    for chunk in stream:
        assert not chunk.choices[0].delta.content
        for d in chunk.choices[0].delta.tool_calls or []:
            if d.function.name:
                names[d.index] = d.function.name
            args[d.index] = args.get(d.index, "") + (d.function.arguments or "")
    assert sorted(args) == list(range(len(args))) and args
    for index, text in args.items():
        jsonschema.validate(json.loads(text), SCHEMAS[names[index]])


def test_an_agent_on_smollm2_with_required_tools(smol_server: ThreadedServer) -> None:
    """The Agents SDK over Responses on SmolLM2 (the fallback format): `tool_choice` required
    makes the first turn a call whose arguments validate; the SDK runs the tool, resets the
    choice to auto and the model answers."""
    agents = pytest.importorskip("agents")
    ran: list[str] = []

    @agents.function_tool
    def weather(city: str) -> str:
        """The current weather in a city."""
        ran.append(city)
        return f"It is sunny in {city}."

    @agents.function_tool
    def local_time(city: str) -> str:
        """The local time in a city."""
        ran.append(city)
        return f"It is 14:05 in {city}."

    agents.set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=f"{smol_server.url}/v1", api_key="x", max_retries=0)
    agent = agents.Agent(
        name="assistant",
        instructions="Use the tools.",
        model=agents.OpenAIResponsesModel(model="default", openai_client=client),
        tools=[weather, local_time],
        model_settings=agents.ModelSettings(tool_choice="required", max_tokens=60, temperature=0),
    )
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?", max_turns=4)
    assert ran, result.new_items
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"], kinds
    assert kinds[-1] == "message_output_item"
