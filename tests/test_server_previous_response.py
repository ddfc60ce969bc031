"""Issue 26: a stored response keeps the `previous_response_id` it continued, on every dialect
and whichever way it was stored (continuing a thread's newest response, branching off an older
one, continuing a response in no thread), and requests continuing a thread's newest response
take the thread's turn one after another. Both stores, the scripted echo backend (its reply
names the history it saw)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from server_support import ThreadedServer, echo_server
from support import BACKENDS

# Seconds per generated token: a `long:N` reply takes about N of these.
DELAY_S = 0.01
# The events that end a streamed response.
ENDED = ("response.completed", "response.incomplete", "response.failed")


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[ThreadedServer]:
    with echo_server(request.param, tmp_path_factory.mktemp("previous"), DELAY_S) as s:
        yield s


class Http:
    """Plain HTTP as tenant alice."""

    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", "Bearer key-alice")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, path: str, body: Any) -> Any:
        status, text = self.call("POST", path, body)
        assert status == 200, text
        return json.loads(text)

    def get(self, path: str) -> Any:
        status, text = self.call("GET", path)
        assert status == 200, text
        return json.loads(text)

    def respond(self, text: str, **fields: Any) -> Any:
        return self.post("/v1/responses", {"model": "default", "input": text, **fields})

    def stored_previous(self, response_id: str) -> str | None:
        previous: str | None = self.get(f"/v1/responses/{response_id}")["previous_response_id"]
        return previous

    def conversation(self) -> str:
        cid: str = self.post("/v1/conversations", {})["id"]
        return cid

    def items(self, cid: str) -> list[str]:
        data = self.get(f"/v1/conversations/{cid}/items?order=asc&limit=100")["data"]
        return [i["content"][0]["text"] for i in data]


@pytest.fixture
def http(server: ThreadedServer) -> Http:
    return Http(server.url)


def test_responses_continuing_a_conversations_newest_response(http: Http) -> None:
    """The issue's report: the reply continues the conversation, and the stored response says
    which response it continued, as the live one did."""
    cid = http.conversation()
    first = http.respond("a", conversation=cid)
    second = http.respond("b", previous_response_id=first["id"])
    assert second["previous_response_id"] == first["id"]
    assert http.stored_previous(second["id"]) == first["id"]
    # It continued the conversation (the thread), not a branch beside it.
    assert http.items(cid) == ["a", "[a]", "b", "[a | b]"]
    assert http.stored_previous(first["id"]) is None


def test_responses_branching_off_an_older_response(http: Http) -> None:
    cid = http.conversation()
    first = http.respond("a", conversation=cid)
    http.respond("b", conversation=cid)
    branch = http.respond("c", previous_response_id=first["id"])
    assert branch["output"][0]["content"][0]["text"] == "[a | c]"
    assert http.stored_previous(branch["id"]) == first["id"]
    assert http.items(cid) == ["a", "[a]", "b", "[a | b]"]


def test_responses_chain_outside_any_conversation(http: Http) -> None:
    first = http.respond("a")
    second = http.respond("b", previous_response_id=first["id"])
    third = http.respond("c", previous_response_id=second["id"])
    assert third["output"][0]["content"][0]["text"] == "[a | b | c]"
    assert http.stored_previous(second["id"]) == first["id"]
    assert http.stored_previous(third["id"]) == second["id"]


def test_streamed_continuation_stores_what_it_announced(http: Http) -> None:
    cid = http.conversation()
    first = http.respond("a", conversation=cid)
    status, raw = http.call(
        "POST",
        "/v1/responses",
        {"model": "default", "input": "b", "previous_response_id": first["id"], "stream": True},
    )
    assert status == 200
    created = next(
        json.loads(line[len("data: ") :])
        for line in raw.splitlines()
        if line.startswith("data: ") and '"response.created"' in line
    )["response"]
    assert created["previous_response_id"] == first["id"]
    assert http.stored_previous(created["id"]) == first["id"]
    assert http.items(cid)[-1] == "[a | b]"


def test_lmstudio_continuation_of_a_conversations_newest_response(http: Http) -> None:
    cid = http.conversation()
    first = http.respond("a", conversation=cid)
    reply = http.post(
        "/api/v1/chat",
        {"model": "default", "input": "b", "previous_response_id": first["id"]},
    )
    assert http.stored_previous(reply["response_id"]) == first["id"]
    assert http.items(cid)[-2:] == ["b", "[a | b]"]


def test_freddy_continuation_of_a_threads_newest_response(http: Http) -> None:
    def ask(text: str, **fields: Any) -> Any:
        body = {"inputs": [{"role": "user", "texts": [{"text": text}]}], **fields}
        return http.post("/v1/model/response", body)

    first = ask("a", thread={})
    assert first["threadId"] is not None
    second = ask("b", previousResponseId=first["id"])
    assert second["previousResponseId"] == first["id"]
    assert second["threadId"] == first["threadId"]  # it continued the thread
    assert http.stored_previous(second["id"]) == first["id"]


def test_two_continuations_of_the_newest_response_take_turns(http: Http) -> None:
    """Both continue the conversation's newest response at once: they run one after the other
    (the second sees the first's reply at the head and so branches), both are stored with
    their previous response, and the conversation holds exactly one of them."""
    cid = http.conversation()
    first = http.respond("a", conversation=cid)
    events: dict[int, dict[str, float]] = {0: {}, 1: {}}
    ids: dict[int, str] = {}

    def run(i: int) -> None:
        body = {
            "model": "default",
            "input": "long:30",
            "previous_response_id": first["id"],
            "stream": True,
        }
        req = urllib.request.Request(
            http.base + "/v1/responses", data=json.dumps(body).encode(), method="POST"
        )
        req.add_header("Authorization", "Bearer key-alice")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[len("data: ") :])
                kind = event.get("type")
                if kind in ("response.created", *ENDED):
                    events[i]["ended" if kind in ENDED else "created"] = time.monotonic()
                    ids[i] = event["response"]["id"]

    workers = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    early, late = sorted((0, 1), key=lambda i: events[i]["created"])
    # The later one was admitted only after the earlier one was stored.
    assert events[late]["created"] >= events[early]["ended"]
    for i in (0, 1):
        assert http.stored_previous(ids[i]) == first["id"]
    items = http.items(cid)
    assert items == ["a", "[a]", "long:30", " x" * 30]
    # The conversation's head is the earlier reply: the next continuation of it continues it.
    follow = http.respond("next", previous_response_id=ids[early])
    assert http.items(cid)[-1] == follow["output"][0]["content"][0]["text"]
