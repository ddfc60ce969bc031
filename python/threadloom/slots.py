"""The slot pool: N backend instances, each holding one conversation's evaluated tokens. A
request goes to the free slot that already holds the longest prefix of its prompt (so a
conversation keeps returning to its slot), else to the least recently used one."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from threadloom.backends.base import Backend, BackendFactory
from threadloom.errors import ThreadloomError


class Overloaded(ThreadloomError):
    """Every slot is busy and the waiting queue is full."""


# Tokens at the end of a slot's state that a continuation may re-tokenize differently (the
# stored reply is re-rendered as text, and a reply cut by max_tokens may end mid-word).
CONTINUATION_SLACK = 8


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Slot:
    index: int
    backend: Backend
    last_used: int = 0
    busy: bool = field(default=False)


class SlotPool:
    def __init__(self, factory: BackendFactory, size: int, *, max_queue: int = 64) -> None:
        if size < 1:
            raise ValueError("a slot pool needs at least one slot")
        self.slots = [Slot(i, factory()) for i in range(size)]
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._waiting = 0
        self._clock = itertools.count(1)
        # Forces every request to re-evaluate its whole prompt (for benchmarks).
        self.affinity = True

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def busy(self) -> int:
        return sum(s.busy for s in self.slots)

    def _pick(self, ids: Sequence[int]) -> tuple[Slot, int] | None:
        free = [s for s in self.slots if not s.busy]
        if not free:
            return None
        if self.affinity:
            # A continuation: the slot holds (nearly) all of this prompt's beginning. Sharing
            # only a system prompt is not enough; that would evict another conversation.
            best, shared = None, 0
            for s in free:
                held = s.backend.evaluated
                n = common_prefix(held, ids)
                if n > shared and n >= len(held) - CONTINUATION_SLACK:
                    best, shared = s, n
            if best is not None:
                return best, shared
        coldest = min(free, key=lambda s: s.last_used)
        return coldest, common_prefix(coldest.backend.evaluated, ids) if self.affinity else 0

    def acquire(
        self, ids: Sequence[int], cancel: threading.Event | None = None
    ) -> tuple[Slot, int]:
        """Blocks until a slot is free; returns it and how many prompt tokens it already holds."""
        with self._cond:
            picked = self._pick(ids)
            if picked is None:
                if self._waiting >= self.max_queue:
                    raise Overloaded(
                        f"all {len(self.slots)} slots are busy and {self._waiting} requests wait"
                    )
                self._waiting += 1
                try:
                    while picked is None:
                        if cancel is not None and cancel.is_set():
                            raise Overloaded("cancelled while waiting for a slot")
                        self._cond.wait(timeout=0.1)
                        picked = self._pick(ids)
                finally:
                    self._waiting -= 1
            slot, shared = picked
            slot.busy = True
            slot.last_used = next(self._clock)
            if not self.affinity:
                slot.backend.reset()
                shared = 0
            return slot, shared

    def release(self, slot: Slot) -> None:
        with self._cond:
            slot.busy = False
            slot.last_used = next(self._clock)
            self._cond.notify()

    def close(self) -> None:
        for s in self.slots:
            s.backend.close()
