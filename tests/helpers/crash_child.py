"""Child process of the crash test: appends turns forever, printing each acknowledged append.

Usage: crash_child.py STORE [THREADS]   (STORE: an LMDB directory or a postgresql:// URL)

With THREADS, that many Python threads append concurrently (their writes share group commits),
each to its own thread `crash-<k>`, and print the same kind of line.

Every line of stdout is one JSON object describing an append that has returned, i.e. whose
transaction committed: its turns (id, parent, owner, role, content, reasoning) and its response
id. The parent test SIGKILLs this process at an arbitrary moment.
"""

from __future__ import annotations

import json
import sys
import threading

from threadloom import ResponseInfo, Store
from threadloom.storage import open_store

PRINT_LOCK = threading.Lock()


def emit(ack: dict[str, object]) -> None:
    with PRINT_LOCK:
        sys.stdout.write(json.dumps(ack) + "\n")
        sys.stdout.flush()


def threaded(store: Store, k: int) -> None:
    name = f"crash-{k}"
    store.create_thread(name, exist_ok=True)
    head = store.get_thread(name).head
    for i in range(1_000_000):
        turns: list[dict[str, str | None]] = [
            {"role": "user", "content": f"{name} q{i}"},
            {"role": "assistant", "content": f"{name} a{i}", "reasoning": None},
        ]
        a = store.append(turns, thread=name, response=ResponseInfo("m"))
        records: list[dict[str, str | None]] = []
        parent = head
        for turn_id, turn in zip(a.turn_ids, turns, strict=True):
            records.append({"id": turn_id, "parent": parent, "owner": "default", **turn})
            parent = turn_id
        head = a.turn_ids[-1]
        emit(
            {
                "i": i,
                "owner": "default",
                "thread": name,
                "response": a.response.id if a.response else None,
                "turns": records,
            }
        )


def main() -> None:
    store = open_store(sys.argv[1])
    if len(sys.argv) > 2:
        workers = [
            threading.Thread(target=threaded, args=(store, k), daemon=True)
            for k in range(int(sys.argv[2]))
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return
    store.create_thread("crash", exist_ok=True)
    store.create_thread("other-tenant", owner="tenant-b", exist_ok=True)
    heads: dict[str, str | None] = {"default": None, "tenant-b": None}
    last_response: str | None = None
    last_response_turn: str | None = None
    for i in range(1_000_000):
        owner = "tenant-b" if i % 5 == 4 else "default"
        padding = "·" * (i % 7) * 300  # some records span several pages
        turns: list[dict[str, str | None]] = [
            {"role": "user", "content": f"question {i} ✓ {padding}"},
            {"role": "assistant", "content": f"answer {i} 🧵", "reasoning": f"thinking {i}"},
        ]
        if i % 4 == 1:  # some turns carry tool data
            turns[1]["tool"] = f'{{"type":"function_call","call_id":"c{i}","name":"f"}}'
        if i % 3 == 2 and last_response is not None:
            # A branch after an earlier response of the default owner.
            a = store.append(
                turns[:1],
                previous_response_id=last_response,
                response=ResponseInfo("m", output_count=0),
            )
            parent = last_response_turn
            owner = "default"
            turns = turns[:1]
        else:
            thread = "crash" if owner == "default" else "other-tenant"
            a = store.append(turns, owner=owner, thread=thread, response=ResponseInfo("m"))
            parent = heads[owner]
            heads[owner] = a.turn_ids[-1]
            if owner == "default":
                last_response = a.response.id if a.response else None
                last_response_turn = a.turn_ids[-1]
        records = []
        for turn_id, turn in zip(a.turn_ids, turns, strict=True):
            records.append(
                {
                    "id": turn_id,
                    "parent": parent,
                    "owner": owner,
                    "role": turn["role"],
                    "content": turn["content"],
                    "reasoning": turn.get("reasoning"),
                    "tool": turn.get("tool"),
                }
            )
            parent = turn_id
        ack = {
            "i": i,
            "owner": owner,
            "thread": a.thread.id if a.thread else None,
            "response": a.response.id if a.response else None,
            "turns": records,
        }
        emit(ack)


if __name__ == "__main__":
    main()
