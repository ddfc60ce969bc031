"""What one stored `POST /v1/responses` with `previous_response_id` costs on its way through the
code (issue 26's table in docs/turn-path.md): executor trips, store calls (each LMDB call is one
transaction: read or write), and the Python files of the package whose code ran. The turn
continues a conversation's newest response (the thread path) and, separately, a response in no
conversation (the chain the throughput bench drives). In process, the scripted backend, an
LMDB store.

Usage: PYTHONPATH=<checkout>/python python benches/turn_path.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import threadloom_app

# Store methods that open a write transaction; every other store call opens one read.
WRITES = {
    "append",
    "put_pending",
    "remove_pending",
    "create_thread",
    "update_thread",
    "delete_thread",
    "delete_response",
    "rebase_thread",
    "add_branch",
    "put_summary",
}


class Tally:
    def __init__(self) -> None:
        self.on = False
        self.files: set[str] = set()
        self.store: Counter[str] = Counter()
        self.trips = 0
        self.lock = threading.Lock()

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self.on:
            return
        if event == "call":
            name = frame.f_code.co_filename
            if "/threadloom/" in name and "/site-packages/" not in name:
                with self.lock:
                    self.files.add(name.split("/threadloom/", 1)[1])
        elif event == "c_call":
            owner = getattr(arg, "__self__", None)
            kind = type(owner).__name__
            if kind in ("Store", "PromptEngine") and arg.__name__ in (*WRITES, "get_response",
                "get_thread", "get_pending", "history", "assemble", "pending", "list_threads"):
                if kind == "PromptEngine" and arg.__name__ != "assemble":
                    return
                with self.lock:
                    self.store[f"{kind}.{arg.__name__}"] += 1


async def one_turn(tally: Tally, store: str, in_conversation: bool) -> None:
    app = threadloom_app(store)
    async with TestClient(TestServer(app)) as client:
        loop = asyncio.get_running_loop()
        real = loop.run_in_executor

        def counted(executor: Any, func: Any, *args: Any) -> Any:
            if tally.on:
                tally.trips += 1
            return real(executor, func, *args)

        loop.run_in_executor = counted  # type: ignore[method-assign]
        try:  # the engine's own worker threads (since they replaced its executor)
            from threadloom.bridge import Workers
        except ImportError:
            pass
        else:
            run = Workers.run

            def counted_run(self: Any, work: Any) -> Any:
                if tally.on:
                    tally.trips += 1
                return run(self, work)

            Workers.run = counted_run  # type: ignore[method-assign]
        body: dict[str, Any] = {"input": "hello"}
        if in_conversation:
            conv = await (await client.post("/v1/conversations", json={})).json()
            body["conversation"] = conv["id"]
        first = await (await client.post("/v1/responses", json=body)).json()
        # Warm: the route, the executor's threads and the store are all started.
        await client.post("/v1/responses", json={"input": "warm"})
        tally.on = True
        r = await client.post(
            "/v1/responses", json={"input": "again", "previous_response_id": first["id"]}
        )
        reply = await r.json()
        tally.on = False
        assert r.status == 200, reply
        stored = await (await client.get(f"/v1/responses/{reply['id']}")).json()
        print(f"  stored previous_response_id: {stored['previous_response_id'] == first['id']}")


def report(label: str, tally: Tally) -> None:
    reads = sum(n for k, n in tally.store.items() if k.split(".")[1] not in WRITES)
    writes = sum(n for k, n in tally.store.items() if k.split(".")[1] in WRITES)
    print(f"{label}:")
    print(f"  executor trips: {tally.trips}")
    calls = dict(sorted(tally.store.items()))
    print(f"  store transactions: {reads} read, {writes} write  {calls}")
    print(f"  python files run: {len(tally.files)}")
    for f in sorted(tally.files):
        print(f"    {f}")


def main() -> None:
    for label, in_conversation in (
        ("continuing a conversation's newest response", True),
        ("continuing a response in no conversation", False),
    ):
        tally = Tally()
        sys.setprofile(tally.hook)
        threading.setprofile(tally.hook)
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(one_turn(tally, str(Path(tmp) / "store"), in_conversation))
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        report(label, tally)


if __name__ == "__main__":
    main()
