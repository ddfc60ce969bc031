"""What a generation yields: `Started`, then `TokenEvent`s, then one `Finished` with the
`Result`."""

from __future__ import annotations

from typing import Literal

import msgspec

from threadloom.tools.spec import ToolCall


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """One finished generation. Timings are seconds from the moment the prompt was assembled
    and the request joined the scheduler's queue."""

    status: Literal["completed", "incomplete", "failed"]
    text: str
    reasoning: str | None
    finish_reason: Literal["stop", "length", "cancelled", "error"]
    usage: Usage
    model: str
    response_id: str | None = None
    thread_id: str | None = None
    turn_id: str | None = None
    error: str | None = None
    time_to_first_token_s: float | None = None
    total_s: float = 0.0
    messages_dropped: int = 0
    # Waiting for a free slot; evaluating the prompt (all its chunks, interleaved with other
    # requests' decoding); output tokens after the first per second.
    queue_s: float = 0.0
    prompt_eval_s: float = 0.0
    decode_tokens_per_s: float | None = None
    # The calls the reply made (a request with `tools`); `text` is then what came before them.
    tool_calls: tuple[ToolCall, ...] = ()


class Started(msgspec.Struct, frozen=True, tag="started"):
    prompt_tokens: int
    cached_tokens: int
    slot: int
    # The id the response will be stored under (None when nothing is stored), known before the
    # first token so a stream can name it up front.
    response_id: str | None = None


class TokenEvent(msgspec.Struct, frozen=True, tag="token"):
    text: str
    reasoning: bool = False


class Finished(msgspec.Struct, frozen=True, tag="finished"):
    result: Result


Event = Started | TokenEvent | Finished
