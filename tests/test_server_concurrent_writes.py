"""Concurrent writes and deletes on one conversation (issue 29), on both stores, through the
official `openai` SDK where it has the call, each with a real generation in flight (the scripted
backend, slowed down): every write takes the conversation's turn, a deleted conversation ends
its generations as failed, appends answer their own items, cancel and delete wait for the stored
response, cursors page only their own conversation, dot-segment ids are refused."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

openai = pytest.importorskip("openai")
from server_support import (  # noqa: E402
    ThreadedServer,
    echo_server,
    parse_sse,
    sdk_client,
)
from support import BACKENDS  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Seconds per generated token: a `long:N` reply takes about N of these.
DELAY_S = 0.01
DELETED = "conversation_deleted"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[ThreadedServer]:
    with echo_server(request.param, tmp_path_factory.mktemp("turns"), DELAY_S) as s:
        yield s


@pytest.fixture
def client(server: ThreadedServer) -> Any:
    return sdk_client(server)


class Reply:
    def __init__(self, status: int, text: str) -> None:
        self.status_code, self.text = status, text

    def json(self) -> Any:
        return json.loads(self.text)


class Http:
    """Plain HTTP as tenant alice, for what the SDK has no call for."""

    def __init__(self, base: str) -> None:
        self.base = base

    def request(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> Reply:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", "Bearer key-alice")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return Reply(r.status, r.read().decode())
        except urllib.error.HTTPError as e:
            return Reply(e.code, e.read().decode())

    def get(self, path: str, params: dict[str, str] | None = None) -> Reply:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None) -> Reply:
        return self.request("POST", path, json if json is not None else {})

    def delete(self, path: str) -> Reply:
        return self.request("DELETE", path)


@pytest.fixture
def http(server: ThreadedServer) -> Http:
    return Http(server.url)


def message(text: str) -> dict[str, str]:
    return {"type": "message", "role": "user", "content": text}


def item_texts(client: Any, conv_id: str) -> list[str]:
    items = client.conversations.items.list(conv_id, order="asc", limit=100).data
    return [i.content[0].text for i in items]


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def generating(http: Http) -> Callable[[], bool]:
    """True once a slot is busy: a generation is under way."""
    return lambda: bool(http.get("/health").json()["slots_busy"])


def final(client: Any, response_id: str) -> Any:
    """The response once it is no longer in progress."""
    box: list[Any] = []

    def done() -> bool:
        box[:] = [client.responses.retrieve(response_id)]
        return bool(box[0].status != "in_progress")

    wait_for(done)
    return box[0]


def assert_ended_by_deletion(client: Any, http: Http, response_id: str) -> None:
    """Every handle of a response whose conversation was deleted while it generated answers
    the same stored, failed response; nothing stays in progress."""
    stored = client.responses.retrieve(response_id)
    assert stored.status == "failed"
    assert stored.error is not None and stored.error.code == DELETED
    inputs = client.responses.input_items.list(response_id).data
    assert inputs and inputs[0].content[0].text.startswith("long:")
    r = http.post(f"/v1/responses/{response_id}/cancel")
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_cancellable"
    assert client.responses.delete(response_id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response_id)


# ---- 1: an append waits for the reply generating on the conversation -----------------------


def test_an_append_during_a_reply_is_stored_after_it(client: Any) -> None:
    conv = client.conversations.create(items=[message("first")])
    started = client.responses.create(
        model="default", input="long:60", conversation=conv.id, background=True
    )
    assert started.status == "in_progress"
    appended = client.conversations.items.create(conv.id, items=[message("appended")])
    # The append took the conversation's turn: the reply was stored before it.
    reply = client.responses.retrieve(started.id)
    assert reply.status == "incomplete" and reply.output_text == " x" * 60
    assert item_texts(client, conv.id) == ["first", "long:60", " x" * 60, "appended"]
    newest = client.conversations.items.list(conv.id, limit=1).data[0]
    assert appended.data[0].id == newest.id
    # A continuation of the reply (previous_response_id) takes the same turn: it goes after
    # the append, never beside it.
    follow = client.responses.create(model="default", input="next", previous_response_id=reply.id)
    assert follow.output_text == "[first | long:60 | next]"  # the history the model saw...
    # ...and not the thread's: the reply no longer heads it, so it is a branch.
    assert item_texts(client, conv.id)[-1] == "appended"


# ---- 2 and 9: deleting the conversation ends the reply generating on it ----------------------


def test_deleting_the_conversation_ends_a_background_reply(client: Any, http: Http) -> None:
    conv = client.conversations.create(items=[message("first")])
    started = client.responses.create(
        model="default", input="long:2000", conversation=conv.id, background=True
    )
    wait_for(generating(http))
    assert client.conversations.delete(conv.id).deleted
    # Ended and stored before the delete answered.
    assert client.responses.retrieve(started.id).status == "failed"
    assert_ended_by_deletion(client, http, started.id)


def test_deleting_the_conversation_ends_a_streamed_reply(client: Any, http: Http) -> None:
    conv = client.conversations.create(items=[message("first")])
    with ThreadPoolExecutor(1) as pool:

        def stream() -> list[Any]:
            with client.responses.stream(
                model="default", input="long:2000", conversation=conv.id
            ) as s:
                return list(s)

        events = pool.submit(stream)
        wait_for(generating(http))
        client.conversations.delete(conv.id)
        got = events.result(timeout=60)
    # README: a failure mid-stream ends with `response.failed`, never a bare error event.
    assert got[-1].type == "response.failed"
    failed = got[-1].response
    assert failed.error.code == DELETED and failed.conversation is None
    assert_ended_by_deletion(client, http, failed.id)


def test_deleting_the_conversation_ends_a_plain_reply(client: Any, http: Http) -> None:
    conv = client.conversations.create(items=[message("first")])
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(
            client.responses.create, model="default", input="long:2000", conversation=conv.id
        )
        wait_for(generating(http))
        client.conversations.delete(conv.id)
        r = reply.result(timeout=60)
    assert r.status == "failed" and r.error.code == DELETED
    assert r.conversation is None  # not stored in the conversation, and the answer says so
    assert_ended_by_deletion(client, http, r.id)


def test_deleting_a_freddy_thread_ends_its_reply(client: Any, http: Http) -> None:
    with ThreadPoolExecutor(1) as pool:
        body = {
            "thread": "freddy-29",
            "inputs": [{"role": "user", "texts": [{"text": "long:2000"}]}],
        }
        reply = pool.submit(http.post, "/v1/model/response", json=body)
        wait_for(generating(http))
        assert http.delete("/v1/threads/freddy-29").status_code == 200
        r = reply.result(timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == "failed" and answer["error"]["code"] == DELETED
    assert_ended_by_deletion(client, http, answer["id"])
    assert http.get("/v1/threads/freddy-29").status_code == 404


def test_deleting_a_thread_ends_a_streamed_continue(client: Any, http: Http) -> None:
    conv = client.conversations.create(items=[message("first")])
    with ThreadPoolExecutor(1) as pool:
        body = {
            "after": "head",
            "input": [{"role": "user", "content": "long:2000"}],
            "stream": True,
        }
        reply = pool.submit(http.post, f"/v1/threads/{conv.id}/continue", json=body)
        wait_for(generating(http))
        assert http.delete(f"/v1/threads/{conv.id}").status_code == 200
        r = reply.result(timeout=60)
    frames = parse_sse(r.text)
    assert frames[-1][0] == "reply.done"
    done = frames[-1][1]["reply"]
    assert done["status"] == "failed" and done["thread_id"] is None
    assert_ended_by_deletion(client, http, done["response_id"])


def test_deleting_a_thread_ends_an_lmstudio_stream(client: Any, http: Http) -> None:
    conv = client.conversations.create(items=[message("first")])
    head = client.responses.create(model="default", input="hi", conversation=conv.id)
    with ThreadPoolExecutor(1) as pool:
        body = {
            "model": "default",
            "input": "long:2000",
            "previous_response_id": head.id,
            "stream": True,
        }
        reply = pool.submit(http.post, "/api/v1/chat", json=body)
        wait_for(generating(http))
        client.conversations.delete(conv.id)
        r = reply.result(timeout=60)
    frames = parse_sse(r.text)
    # README: an `error` event, then `chat.end` with what was generated.
    names = [name for name, _ in frames]
    assert names[-2:] == ["error", "chat.end"]
    assert frames[-2][1]["error"]["code"] == DELETED
    assert frames[-1][1]["result"]["output"][-1]["content"].startswith(" x")


# ---- 3: an append answers with exactly its own items -----------------------------------------


def test_concurrent_appends_answer_their_own_items(client: Any) -> None:
    conv = client.conversations.create(items=[message("first")])
    running = client.responses.create(
        model="default", input="long:40", conversation=conv.id, background=True
    )
    texts = [f"append {i}" for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        answers = list(
            pool.map(
                lambda t: client.conversations.items.create(
                    conv.id, items=[message(t), message(t + " b")]
                ),
                texts,
            )
        )
    for text, answer in zip(texts, answers, strict=True):
        assert [i.content[0].text for i in answer.data] == [text, text + " b"]
    stored = client.conversations.items.list(conv.id, order="asc", limit=100).data
    by_id = {i.id: i.content[0].text for i in stored}
    for answer in answers:
        for i in answer.data:  # the ids answered are the ones stored with that text
            assert by_id[i.id] == i.content[0].text
    got = [i.content[0].text for i in stored]
    assert len(got) == 3 + 40 and got[:3] == ["first", "long:40", " x" * 40]
    assert sorted(got[3:]) == sorted(t for x in texts for t in (x, x + " b"))
    for text in texts:  # each append's items stay together, in order
        assert got.index(text + " b") == got.index(text) + 1
    assert client.responses.retrieve(running.id).status == "incomplete"


# ---- 4 and 5: cancel and delete of a running response wait for its stored state --------------


def test_concurrent_cancels_answer_the_stored_response(client: Any, http: Http) -> None:
    started = client.responses.create(model="default", input="long:2000", background=True)
    wait_for(generating(http))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.responses.cancel(started.id), range(4)))
    stored = client.responses.retrieve(started.id)
    assert stored.status == "incomplete"
    for answer in answers:
        assert answer.status == "incomplete"
        assert answer.output_text == stored.output_text


def test_deleting_a_running_response_stops_and_deletes_it(client: Any, http: Http) -> None:
    started = client.responses.create(model="default", input="long:2000", background=True)
    wait_for(generating(http))
    # While it runs, every handle agrees that it exists.
    assert client.responses.retrieve(started.id).status == "in_progress"
    with pytest.raises(openai.ConflictError):
        client.responses.input_items.list(started.id)
    assert client.responses.delete(started.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(started.id)
    time.sleep(0.3)  # nothing stores it afterwards
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(started.id)


def test_continuing_a_running_response_waits_for_it(client: Any) -> None:
    started = client.responses.create(model="default", input="long:50", background=True)
    follow = client.responses.create(model="default", input="next", previous_response_id=started.id)
    assert follow.output_text == "[long:50 | next]"
    assert client.responses.retrieve(started.id).status == "incomplete"


# ---- 7: a cursor pages only its own conversation ---------------------------------------------


def test_a_cursor_of_another_conversation_is_refused(client: Any, http: Http) -> None:
    x = client.conversations.create(items=[message("x1"), message("x2")])
    y = client.conversations.create(items=[message("y1"), message("y2")])
    y_item = client.conversations.items.list(y.id, limit=1).data[0].id
    for order in ("asc", "desc"):
        with pytest.raises(openai.BadRequestError) as e:
            client.conversations.items.list(x.id, after=y_item, order=order)
        assert e.value.body["param"] == "after"
    r = http.get(f"/v1/threads/{x.id}/messages", params={"before": y_item})
    assert r.status_code == 400 and r.json()["error"]["param"] == "before"
    # Its own cursors page as before, both ways.
    x_items = client.conversations.items.list(x.id, order="asc").data
    after = client.conversations.items.list(x.id, after=x_items[0].id, order="asc").data
    assert [i.content[0].text for i in after] == ["x2"]
    before = client.conversations.items.list(x.id, after=x_items[1].id).data
    assert [i.content[0].text for i in before] == ["x1"]
    page = http.get(f"/v1/threads/{x.id}/messages", params={"before": x_items[1].id}).json()
    assert [m["texts"][0]["text"] for m in page["data"]] == ["x1"]


# ---- 8: ids that are path segments are refused ------------------------------------------------


def test_dot_segment_thread_ids_are_refused(http: Http) -> None:
    for tid in (".", ".."):
        r = http.post("/v1/threads", json={"id": tid})
        assert r.status_code == 400, r.text
        body = {"thread": tid, "inputs": [{"role": "user", "texts": [{"text": "hi"}]}]}
        r = http.post("/v1/model/response", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "thread"
    assert http.post("/v1/threads", json={"id": "..."}).status_code == 200


# ---- 9: an oversized request line is a 4xx without an ERROR traceback -------------------------


def test_an_oversized_request_line_logs_no_error(
    server: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = Http(server.url).get("/v1/models", params={"q": "a" * 9000})
    assert 400 <= r.status_code < 500
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert not errors, [rec.getMessage() for rec in errors]
    assert any(
        "8190" in rec.getMessage() or "Got more" in rec.getMessage()
        for rec in caplog.records
        if rec.levelno == logging.WARNING
    )
