"""Compaction: a conversation's history replaced by a summary the model writes, handed to the
client as a sealed `compaction` item (`POST /v1/responses/compact`, `context_management`).

The item's `encrypted_content` is the summary sealed by the core (ChaCha20-Poly1305) under the
server's compaction key and bound to the owner: a client can keep it and send it back, but can
neither read nor forge it, and another tenant's item does not open. Sent back in `input`, it
becomes a compaction turn (a system turn whose tool data is `{"type": "compaction"}`), which
the core's prompt assembly puts in place of every turn before it, so a stored conversation
compacted once can be continued for ever.

The key: `--compaction-key` (64 hex digits), else one the store keeps: a `compaction.key` file
in an LMDB store's directory, created at first start, or a row every server on one PostgreSQL
database shares."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import msgspec

from threadloom._core import COMPACTION_KEY_BYTES, open_compaction, seal_compaction
from threadloom.errors import InvalidInput, StoreFormatError
from threadloom.summarize import SUMMARY_HEADER, Summarizer

KEY_FILE = "compaction.key"
SECRET_NAME = "compaction-key"
# The stored turn's tool data: versioned, so a later format can be told apart.
TOOL_DATA = '{"type":"compaction","version":1}'
COMPACTION = "compaction"

Message = Mapping[str, str | None]


class _SharedSecrets(Protocol):
    def shared_secret(self, name: str, fresh: bytes) -> bytes: ...


def parse_key(text: str) -> bytes:
    """A key given as 64 hex digits."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != COMPACTION_KEY_BYTES:
        raise InvalidInput(
            f"a compaction key is {2 * COMPACTION_KEY_BYTES} hex digits", param="compaction_key"
        )
    return key


def store_key(store: object) -> bytes:
    """The key the store keeps, created by the first server that asks."""
    fresh = os.urandom(COMPACTION_KEY_BYTES)
    if hasattr(store, "shared_secret"):
        shared: _SharedSecrets = store
        return shared.shared_secret(SECRET_NAME, fresh)
    path = Path(str(getattr(store, "path"))) / KEY_FILE  # noqa: B009 (the LMDB store's directory)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != COMPACTION_KEY_BYTES:
            raise StoreFormatError(f"{path} does not hold a compaction key") from None
        return key
    with os.fdopen(fd, "wb") as f:
        f.write(fresh)
    return fresh


def compaction_turn(text: str) -> dict[str, str]:
    """The stored turn a compaction item becomes."""
    return {"role": "system", "content": text, "tool": TOOL_DATA}


def is_compaction(role: str, tool: str | None) -> bool:
    if role != "system" or tool is None:
        return False
    try:
        data = msgspec.json.decode(tool)
    except msgspec.DecodeError:
        return False
    return isinstance(data, dict) and data.get("type") == COMPACTION


class Summary(msgspec.Struct, frozen=True):
    text: str
    input_tokens: int
    output_tokens: int


class Compactor:
    """Seals and opens compaction items, and writes the summaries they carry."""

    def __init__(self, key: bytes, summarizer: Summarizer) -> None:
        if len(key) != COMPACTION_KEY_BYTES:
            raise InvalidInput(f"a compaction key has {COMPACTION_KEY_BYTES} bytes")
        self._key = key
        self._summarizer = summarizer

    def seal(self, owner: str, text: str) -> str:
        return seal_compaction(self._key, owner, text)

    def open(self, owner: str, sealed: str, field: str) -> str:
        """The text of `owner`'s item; a 400-worthy error naming `field` for any other."""
        try:
            return open_compaction(self._key, owner, sealed)
        except InvalidInput as e:
            raise InvalidInput(f"{field}: {e}", param=field) from None

    def summarize(self, owner: str, messages: Sequence[Message]) -> Summary:
        """The compaction text for `messages` (blocking: it generates; run it in a worker).
        An earlier compaction in them counts as what it stands for; summaries are cached by
        what they summarize, as the summarize strategy's are."""
        start = max(
            (i for i, m in enumerate(messages) if is_compaction(str(m["role"]), m.get("tool"))),
            default=0,
        )
        turns = [m for i, m in enumerate(messages[start:]) if i == 0 or m["role"] != "system"]
        transcript = "\0".join(f"{m['role']}\0{m['content']}" for m in turns)
        key = "compaction:" + hashlib.sha256(transcript.encode()).hexdigest()
        summary = self._summarizer.summary(key, turns, owner)
        tokenizer = self._summarizer.tokenizer
        return Summary(
            f"{SUMMARY_HEADER}\n{summary}",
            sum(tokenizer.count(str(m["content"] or ""), parse_special=False) for m in turns),
            tokenizer.count(summary, parse_special=False),
        )
