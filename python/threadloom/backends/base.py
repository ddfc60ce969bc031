"""The backend interface, built around steps. A backend holds one model and `sequences`
independent states (the slots); the scheduler's one thread drives it: `prefill` evaluates a
chunk of one sequence's prompt, `decode` produces the next token of several sequences at once.
A backend that batches (llama.cpp) evaluates a whole `decode` call in one pass; one that cannot
(ctransformers) steps the sequences one after another. Either way only one thread computes, so
the process's thread budget is never oversubscribed."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

# A saved state's bytes as `load_state` takes them: a writable view is used without a copy.
StateData = bytes | bytearray | memoryview


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
        """Every bound is `threadloom.limits`', which the request schemas use too."""
        from threadloom.limits import check_sampling

        check_sampling(self)


class TokenConstraint(Protocol):
    """What a constrained generation's sequence carries (`_core.Constraint`): the backend
    applies it to the logits row before sampling, the scheduler advances it after."""

    def apply(self, address: int, length: int) -> None:
        """Sets the logits the format does not allow, at `address` (`length` float32), to
        -inf. Where the format cannot continue it leaves only the end-of-generation ids and
        the next `advance` raises: the generation fails, it never goes on unconstrained."""
        ...

    def advance(self, token: int) -> bool:
        """Takes the sampled token; True when the output is complete."""
        ...

    def allowed(self) -> list[int]:
        """The ids allowed next (slow: for scripted backends and diagnostics)."""
        ...


# One entry per sequence of a `decode` batch: no constraint for that sequence, or its matcher.
Constraints = Sequence[TokenConstraint | None]


class Backend(Protocol):
    """One loaded model with `sequences` states. Every method is called from the scheduler's
    thread only, so implementations need no locks."""

    @property
    def context_length(self) -> int:
        """Tokens one sequence can hold."""
        ...

    @property
    def sequences(self) -> int: ...

    def held(self, seq: int) -> Sequence[int]:
        """The token ids whose state sequence `seq` holds, oldest first. A token sampled by
        `decode` is held only once the next `decode` of that sequence evaluated it."""
        ...

    def prefill(self, seq: int, keep: int, ids: Sequence[int]) -> None:
        """Keeps the first `keep` held tokens of `seq`, forgets the rest (and any sampled,
        unevaluated token), then evaluates `ids` (never empty) after them."""
        ...

    def decode(
        self, batch: Sequence[tuple[int, SamplingParams]], constraints: Constraints = ()
    ) -> list[int | None]:
        """One step for each `(seq, params)`: evaluates the token the previous step sampled
        for that sequence (if any), then samples the next one from its logits, masked by
        `constraints[i]` where given (empty: none at all). None: the sequence's context is full
        and it cannot continue."""
        ...

    def save_state(self, seq: int) -> tuple[Sequence[int], bytes] | None:
        """The evaluated tokens of `seq` and its state as bytes, for `load_state` later (also
        in another process with the same model); None where the backend cannot."""
        ...

    def load_state(self, seq: int, data: StateData, ids: Sequence[int]) -> bool:
        """Replaces `seq`'s state with one `save_state` gave for `ids`. False (and `seq` left
        empty) when the data does not fit this model and context."""
        ...

    def share_prefix(self, src: int, dst: int, n: int) -> int:
        """Replaces `dst`'s state with the first `n` evaluated tokens of `src`, copied rather
        than evaluated again; returns how many `dst` now holds (0: the backend cannot, and
        `dst` is unchanged)."""
        ...

    def close(self) -> None: ...


class BackendFactory(Protocol):
    """Loads one model with room for `sequences` conversations; the engine calls it once."""

    @property
    def name(self) -> str:
        """The backend's name in logs, metrics and `/health`."""
        ...

    def __call__(self, sequences: int) -> Backend: ...


def backend_options(factory: Any) -> dict[str, Any]:
    """A factory dataclass's fields: the keyword arguments of the backend it loads."""
    return {f.name: getattr(factory, f.name) for f in dataclasses.fields(factory)}


def physical_cores() -> int:
    """Cores this process may run on, counting each core once however many hardware threads
    it has: ggml's worker threads spin, so two on one core's hyperthreads only slow it down."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores: set[str] = set()
    for cpu in allowed:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores) or os.cpu_count() or 1)
