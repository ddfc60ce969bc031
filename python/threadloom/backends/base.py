"""The backend interface. A backend instance is one slot: it holds one conversation's evaluated
tokens (its KV cache), so continuing that conversation only evaluates the new suffix."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

import msgspec


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """How to pick tokens. Greedy by default: the 4-bit 135M default model drifts into nonsense
    at higher temperatures."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    seed: int = -1
    stop: tuple[str, ...] = ()

    def validate(self) -> None:
        from threadloom.errors import InvalidInput

        if self.max_tokens < 1:
            raise InvalidInput("max_tokens must be at least 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidInput("temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidInput("top_p must be greater than 0 and at most 1")
        if self.top_k < 0:
            raise InvalidInput("top_k must not be negative")
        if not 0.5 <= self.repetition_penalty <= 2.0:
            raise InvalidInput("repetition_penalty must be between 0.5 and 2")


class Backend(Protocol):
    """One loaded model instance (a slot)."""

    @property
    def context_length(self) -> int: ...

    @property
    def evaluated(self) -> Sequence[int]:
        """The token ids whose state the instance holds, oldest first."""
        ...

    def generate(
        self, ids: Sequence[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[int]:
        """Evaluates `ids` (reusing the held prefix) and yields sampled token ids until the
        caller stops iterating or `cancel` is set. Runs in a worker thread."""
        ...

    def reset(self) -> None:
        """Forgets the held tokens, so the next prompt is evaluated from the start."""
        ...

    def close(self) -> None: ...


class BackendFactory(Protocol):
    """Loads instances of one model; the engine calls it once per slot."""

    name: str

    def __call__(self) -> Backend: ...
