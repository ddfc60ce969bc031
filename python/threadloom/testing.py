"""A deterministic backend for tests: same interface as the real ones, scripted output. Never a
default; tests pass it to `Engine(..., backend=ScriptedFactory(...))`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

from threadloom.backends.base import SamplingParams


class ScriptedBackend:
    """Yields the ids `script(prompt_ids)` returns, one at a time; tracks the evaluated prefix
    the way a real engine does, and counts how many prompt tokens it had to evaluate."""

    def __init__(
        self,
        script: Callable[[Sequence[int]], Sequence[int]],
        context_length: int,
        delay_s: float = 0.0,
        fail_after: int | None = None,
    ) -> None:
        self._script = script
        self._context_length = context_length
        self._delay_s = delay_s
        self._fail_after = fail_after
        self._evaluated: list[int] = []
        self.prompt_tokens_evaluated = 0

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def evaluated(self) -> Sequence[int]:
        return self._evaluated

    def generate(
        self, ids: Sequence[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[int]:
        keep = 0
        limit = min(len(self._evaluated), len(ids) - 1)
        while keep < limit and self._evaluated[keep] == ids[keep]:
            keep += 1
        self.prompt_tokens_evaluated += len(ids) - keep
        self._evaluated = list(ids)
        for n, token in enumerate(self._script(ids)):
            if n >= params.max_tokens or cancel.is_set():
                return
            if self._fail_after is not None and n >= self._fail_after:
                raise RuntimeError("scripted failure")
            if self._delay_s:
                time.sleep(self._delay_s)
            yield token
            self._evaluated.append(token)

    def reset(self) -> None:
        self._evaluated = []

    def close(self) -> None:
        self._evaluated = []


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

    def __call__(self) -> ScriptedBackend:
        backend = ScriptedBackend(self.script, self.context_length, self.delay_s, self.fail_after)
        self.instances.append(backend)
        return backend
