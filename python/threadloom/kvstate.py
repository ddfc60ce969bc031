"""Saved conversation state: the KV cache of a sequence, kept in files after its slot went to
another conversation or the server stopped, so a returning conversation restores it instead
of evaluating its whole history again.

A state is keyed by the model it was computed with (a fingerprint of the model file and the
cache's settings), the tenant whose conversation it holds, and the exact token ids it covers.
A request reuses the saved state that shares the longest prefix with its prompt, of its own
tenant only. Files are written atomically (a temporary file, then rename); one that is
truncated, corrupt or made for another model is ignored and removed, never trusted. The
directory holds at most `budget` bytes: the least recently used states go first."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("threadloom.kvstate")

MAGIC = b"TLKVST01"
# magic, header length; then the JSON header, the token ids (u32) and the payload.
_PREFIX = struct.Struct("<8sI")
SUFFIX = ".kv"

# A shorter state is cheaper to evaluate again than to save and restore.
MIN_STATE_TOKENS = 32


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share. Halving by slice comparisons (C loops): the
    scheduler asks this of every slot of an owner at each admission, for prompts of
    thousands of tokens, under its lock."""
    n = min(len(a), len(b))
    x = a if isinstance(a, list) else list(a)
    y = b if isinstance(b, list) else list(b)
    lo, hi = 0, n  # x[:lo] == y[:lo]; they differ before hi
    # The answer is mostly short (another conversation: an opening at most) or all of the
    # shorter one (the same conversation): the head first, so the first case copies little.
    head = min(n, 64)
    if x[:head] != y[:head]:
        hi = head
    elif x[:n] == y[:n]:
        return n
    else:
        lo = head
    while hi - lo > 16:
        mid = (lo + hi) // 2
        if x[lo:mid] == y[lo:mid]:
            lo = mid
        else:
            hi = mid
    while x[lo] == y[lo]:
        lo += 1
    return lo


@dataclass(frozen=True)
class StateTag:
    """What a state belongs to in the store, so deleting it removes the state."""

    thread: str | None
    response: str


@dataclass
class _Entry:
    name: str
    owner: str
    ids: tuple[int, ...]
    size: int
    tag: StateTag
    used: int


@dataclass(frozen=True)
class Found:
    """A saved state that shares `shared` tokens with a prompt."""

    name: str
    ids: tuple[int, ...]
    shared: int


@dataclass
class StateStats:
    saved: int = 0
    # States handed to the backend (the scheduler counts: a state read ahead may go unused).
    restored: int = 0
    evicted: int = 0
    rejected: int = 0


def file_fingerprint(path: Path, settings: str, remember: Path | None = None) -> str:
    """The model file's SHA-256 together with the settings the state depends on (backend,
    cache type): a state made with anything else must not be restored. With `remember` (a
    file), the model's digest is kept there with its size and modification time, so a start
    with an unchanged model does not read gigabytes again."""
    stat = path.stat()
    seen = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    digest = _remembered_digest(remember, seen)
    if digest is None:
        sha = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                sha.update(chunk)
        digest = sha.hexdigest()
        if remember is not None:
            _write_atomically(remember, json.dumps({**seen, "sha256": digest}).encode())
    return hashlib.sha256(f"{digest}\0{settings}".encode()).hexdigest()


def _write_atomically(path: Path, data: bytes) -> bool:
    """Writes a temporary file, then renames it over `path`: readers see all or nothing."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("could not write %s: %s", path, err)
        tmp.unlink(missing_ok=True)
        return False
    return True


def _remembered_digest(remember: Path | None, seen: dict[str, object]) -> str | None:
    if remember is None:
        return None
    try:
        record = json.loads(remember.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in seen.items()):
        return None
    digest = record.get("sha256")
    return digest if isinstance(digest, str) else None


class StateCache:
    """Saved sequence states in `directory`, at most `budget` bytes. Thread safe: the scheduler
    saves and restores, the engine's workers forget deleted conversations."""

    @classmethod
    def for_model(cls, model: Path, settings: str, directory: Path, budget: int) -> StateCache:
        """The states in `directory` made with this model file and these settings; other
        models' states there are left alone."""
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory, file_fingerprint(model, settings, directory / "model.json"), budget)

    def __init__(self, directory: Path, fingerprint: str, budget: int) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.budget = budget
        self.stats = StateStats()
        self._lock = threading.Lock()
        self._clock = itertools.count(1)
        self._entries: dict[str, _Entry] = {}
        # States handed to `save_soon` and not written yet: `find` and `load` see them, so a
        # conversation that comes back before its file is written still restores it.
        self._pending: dict[str, tuple[_Entry, bytes]] = {}
        # One writer, so writes land in the order they were asked for.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="threadloom-kvstate")
        directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(directory.glob("*" + SUFFIX), key=lambda p: p.stat().st_mtime):
            entry = self._read_header(path)
            if entry is not None:
                self._entries[entry.name] = entry
        for stale in directory.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        with self._lock:
            self._shrink()

    @property
    def bytes_held(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, owner: str, ids: Sequence[int]) -> Found | None:
        """The state of `owner` sharing the longest prefix with `ids`, if long enough."""
        best: Found | None = None
        with self._lock:
            for e in [*self._entries.values(), *(e for e, _ in self._pending.values())]:
                if e.owner != owner:
                    continue
                n = common_prefix(e.ids, ids)
                if n >= MIN_STATE_TOKENS and (best is None or n > best.shared):
                    best = Found(e.name, e.ids, n)
        return best

    def load(self, found: Found) -> memoryview | None:
        """The payload of a state `find` returned, checked; None when it is gone or damaged.
        A writable view into the file's bytes as read (a state is megabytes: no copies)."""
        with self._lock:
            pending = self._pending.get(found.name)
        if pending is not None:
            return memoryview(pending[1])
        path = self.directory / found.name
        try:
            with path.open("rb") as f:
                data = bytearray(os.fstat(f.fileno()).st_size)
                if f.readinto(data) != len(data):
                    raise OSError("the file changed while it was read")
        except OSError:
            self._discard(found.name)
            return None
        payload = self._check(data)
        if payload is None:
            log.warning("ignoring damaged saved state %s", found.name)
            self.stats.rejected += 1
            self._discard(found.name)
            return None
        with self._lock:
            entry = self._entries.get(found.name)
            if entry is not None:
                entry.used = next(self._clock)
        return payload

    def reject(self, found: Found) -> None:
        """The backend refused a payload that passed the checks: never offer it again."""
        log.warning("the backend refused saved state %s; removing it", found.name)
        self.stats.rejected += 1
        self._discard(found.name)

    def save_soon(self, owner: str, ids: Sequence[int], payload: bytes, tag: StateTag) -> None:
        """`save` on the writer thread: the caller (the scheduler's thread, which every stream
        waits on) only records it. `flush` waits for what is queued."""
        key = tuple(ids)
        name = self._name(owner, key)
        entry = _Entry(name, owner, key, len(payload), tag, 0)
        with self._lock:
            self._pending[name] = (entry, payload)

        def write() -> None:
            with self._lock:
                # Forgotten meanwhile (its thread was deleted), or superseded by a newer save.
                if self._pending.get(name, (None, b""))[1] is not payload:
                    return
            try:
                self.save(owner, key, payload, tag)
            except Exception:
                log.exception("writing a saved state failed")
            finally:
                with self._lock:
                    if self._pending.get(name, (None, b""))[1] is payload:
                        del self._pending[name]

        self._writer.submit(write)

    def flush(self) -> None:
        """Waits until every state handed to `save_soon` so far is written."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        """Writes what is queued and stops the writer."""
        self._writer.shutdown(wait=True)

    def save(self, owner: str, ids: Sequence[int], payload: bytes, tag: StateTag) -> None:
        """Writes a state (atomically) and drops what it supersedes and what exceeds the
        budget. A state larger than the whole budget is not kept."""
        key = tuple(ids)
        name = self._name(owner, key)
        header = json.dumps(
            {
                "fingerprint": self.fingerprint,
                "owner": owner,
                "thread": tag.thread,
                "response": tag.response,
                "tokens": len(key),
                "payload": len(payload),
                "crc32": zlib.crc32(payload),
            }
        ).encode()
        blob = b"".join(
            (
                _PREFIX.pack(MAGIC, len(header)),
                header,
                struct.pack(f"<{len(key)}I", *key),
                payload,
            )
        )
        if len(blob) > self.budget:
            return
        if not _write_atomically(self.directory / name, blob):
            return
        with self._lock:
            # A saved prefix of this state is superseded: restoring this one and cutting it
            # back gives the same cache.
            for e in list(self._entries.values()):
                if e.owner == owner and e.name != name and key[: len(e.ids)] == e.ids:
                    self._remove(e.name)
            self._entries[name] = _Entry(name, owner, key, len(blob), tag, next(self._clock))
            self.stats.saved += 1
            self._shrink()

    def forget(self, *, thread: str | None = None, response: str | None = None) -> int:
        """Removes the states of a deleted thread or response; returns how many."""
        def hit(tag: StateTag) -> bool:
            return (thread is not None and tag.thread == thread) or (
                response is not None and tag.response == response
            )

        with self._lock:
            doomed = [e.name for e in self._entries.values() if hit(e.tag)]
            for name in doomed:
                self._remove(name)
            queued = [name for name, (e, _) in self._pending.items() if hit(e.tag)]
            for name in queued:
                del self._pending[name]
        return len(doomed) + len(queued)

    def tags(self) -> list[tuple[str, StateTag]]:
        """Each saved state's owner and tag."""
        with self._lock:
            return [(e.owner, e.tag) for e in self._entries.values()]

    # ---- internals -----------------------------------------------------------------------

    def _name(self, owner: str, ids: tuple[int, ...]) -> str:
        digest = hashlib.sha256(self.fingerprint.encode() + b"\0" + owner.encode() + b"\0")
        digest.update(struct.pack(f"<{len(ids)}I", *ids))
        return digest.hexdigest()[:40] + SUFFIX

    def _read_header(self, path: Path) -> _Entry | None:
        """The index entry of a file, or None: a damaged file is removed, one made with
        another model (a server sharing the directory) is left alone and ignored."""
        try:
            size = path.stat().st_size
            with path.open("rb") as f:
                magic, n = _PREFIX.unpack(f.read(_PREFIX.size))
                if magic != MAGIC or n > 1 << 16:
                    raise ValueError("not a state file")
                header = json.loads(f.read(n))
                if header["fingerprint"] != self.fingerprint:
                    log.info("ignoring saved state %s: made with another model", path.name)
                    return None
                count = int(header["tokens"])
                raw = f.read(4 * count)
                if len(raw) != 4 * count:
                    raise ValueError("truncated")
                ids = struct.unpack(f"<{count}I", raw)
            if size != _PREFIX.size + n + 4 * count + int(header["payload"]):
                raise ValueError("truncated")
            tag = StateTag(header["thread"], str(header["response"]))
            return _Entry(path.name, str(header["owner"]), ids, size, tag, next(self._clock))
        except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
            log.warning("ignoring saved state %s: %s", path.name, e)
            self.stats.rejected += 1
            path.unlink(missing_ok=True)
            return None

    def _check(self, data: bytearray) -> memoryview | None:
        try:
            magic, n = _PREFIX.unpack_from(data)
            if magic != MAGIC:
                return None
            header = json.loads(data[_PREFIX.size : _PREFIX.size + n])
            start = _PREFIX.size + n + 4 * int(header["tokens"])
            payload = memoryview(data)[start:]
            if header["fingerprint"] != self.fingerprint or len(payload) != header["payload"]:
                return None
            return payload if zlib.crc32(payload) == header["crc32"] else None
        except (ValueError, KeyError, TypeError, struct.error):
            return None

    def _discard(self, name: str) -> None:
        """A state that cannot be used (gone, damaged or refused): forgotten and deleted."""
        with self._lock:
            self._remove(name)

    def _remove(self, name: str) -> None:
        """Lock held."""
        self._entries.pop(name, None)
        (self.directory / name).unlink(missing_ok=True)

    def _shrink(self) -> None:
        """Lock held: least recently used out until the budget holds."""
        held = sum(e.size for e in self._entries.values())
        for e in sorted(self._entries.values(), key=lambda e: e.used):
            if held <= self.budget:
                break
            self._remove(e.name)
            held -= e.size
            self.stats.evicted += 1
