"""A deterministic backend for tests: same step interface as the real ones, scripted output.
Never a default; tests pass it to `Engine(..., backend=ScriptedFactory(...))`."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence

from threadloom.backends.base import Constraints, SamplingParams, StateData, TokenConstraint

_STATE_MAGIC = b"SCRIPTED-STATE"


class ScriptedBackend:
    """Each sequence replies with the ids `script(prompt_ids)` returns, one per `decode` step,
    and tracks its evaluated tokens the way a real engine does. It counts the prompt tokens it
    evaluated and logs every call in order (`("prefill", seq, tokens)`, `("decode", seq, 1)`),
    so tests can check the scheduler's interleaving."""

    def __init__(
        self,
        script: Callable[[Sequence[int]], Sequence[int]],
        sequences: int,
        context_length: int,
        delay_s: float = 0.0,
        fail_after: int | None = None,
    ) -> None:
        self._script = script
        self._context_length = context_length
        self._delay_s = delay_s
        self._fail_after = fail_after
        self._held: list[list[int]] = [[] for _ in range(sequences)]
        self._pending: list[int | None] = [None] * sequences
        self._replies: list[Sequence[int] | None] = [None] * sequences
        self._sampled = [0] * sequences
        self.prompt_tokens_evaluated = 0
        self.log: list[tuple[str, int, int]] = []

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def sequences(self) -> int:
        return len(self._held)

    def held(self, seq: int) -> Sequence[int]:
        return self._held[seq]

    def prefill(self, seq: int, keep: int, ids: Sequence[int]) -> None:
        if not ids:
            raise ValueError("prefill needs at least one token")
        held = self._held[seq]
        del held[keep:]  # in place: a long conversation's prompt is not copied each chunk
        held.extend(ids)
        self._pending[seq] = None
        self._replies[seq] = None
        self.prompt_tokens_evaluated += len(ids)
        self.log.append(("prefill", seq, len(ids)))

    def decode(
        self, batch: Sequence[tuple[int, SamplingParams]], constraints: Constraints = ()
    ) -> list[int | None]:
        masks = constraints or [None] * len(batch)
        return [self._step(seq, mask) for (seq, _), mask in zip(batch, masks, strict=True)]

    def _step(self, seq: int, mask: TokenConstraint | None = None) -> int | None:
        self.log.append(("decode", seq, 1))
        pending = self._pending[seq]
        if pending is not None:
            self._held[seq].append(pending)
            self._pending[seq] = None
        reply = self._replies[seq]
        if reply is None:
            reply = self._replies[seq] = list(self._script(self._held[seq]))
            self._sampled[seq] = 0
        n = self._sampled[seq]
        # Under a constraint the reply goes on past its script until the format is complete.
        if (n >= len(reply) and mask is None) or len(self._held[seq]) >= self._context_length:
            return None
        if self._fail_after is not None and n >= self._fail_after:
            raise RuntimeError("scripted failure")
        if self._delay_s:
            time.sleep(self._delay_s)
        self._sampled[seq] = n + 1
        wanted = reply[n] if n < len(reply) else -1
        token = wanted if mask is None else _masked(wanted, mask)
        self._pending[seq] = token
        return token

    def save_state(self, seq: int) -> tuple[Sequence[int], bytes] | None:
        """The held ids are the whole state: a payload that only this backend reads."""
        held = self._held[seq]
        if not held:
            return None
        self.log.append(("save", seq, len(held)))
        return list(held), _STATE_MAGIC + struct.pack(f"<{len(held)}I", *held)

    def load_state(self, seq: int, data: StateData, ids: Sequence[int]) -> bool:
        self._held[seq], self._pending[seq], self._replies[seq] = [], None, None
        raw = bytes(data)
        body = raw[len(_STATE_MAGIC) :]
        if not raw.startswith(_STATE_MAGIC) or len(body) != 4 * len(ids):
            return False
        if list(struct.unpack(f"<{len(ids)}I", body)) != list(ids):
            return False
        self._held[seq] = list(ids)
        self.log.append(("restore", seq, len(ids)))
        return True

    def share_prefix(self, src: int, dst: int, n: int) -> int:
        n = min(n, len(self._held[src]))
        self._held[dst], self._pending[dst], self._replies[dst] = self._held[src][:n], None, None
        self.log.append(("share", dst, n))
        return n

    def close(self) -> None:
        self._held = [[] for _ in self._held]


def _masked(wanted: int, mask: TokenConstraint) -> int:
    """The scripted token where the format allows it, else the lowest id it allows: a scripted
    reply under a constraint still comes out valid, as a model's would."""
    allowed = mask.allowed()
    return wanted if wanted in allowed else allowed[0]


class ScriptedFactory:
    name = "scripted"

    def __init__(
        self,
        script: Callable[[Sequence[int]], Sequence[int]],
        *,
        context_length: int = 8192,
        delay_s: float = 0.0,
        fail_after: int | None = None,
    ) -> None:
        self.script = script
        self.context_length = context_length
        self.delay_s = delay_s
        self.fail_after = fail_after
        self.instances: list[ScriptedBackend] = []

    def __call__(self, sequences: int) -> ScriptedBackend:
        backend = ScriptedBackend(
            self.script, sequences, self.context_length, self.delay_s, self.fail_after
        )
        self.instances.append(backend)
        return backend
