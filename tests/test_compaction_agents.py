"""The Agents SDK's `OpenAIResponsesCompactionSession` against the real default model
(SmolLM2 through ctransformers) with a 2,048-token context: a 30-turn conversation runs
without a context error because the session compacts it on the server (`responses.compact`)
and sends the sealed summary in place of the turns it replaced."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_support import SDK_KEYS, ThreadedServer, config
from threadloom.errors import ModelNotInstalled

openai = pytest.importorskip("openai")
agents = pytest.importorskip("agents")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
# The session refuses model names that are not OpenAI's: the server answers to this alias.
ALIAS = "gpt-4o-mini"
FACTS = [
    "Ada",
    "Oslo",
    "violin",
    "tea",
    "cats",
    "chess",
    "blue",
    "rain",
    "maps",
    "jazz",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    pytest.importorskip("ctransformers")
    from threadloom.server.app import init_app

    tmp: Path = tmp_path_factory.mktemp("compaction-agents")
    cfg = config(
        tmp,
        cache_dir=str(tmp / "cache"),
        alias=ALIAS,
        context_length=2048,
        api_keys=SDK_KEYS,
        slots=1,
    )
    try:
        s = ThreadedServer(lambda: init_app(cfg)).start()
    except ModelNotInstalled as e:
        pytest.skip(str(e))
    yield s
    s.stop()


def test_thirty_turns_with_compaction(server: ThreadedServer) -> None:
    from agents.memory import OpenAIResponsesCompactionSession, SQLiteSession
    from pydantic import BaseModel, Field

    class Reply(BaseModel):
        """A structured reply (a JSON schema the server enforces) keeps every turn short:
        the Agents SDK treats a reply cut by max_tokens as an error."""

        word: str = Field(max_length=16)

    agents.set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="key-alice", max_retries=0)
    model = agents.OpenAIResponsesModel(model=ALIAS, openai_client=client)
    agent = agents.Agent(
        name="notes",
        instructions="You are a friendly assistant.",
        model=model,
        output_type=Reply,
        model_settings=agents.ModelSettings(max_tokens=48, temperature=0.0),
    )
    compactions: list[int] = []

    async def run() -> list[str]:
        inner = SQLiteSession("s1")
        session = OpenAIResponsesCompactionSession(
            "s1", inner, client=client, model=ALIAS, compaction_mode="input"
        )
        answers = []
        for turn in range(30):
            fact = FACTS[turn % len(FACTS)]
            text = f"Turn {turn}: remember the word {fact}. Which word did I give you?"
            result = await agents.Runner.run(agent, text, session=session)
            answers.append(result.final_output.word)
            items = await inner.get_items()
            compactions.append(sum(1 for i in items if i.get("type") == "compaction"))
        return answers

    answers = asyncio.run(run())
    assert len(answers) == 30 and all(answers)
    # Compacted several times: each compaction replaces the stored history's earlier items
    # with one sealed item, so a history holding one is a history compacted since.
    times = sum(1 for a, b in itertools.pairwise(compactions) if b and b >= a)
    assert compactions[-1] >= 1 and times >= 2, compactions
