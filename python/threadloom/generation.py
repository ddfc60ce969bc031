"""A scheduler job whose tokens become text: UTF-8 reassembly, stop strings and the split of
`<think>` reasoning from the answer, done on the scheduler's thread as each token arrives."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from threadloom._core import Tokenizer
from threadloom.backends.base import SamplingParams
from threadloom.events import TokenEvent
from threadloom.scheduler import Finish, Job
from threadloom.textstream import StopMatcher, ThinkSplitter, Utf8Stream

# What a `TextJob` tells its sink: admitted, a piece of text, over, or refused.
STARTED = "started"
ENDED = "ended"
Signal = TokenEvent | str | Exception


class TextJob(Job):
    """Accumulates the reply (`text`, `reasoning`, `output_ids`) and passes every step to
    `sink` (called on the scheduler's thread)."""

    def __init__(
        self,
        ids: Sequence[int],
        params: SamplingParams,
        owner: str,
        *,
        tokenizer: Tokenizer,
        eog: frozenset[int],
        split_thinking: bool,
        sink: Callable[[Signal], None],
    ) -> None:
        super().__init__(ids, params, owner)
        self._tokenizer = tokenizer
        self._eog = eog
        self._sink = sink
        self._utf8 = Utf8Stream()
        self._stops = StopMatcher(params.stop)
        self._think = ThinkSplitter(split_thinking)
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.output_ids: list[int] = []
        self.finish: Finish | None = None
        self.error: str | None = None

    def on_start(self) -> None:
        self._sink(STARTED)

    def on_token(self, token: int) -> Finish | None:
        if token in self._eog:
            return "stop"
        self.output_ids.append(token)
        self._emit(self._utf8.feed(self._tokenizer.piece(token) or b""))
        return "stop" if self._stops.stopped else None

    def on_end(self, finish: Finish, error: str | None) -> None:
        self._emit(self._utf8.flush())
        for reasoning, piece in self._think.feed(self._stops.flush()) + self._think.flush():
            self._piece(reasoning, piece)
        self.finish, self.error = finish, error
        self._sink(ENDED)

    def on_refused(self, error: Exception) -> None:
        self._sink(error)

    def _emit(self, text: str) -> None:
        for reasoning, piece in self._think.feed(self._stops.feed(text)):
            self._piece(reasoning, piece)

    def _piece(self, reasoning: bool, piece: str) -> None:
        (self.reasoning if reasoning else self.text).append(piece)
        self._sink(TokenEvent(piece, reasoning))
