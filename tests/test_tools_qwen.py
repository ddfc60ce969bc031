"""Function tools on a tool-trained model: Qwen2.5-Coder-0.5B-Instruct (the Hermes format, its
`<tool_call>` a token of its own) on the llama.cpp backend, through chat completions and
through the OpenAI Agents SDK (`OpenAIResponsesModel` with an `OpenAIConversationsSession`).
Skipped when the model's part packages (tests/qwen_model.py) or llama-cpp-python are missing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from qwen_model import INSTALL, qwen_model
from server_support import SDK_KEYS, ThreadedServer, config, sdk_client
from tool_support import SCHEMAS, TOOLS

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
# The Agents SDK's session refuses model names that are not OpenAI's.
ALIAS = "gpt-4o-mini"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    pytest.importorskip("llama_cpp")
    model = qwen_model()
    if model is None:
        pytest.skip(f"the Qwen test model is not installed: pip install {INSTALL}")
    from threadloom.server.app import init_app

    tmp: Path = tmp_path_factory.mktemp("tools-qwen")
    cfg = config(
        tmp,
        model=str(model),
        backend="llama-cpp",
        alias=ALIAS,
        context_length=4096,
        api_keys=SDK_KEYS,
        slots=1,
    )
    running = ThreadedServer(lambda: init_app(cfg)).start()
    yield running
    running.stop()


def test_the_hermes_format_is_detected(server: ThreadedServer) -> None:
    from threadloom.server.keys import ENGINE

    assert server.app is not None
    assert server.app[ENGINE].tool_family.name == "hermes"


def test_required_calls_parse_and_validate(server: ThreadedServer) -> None:
    client = sdk_client(server)
    for question in ("What is the weather in Paris?", "What time is it in Japan?"):
        c = client.chat.completions.create(
            model=ALIAS,
            messages=[{"role": "user", "content": question}],
            tools=TOOLS,
            tool_choice="required",
            max_tokens=60,
        )
        choice = c.choices[0]
        assert choice.finish_reason == "tool_calls", c
        for call in choice.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_an_agent_calls_a_tool_and_answers(server: ThreadedServer) -> None:
    agents = pytest.importorskip("agents")
    from agents.memory import OpenAIConversationsSession

    ran: list[tuple[str, str]] = []

    @agents.function_tool
    def weather(city: str) -> str:
        """The current weather in a city."""
        ran.append(("weather", city))
        return f"It is sunny and 21 C in {city}."

    @agents.function_tool
    def local_time(city: str) -> str:
        """The local time in a city."""
        ran.append(("local_time", city))
        return f"It is 14:05 in {city}."

    agents.set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="key-alice", max_retries=0)
    agent = agents.Agent(
        name="assistant",
        instructions="Answer with the tools' results.",
        model=agents.OpenAIResponsesModel(model=ALIAS, openai_client=client),
        tools=[weather, local_time],
        # Required for the first turn; the SDK resets it to auto once a tool ran, so the
        # model then answers in text.
        model_settings=agents.ModelSettings(tool_choice="required", max_tokens=80, temperature=0),
    )

    async def run() -> tuple[str, list[dict[str, object]], str]:
        session = OpenAIConversationsSession(openai_client=client)
        result = await agents.Runner.run(
            agent, "What is the weather in Paris?", session=session, max_turns=4
        )
        conversation = session.session_id
        items = await session.get_items()
        return str(result.final_output), list(items), conversation

    answer, items, conversation = asyncio.run(run())
    assert ran and ran[0][0] in ("weather", "local_time"), ran
    assert answer.strip()
    kinds = [i.get("type", "message") for i in items]
    assert kinds[0] == "message" and "function_call" in kinds and "function_call_output" in kinds
    assert kinds[-1] == "message", kinds
    call = next(i for i in items if i.get("type") == "function_call")
    assert set(json.loads(str(call["arguments"]))) == {"city"}
    # The server's own conversation holds the whole exchange.
    stored = sdk_client(server).conversations.items.list(conversation, order="asc").data
    assert [i.type for i in stored] == kinds
