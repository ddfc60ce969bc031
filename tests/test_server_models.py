"""Several models on one server (`--models`), on the scripted backend: the models file is
checked at start naming the key, requests pick a model by name or alias, one conversation
moves between models with its whole history, models load when asked for (once, however many
requests wait), the least recently used idle one is unloaded beyond `--max-loaded-models`, and
an idle TTL unloads. The same with real models (SmolLM2 and Gemma 3) is in
tests/test_server_models_real.py."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")
from aiohttp.test_utils import TestClient
from server_support import EchoScript, attach_tokenizer, config, scripted
from threadloom.errors import InvalidInput
from threadloom.registry import ModelSpec, load_models_file
from threadloom.server.config import ConfigError, from_sources
from threadloom.server.keys import MODELS

EXAMPLE = """
[models.smol]                 # no file: the shipped default model
backend = "ctransformers"

[models.gemma]
file = "gemma.gguf"
backend = "llama-cpp"
chat_template = "gemma"
aliases = ["gemma-3"]
slots = 4
context_length = 2048
threads = 2
kv_cache_type = "q8_0"
kv_cache_bytes = 0
gpu_layers = 0
ttl = 600
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "gemma.gguf").write_bytes(b"GGUF")  # only its existence is checked at start
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


# ---- the models file -------------------------------------------------------------------------


def test_models_file_example_parses_in_order(tmp_path: Path) -> None:
    smol, gemma = load_models_file(write(tmp_path, EXAMPLE))
    assert smol == ModelSpec(name="smol", backend="ctransformers")
    assert gemma.file == str(tmp_path / "gemma.gguf")  # relative to the models file
    assert (gemma.backend, gemma.chat_template, gemma.aliases) == (
        "llama-cpp",
        "gemma",
        ["gemma-3"],
    )
    assert (gemma.slots, gemma.context_length, gemma.threads, gemma.ttl) == (4, 2048, 2, 600)
    assert (gemma.kv_cache_type, gemma.kv_cache_bytes, gemma.gpu_layers) == ("q8_0", 0, 0)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[models.gemma]\nslot = 4\n", "models.gemma.slot is not a model setting"),
        ("[models.gemma]\nname = 'x'\n", "models.gemma.name is not a model setting"),
        ("[models.gemma]\nfile = 'missing.gguf'\n", "models.gemma.file no such file"),
        ("[models.gemma]\nslots = 'four'\n", "`models.gemma.slots`"),
        ("[models.gemma]\nslots = 0\n", "models.gemma.slots must be at least 1"),
        ("[models.gemma]\nbackend = 'vllm'\n", "`models.gemma.backend`"),
        ("[models.gemma]\nkv_cache_type = 'q4'\n", "models.gemma.kv_cache_type must be"),
        ("[models.gemma]\nttl = -1\n", "models.gemma.ttl must not be negative"),
        ("[model.gemma]\n", "model is not a models file key"),
        ("[models]\n", "models must hold at least one"),
        ("[models.default]\n", "'default' is reserved"),
        ("[models.a]\naliases = ['b']\n[models.b]\n", "'b' already names model 'a'"),
        ("[models.a\n", "models file"),
    ],
)
def test_models_file_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        load_models_file(write(tmp_path, text))
    assert named in str(refused.value)
    # The server refuses to start with the same message.
    with pytest.raises(ConfigError, match="--models: "):
        from_sources({"models_file": str(tmp_path / "models.toml")}, environ={})


def test_models_excludes_model_and_alias(tmp_path: Path) -> None:
    path = str(write(tmp_path, EXAMPLE))
    assert [m.name for m in from_sources({"models_file": path}, environ={}).models] == [
        "smol",
        "gemma",
    ]
    for flag in ("model", "alias"):
        with pytest.raises(ConfigError, match="--models declares every model"):
            from_sources({"models_file": path, flag: "x"}, environ={})
    with pytest.raises(ConfigError, match="max_loaded_models"):
        from_sources({"max_loaded_models": 0}, environ={})


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="tomllib is in the standard library")
def test_python_310_reads_toml_with_tomli(tmp_path: Path) -> None:
    assert len(load_models_file(write(tmp_path, EXAMPLE))) == 2


# ---- a server of two scripted models -----------------------------------------------------------

pytestmark_async = pytest.mark.asyncio
TWO = [ModelSpec(name="alpha", aliases=["a"]), ModelSpec(name="beta", aliases=["b"])]


async def serve(aiohttp_client: Any, tmp_path: Path, **kwargs: Any) -> TestClient:
    backend = {k: kwargs.pop(k) for k in ("delay_s",) if k in kwargs}
    from threadloom.server.app import init_app

    script = EchoScript()
    app = init_app(
        config(tmp_path, models=kwargs.pop("models", TWO), **kwargs),
        backend=scripted(script, **backend),
    )
    attach_tokenizer(app, script)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


async def ask(client: TestClient, model: str | None, text: str, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/responses", json={"model": model, "input": text, **body})
    assert r.status == 200, await r.text()
    return await r.json()  # type: ignore[no-any-return]


async def loaded(client: TestClient) -> dict[str, bool]:
    r = await client.get("/v1/models")
    return {m["id"]: m["loaded"] for m in (await r.json())["data"]}


@pytestmark_async
async def test_models_by_name_and_alias_and_one_conversation_across_them(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await serve(aiohttp_client, tmp_path)
    # Only the default (first) model is loaded at start; the list shows every declared one.
    r = await client.get("/v1/models")
    assert [(m["id"], m["loaded"], m["aliases"]) for m in (await r.json())["data"]] == [
        ("alpha", True, ["a"]),
        ("beta", False, ["b"]),
    ]
    first = await ask(client, "default", "one")
    second = await ask(client, "b", "two", previous_response_id=first["id"])
    third = await ask(client, "alpha", "three", previous_response_id=second["id"])
    assert [x["model"] for x in (first, second, third)] == ["alpha", "beta", "alpha"]
    # The echo script replies with every user message its prompt held: each model saw the
    # whole conversation, whichever model wrote the turns before.
    assert second["output"][0]["content"][0]["text"] == "[one | two]"
    assert third["output"][0]["content"][0]["text"] == "[one | two | three]"
    stored = await (await client.get(f"/v1/responses/{second['id']}")).json()
    assert stored["model"] == "beta"
    assert await loaded(client) == {"alpha": True, "beta": True}
    # Chat completions and the token counter pick the model the same way.
    r = await client.post(
        "/v1/chat/completions", json={"model": "b", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status == 200 and (await r.json())["model"] == "beta"
    for name in ("gamma", "alpha-2"):
        r = await client.post("/v1/responses", json={"model": name, "input": "x"})
        assert r.status == 404
        error = (await r.json())["error"]
        assert (error["code"], error["param"]) == ("model_not_found", "model")
        assert repr(name) in error["message"]
    health = await (await client.get("/health")).json()
    assert health["model"] == "alpha" and health["slots"] == 4
    assert [(m["name"], m["loaded"]) for m in health["models"]] == [
        ("alpha", True),
        ("beta", True),
    ]
    metrics = await (await client.get("/metrics")).text()
    assert 'threadloom_model_loaded{model="beta"} 1' in metrics
    assert 'threadloom_generations_total{model="beta",status="completed"} 2' in metrics


@pytestmark_async
async def test_max_loaded_unloads_the_least_recently_used(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    three = [*TWO, ModelSpec(name="gamma")]
    client = await serve(aiohttp_client, tmp_path, models=three, max_loaded_models=2)
    await ask(client, "beta", "b1")  # alpha (start) and beta loaded
    await ask(client, "alpha", "a1")  # alpha is now the most recently used
    await ask(client, "gamma", "g1")  # beta goes
    assert await loaded(client) == {"alpha": True, "beta": False, "gamma": True}
    # A conversation started on beta continues there after it was unloaded: loaded again.
    again = await ask(client, "beta", "b2")
    assert again["model"] == "beta"
    assert await loaded(client) == {"alpha": False, "beta": True, "gamma": True}


@pytestmark_async
async def test_requests_wait_for_one_load_and_others_keep_serving(
    aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "threadloom.models")
    client = await serve(aiohttp_client, tmp_path, max_loaded_models=1, delay_s=0.01)
    replies = await asyncio.gather(*(ask(client, "beta", f"q{i}") for i in range(3)))
    assert all(r["status"] == "completed" and r["model"] == "beta" for r in replies)
    loads = [r.message for r in caplog.records if r.message.startswith("loaded model 'beta'")]
    assert len(loads) == 1, loads
    assert await loaded(client) == {"alpha": False, "beta": True}


@pytestmark_async
async def test_busy_model_is_not_unloaded_under_its_request(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await serve(aiohttp_client, tmp_path, max_loaded_models=1, delay_s=0.02)
    models = client.app[MODELS]
    models.evict_wait_s = 10
    # alpha generates 30 tokens (about 0.6 s) while beta is asked for: beta waits until alpha
    # is idle, then alpha is unloaded; the long reply is whole.
    long = asyncio.ensure_future(ask(client, "alpha", "long:30", max_output_tokens=30))
    await asyncio.sleep(0.1)
    short = await ask(client, "beta", "x")
    done = await long
    assert done["status"] == "incomplete"
    assert done["output"][0]["content"][0]["text"] == " x" * 30
    assert short["model"] == "beta"
    assert await loaded(client) == {"alpha": False, "beta": True}


@pytestmark_async
async def test_idle_ttl_unloads_and_store_routes_need_no_model(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    models = [ModelSpec(name="alpha"), ModelSpec(name="beta", ttl=0.5)]
    client = await serve(aiohttp_client, tmp_path, models=models)
    first = await ask(client, "beta", "x")
    assert await loaded(client) == {"alpha": True, "beta": True}
    await asyncio.sleep(1.5)
    # beta's own TTL; alpha has none (--model-ttl 0: never).
    assert await loaded(client) == {"alpha": True, "beta": False}
    r = await client.get(f"/v1/responses/{first['id']}")
    assert r.status == 200 and (await r.json())["model"] == "beta"
    assert await loaded(client) == {"alpha": True, "beta": False}


@pytestmark_async
async def test_lmstudio_list_load_and_unload(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await serve(aiohttp_client, tmp_path, context_length=2048)
    listed = await (await client.get("/api/v1/models")).json()
    assert [(m["key"], m["loaded_instances"]) for m in listed["models"]] == [
        ("alpha", [{"id": "alpha", "config": {"context_length": 2048}}]),
        ("beta", []),
    ]
    assert all(m["size_bytes"] > 0 and m["format"] == "gguf" for m in listed["models"])
    r = await client.post("/api/v1/models/load", json={"model": "b"})
    loaded_now = await r.json()
    assert r.status == 200, loaded_now
    assert loaded_now["model_instance_id"] == "beta"
    assert loaded_now["config"] == {"context_length": 2048}
    assert await loaded(client) == {"alpha": True, "beta": True}
    r = await client.post("/api/v1/models/load", json={"model": "beta", "config": {"x": 1}})
    assert r.status == 400
    r = await client.post(
        "/api/v1/models/load", json={"model": "beta", "config": {"context_length": 9999}}
    )
    assert r.status == 400 and (await r.json())["error"]["param"] == "config.context_length"
    r = await client.post("/api/v1/models/unload", json={"instance_id": "beta"})
    assert r.status == 200 and (await r.json()) == {"instance_id": "beta"}
    assert await loaded(client) == {"alpha": True, "beta": False}
    r = await client.post("/api/v1/models/unload", json={"instance_id": "beta"})
    assert r.status == 404 and "not loaded" in (await r.json())["error"]["message"]
    r = await client.post("/api/v1/models/unload", json={"instance_id": "delta"})
    error = (await r.json())["error"]
    assert (r.status, error["code"], error["param"]) == (404, "model_not_found", "instance_id")
    # Unloaded, it answers again on its next request.
    assert (await ask(client, "beta", "x"))["model"] == "beta"


@pytestmark_async
async def test_load_and_unload_take_the_operators_key(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await serve(aiohttp_client, tmp_path, api_keys={"k1": "t1"}, metrics_key="op")
    tenant = {"Authorization": "Bearer k1"}
    operator = {"Authorization": "Bearer op"}
    for path, body in (
        ("/api/v1/models/load", {"model": "beta"}),
        ("/api/v1/models/unload", {"instance_id": "beta"}),
    ):
        r = await client.post(path, json=body, headers=tenant)
        assert r.status == 403, await r.text()
        r = await client.post(path, json=body, headers=operator)
        assert r.status == 200, await r.text()
    # Listing and generating stay the tenants'.
    r = await client.get("/api/v1/models", headers=tenant)
    assert r.status == 200


@pytestmark_async
async def test_a_broken_default_model_fails_the_start_with_its_own_error(tmp_path: Path) -> None:
    from aiohttp import web
    from threadloom.errors import ModelFormatError
    from threadloom.server.app import init_app

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(60))
    app = init_app(
        config(tmp_path, models=[ModelSpec(name="x", file=str(broken))]),
        backend=scripted(EchoScript()),
    )
    runner = web.AppRunner(app)
    with pytest.raises(ModelFormatError):
        await runner.setup()


@pytestmark_async
async def test_a_running_response_names_its_model(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await serve(aiohttp_client, tmp_path, delay_s=0.02)
    started = await ask(client, "beta", "long:20", background=True, max_output_tokens=20)
    running = await (await client.get(f"/v1/responses/{started['id']}")).json()
    assert (running["status"], running["model"]) == ("in_progress", "beta")
    for _ in range(100):
        done = await (await client.get(f"/v1/responses/{started['id']}")).json()
        if done["status"] != "in_progress":
            break
        await asyncio.sleep(0.05)
    assert (done["status"], done["model"]) == ("incomplete", "beta")
