"""Child process of the concurrency tests: appends to a shared store and prints what it wrote.

Usage: appender.py STORE GO_FILE MODE TAG COUNT [MAP_SIZE]

STORE is an LMDB directory or a postgresql:// URL (MAP_SIZE applies to LMDB only).

Waits until GO_FILE exists (so that several children start writing together), then:
- MODE "append": COUNT times, appends one or two turns to the shared thread "shared" and one to
  its own thread TAG, printing {"thread": ..., "turns": [...]} after each append returns.
- MODE "fill": appends one to three turns at a time to "shared" until the message limit refuses
  a single turn, printing each successful append the same way.
- MODE "grow": like "append" but each turn carries 20 KB, to force the map to grow.
Prints {"done": true} at the end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from threadloom.errors import LimitExceeded
from threadloom.storage import open_store


def main() -> None:
    path, go, mode, tag, count = sys.argv[1:6]
    map_size = int(sys.argv[6]) if len(sys.argv) > 6 else None
    store = open_store(path, map_size=map_size) if map_size else open_store(path)
    deadline = time.monotonic() + 30
    while not Path(go).exists():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the go file")
        time.sleep(0.001)

    def ack(thread: str, turn_ids: list[str]) -> None:
        sys.stdout.write(json.dumps({"thread": thread, "turns": turn_ids}) + "\n")
        sys.stdout.flush()

    pad = "x" * 20_000 if mode == "grow" else ""
    if mode in ("append", "grow"):
        for i in range(int(count)):
            n = 1 + i % 2
            turns = [{"role": "user", "content": f"{tag}-{i}-{j}{pad}"} for j in range(n)]
            ack("shared", store.append(turns, thread="shared").turn_ids)
            own = [{"role": "assistant", "content": f"{tag}-own-{i}{pad}"}]
            ack(tag, store.append(own, thread=tag).turn_ids)
    elif mode == "fill":
        i = 0
        size = 1
        shrinking = False
        while True:
            if not shrinking:
                size = 1 + i % 3
            turns = [{"role": "user", "content": f"{tag}-{i}-{j}"} for j in range(size)]
            try:
                ack("shared", store.append(turns, thread="shared").turn_ids)
            except LimitExceeded:
                if size == 1:
                    break
                shrinking = True
                size -= 1
            i += 1
    else:
        raise SystemExit(f"unknown mode {mode}")
    sys.stdout.write(json.dumps({"done": True}) + "\n")


if __name__ == "__main__":
    main()
