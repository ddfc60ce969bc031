"""Property-based fuzzing of every operation in `/openapi.json` with schemathesis, against a real
loopback server with the scripted backend: whatever a client sends, the answer is never a 5xx.

The document is `build_document()` (which `test_server_openapi.py` proves equal to the served
one), loaded at import: `schemathesis.pytest.from_fixture` breaks on pytest 9 (it reads the
removed `Node._nodeid`). `{response_id}` gets a placeholder example that the test swaps for a
stored response's id, so that the lookups reach stored data instead of only 404s."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")
schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from server_support import EchoScript, ThreadedServer, attach_tokenizer, config, scripted  # noqa: E402
from threadloom.server import openapi  # noqa: E402
from threadloom.server.app import init_app  # noqa: E402

PLACEHOLDER = "resp_" + "0" * 26
KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Per operation: about a second each on 2 cores, so the whole table stays well under a minute.
MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    script = EchoScript()

    def make_app() -> Any:
        app = init_app(config(tmp, api_keys={KEY: "fuzzer"}), backend=scripted(script))
        attach_tokenizer(app, script)
        return app

    running = ThreadedServer(make_app).start()
    yield running
    running.stop()


def seed(server: ThreadedServer) -> str:
    r = requests.post(f"{server.url}/v1/responses", json={"input": "seed"}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["id"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def seeded_id(server: ThreadedServer) -> str:
    return seed(server)


def with_placeholder(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for item in doc["paths"].values():
        for op in item.values():
            for param in op.get("parameters", []):
                if param["name"] == "response_id":
                    param["example"] = PLACEHOLDER
    return doc


schema = schemathesis.openapi.from_dict(with_placeholder(openapi.build_document()))


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case: Any, server: ThreadedServer, seeded_id: str) -> None:
    if case.path_parameters and case.path_parameters.get("response_id") == PLACEHOLDER:
        # A DELETE gets a response of its own, so the shared one outlives it.
        rid = seed(server) if case.method == "DELETE" else seeded_id
        case.path_parameters["response_id"] = rid
    case.call_and_validate(
        base_url=server.url, headers=AUTH, checks=[not_a_server_error], timeout=30
    )
