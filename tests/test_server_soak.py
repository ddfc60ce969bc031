"""A soak test of concurrent writes on a few conversations (issue 29), on both stores: 8 clients
of the official `openai` SDK mix responses (plain and background), item appends and deletes,
cancels and conversation deletes for `THREADLOOM_SOAK_S` seconds (default 12; the issue's run
is 30). Afterwards every response is in a final state, every conversation holds each surviving
item once and each client's items in the order it wrote them, and no request got a 5xx."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

openai = pytest.importorskip("openai")
from server_support import (  # noqa: E402
    ThreadedServer,
    echo_server,
    sdk_client,
)
from support import BACKENDS  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SOAK_S = float(os.environ.get("THREADLOOM_SOAK_S", "12"))
CLIENTS = 8
CONVERSATIONS = 3
FINAL = {"completed", "incomplete", "failed"}


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[ThreadedServer]:
    with echo_server(request.param, tmp_path, 0.002) as s:
        yield s


class World:
    """What the clients did, for the checks afterwards."""

    def __init__(self, client: Any) -> None:
        self.lock = threading.Lock()
        self.conversations = [self.new_conversation(client) for _ in range(CONVERSATIONS)]
        self.deleted_conversations: set[str] = set()
        self.responses: list[tuple[str, str | None]] = []  # (id, conversation in the answer)
        # conversation -> (client, sequence number, text) of every append answered 200
        self.appended: dict[str, list[tuple[int, int, str]]] = {}
        self.deleted_texts: set[str] = set()
        self.statuses: list[int] = []

    @staticmethod
    def new_conversation(client: Any) -> str:
        return str(client.conversations.create(items=[msg("start")]).id)


def msg(text: str) -> dict[str, str]:
    return {"type": "message", "role": "user", "content": text}


def run_client(n: int, world: World, client: Any, deadline: float) -> None:
    rng = random.Random(n)
    seq = 0
    mine: list[tuple[str, str, str]] = []  # (conversation, item id, text) this client appended
    background: list[str] = []
    while time.monotonic() < deadline:
        with world.lock:
            conv = rng.choice(world.conversations)
        action = rng.random()
        try:
            if action < 0.3:
                tokens = rng.randint(2, 30)
                bg = rng.random() < 0.5
                seq += 1
                r = client.responses.create(
                    model="default",
                    input=f"long:{tokens} c{n} r{seq}",
                    conversation=conv,
                    background=bg,
                )
                assert r.status != "in_progress" or bg
                with world.lock:
                    world.responses.append((r.id, r.conversation.id if r.conversation else None))
                if bg:
                    background.append(r.id)
            elif action < 0.65:
                seq += 1
                text = f"c{n} #{seq}"
                answer = client.conversations.items.create(conv, items=[msg(text)])
                [item] = answer.data
                assert item.content[0].text == text
                with world.lock:
                    world.appended.setdefault(conv, []).append((n, seq, text))
                mine.append((conv, item.id, text))
            elif action < 0.8 and mine:
                c, item_id, text = mine.pop(rng.randrange(len(mine)))
                try:
                    client.conversations.items.delete(item_id, conversation_id=c)
                except openai.NotFoundError:
                    pass  # moved by another delete, or its conversation went
                else:
                    with world.lock:
                        world.deleted_texts.add(text)
            elif action < 0.95 and background:
                rid = background.pop(rng.randrange(len(background)))
                try:
                    cancelled = client.responses.cancel(rid)
                except openai.BadRequestError as e:
                    assert e.body["code"] == "not_cancellable"
                else:
                    assert cancelled.status in FINAL
            elif action >= 0.97:
                replacement = World.new_conversation(client)
                with world.lock:
                    if conv in world.conversations:
                        world.conversations[world.conversations.index(conv)] = replacement
                        world.deleted_conversations.add(conv)
                    else:
                        world.deleted_conversations.add(replacement)
                        conv = replacement
                client.conversations.delete(conv)
            world.statuses.append(200)
        except openai.APIStatusError as e:
            world.statuses.append(e.status_code)
            if e.status_code >= 500:
                raise
            # A conversation deleted under the request, or a queue momentarily full.
            assert e.status_code in (404, 409, 429), (e.status_code, e.body)


def test_soak_mixed_writes_lose_nothing(server: ThreadedServer) -> None:
    client = sdk_client(server)
    world = World(client)
    deadline = time.monotonic() + SOAK_S
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [
            pool.submit(run_client, n, world, sdk_client(server), deadline) for n in range(CLIENTS)
        ]
        for f in futures:
            f.result()
    assert not [s for s in world.statuses if s >= 500]
    # It did enough of each to mean something.
    print(
        f"{len(world.statuses)} requests, {len(world.responses)} responses, "
        f"{sum(map(len, world.appended.values()))} appends, {len(world.deleted_texts)} item "
        f"deletes, {len(world.deleted_conversations)} conversation deletes"
    )
    assert len(world.responses) >= 10 and sum(map(len, world.appended.values())) >= 10
    assert world.deleted_texts and world.deleted_conversations

    # Every response is final, none stuck in progress.
    answered_in: dict[str, list[str]] = {}
    for rid, conv in world.responses:
        r = client.responses.retrieve(rid)
        deadline = time.monotonic() + 30
        while r.status == "in_progress" and time.monotonic() < deadline:
            time.sleep(0.05)  # a background reply still generating
            r = client.responses.retrieve(rid)
        assert r.status in FINAL, (rid, r.status)
        if conv is not None and r.status != "failed":
            answered_in.setdefault(conv, []).append(rid)

    for conv in world.conversations:
        assert conv not in world.deleted_conversations
        items = client.conversations.items.list(conv, order="asc", limit=100)
        data = list(items.data)
        while items.has_more:
            items = client.conversations.items.list(conv, order="asc", limit=100, after=data[-1].id)
            data.extend(items.data)
        texts = [i.content[0].text for i in data]
        ids = [i.id for i in data]
        assert len(set(ids)) == len(ids)
        # Each surviving append is there exactly once, each client's in the order written.
        appended = world.appended.get(conv, [])
        for _, _, text in appended:
            expected = 0 if text in world.deleted_texts else 1
            assert texts.count(text) == expected, (conv, text)
        for n in range(CLIENTS):
            written = [t for c, _, t in appended if c == n and t not in world.deleted_texts]
            assert [t for t in texts if t in set(written)] == written
        # A reply whose answer named the conversation is in it, right after its input.
        for rid in answered_in.get(conv, []):
            inputs = client.responses.input_items.list(rid).data
            prompt = inputs[-1].content[0].text
            assert texts.count(prompt) == 1, (conv, prompt)
            reply = client.responses.retrieve(rid)
            at = texts.index(prompt)
            assert at + 1 < len(texts) and data[at + 1].role == "assistant", (conv, prompt)
            assert texts[at + 1] == reply.output_text
