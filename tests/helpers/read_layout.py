"""An independent reader of a threadloom store, written only from docs/storage.md.

Usage: read_layout.py STORE_PATH

Opens the LMDB environment read-only with the `lmdb` package (not threadloom), decodes every
database by the documented layout, and prints one JSON document. Any deviation from the layout
(bad header, wrong lengths, non-UTF-8 text, bad keys) raises, so the process fails.
"""

from __future__ import annotations

import json
import struct
import sys
from typing import Any

import lmdb

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
HEADER = struct.Struct("<cBBBIq16sIIII")
assert HEADER.size == 48
ROLES = {0: "system", 1: "user", 2: "assistant", 3: "tool"}


def turn_id(key: bytes) -> str:
    assert len(key) == 16, key
    n = int.from_bytes(key, "big")
    return "msg_" + "".join(ALPHABET[(n >> (5 * (25 - i))) & 31] for i in range(26))


def parse_turn(key: bytes, value: bytes) -> dict[str, Any]:
    (
        kind,
        role,
        flags,
        reserved1,
        depth,
        created,
        parent,
        owner_len,
        content_len,
        reasoning_len,
        tool_len,
    ) = HEADER.unpack_from(value, 0)
    assert kind == b"T", kind
    assert role in ROLES, role
    assert flags & ~7 == 0, flags
    assert reserved1 == 0
    assert len(value) == 48 + owner_len + content_len + reasoning_len + tool_len, "record length"
    has_parent = bool(flags & 1)
    if not has_parent:
        assert parent == bytes(16)
    at = 48
    owner = value[at : at + owner_len].decode()
    at += owner_len
    content = value[at : at + content_len].decode()
    at += content_len
    reasoning = value[at : at + reasoning_len].decode()
    if not flags & 2:
        assert reasoning_len == 0
    at += reasoning_len
    tool = value[at : at + tool_len].decode()
    if flags & 4:
        assert isinstance(json.loads(tool), dict), tool
    else:
        assert tool_len == 0
    return {
        "id": turn_id(key),
        "role": ROLES[role],
        "depth": depth,
        "created_ms": created,
        "parent": turn_id(parent) if has_parent else None,
        "owner": owner,
        "content": content,
        "reasoning": reasoning if flags & 2 else None,
        "tool": tool if flags & 4 else None,
    }


def main() -> None:
    env = lmdb.open(sys.argv[1], readonly=True, lock=False, max_dbs=16, subdir=True)
    out: dict[str, Any] = {}
    with env.begin() as txn:
        names = sorted(k.decode() for k, _ in txn.cursor())
    out["databases"] = names

    def items(name: str) -> list[tuple[bytes, bytes]]:
        db = env.open_db(name.encode(), create=False)
        with env.begin(db=db) as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]

    meta = dict(items("meta"))
    out["meta"] = {
        "format": meta[b"format"].decode(),
        "version": struct.unpack("<I", meta[b"version"])[0],
        "version_bytes": meta[b"version"].hex(),
    }
    out["turns"] = [parse_turn(k, v) for k, v in items("turns")]
    out["turn_refs"] = {}
    for k, v in items("turn_refs"):
        assert len(v) == 4
        out["turn_refs"][turn_id(k)] = struct.unpack("<I", v)[0]
    out["threads"] = []
    for k, v in items("threads"):
        owner, _, tid = k.partition(b"\0")
        record = json.loads(v)
        assert record["owner"] == owner.decode() and record["id"] == tid.decode()
        out["threads"].append(record)
    out["thread_activity"] = []
    for k, v in items("thread_activity"):
        assert v == b""
        owner, _, rest = k.partition(b"\0")
        visible = rest[0]
        assert visible in (0, 1)
        inverted = int.from_bytes(rest[1:9], "big")
        out["thread_activity"].append(
            {
                "owner": owner.decode(),
                "visible": bool(visible),
                "last_activity_ms": (2**64 - 1) - inverted,
                "id": rest[9:].decode(),
            }
        )
    out["responses"] = []
    for k, v in items("responses"):
        record = json.loads(v)
        assert record["id"] == k.decode()
        out["responses"].append(record)
    out["token_counts"] = len(items("token_counts"))
    env.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
