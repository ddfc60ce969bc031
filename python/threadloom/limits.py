"""Every bound on what one request may ask for, in one place: the server's request schemas
(`server/schemas`) refuse an out-of-range field while decoding, with a 400 naming it, and the
engine (`Request.check`, `SamplingParams.validate`) refuses the same values from the Python
API, so the two can never disagree. The store's own limits (messages per conversation, turn and
metadata sizes) are the Rust core's and come from `threadloom._core`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from msgspec import Meta

from threadloom._core import MAX_THREAD_MESSAGES
from threadloom.errors import InvalidInput, LimitExceeded

if TYPE_CHECKING:
    from threadloom.backends.base import SamplingParams

# Messages (items) in one request: no request can need more than a conversation may hold.
MAX_MESSAGES = MAX_THREAD_MESSAGES
# One request's text, all messages together: far beyond any context, small enough that a
# batch job's mistake is refused before it is tokenized.
MAX_INPUT_CHARS = 4_000_000
# Stop sequences: OpenAI's count. Each is matched against the held-back tail of the output on
# every token, so their number and length bound that work.
MAX_STOPS = 4
MAX_STOP_CHARS = 256
# The samplers take a 32-bit seed and a C int top_k.
SEED_MIN, SEED_MAX = -(2**31), 2**31 - 1
TOP_K_MAX = 2**31 - 1
TEMPERATURE_MIN, TEMPERATURE_MAX = 0.0, 2.0
# top_p is a probability mass: above 0 (0 would keep no token), at most 1.
TOP_P_MAX = 1.0
REPETITION_PENALTY_MIN, REPETITION_PENALTY_MAX = 0.5, 2.0

# The same bounds as msgspec field types, for the request schemas.
Temperature = Annotated[float, Meta(ge=TEMPERATURE_MIN, le=TEMPERATURE_MAX)]
TopP = Annotated[float, Meta(gt=0.0, le=TOP_P_MAX)]
TopK = Annotated[int, Meta(ge=0, le=TOP_K_MAX)]
RepetitionPenalty = Annotated[float, Meta(ge=REPETITION_PENALTY_MIN, le=REPETITION_PENALTY_MAX)]
Seed = Annotated[int, Meta(ge=SEED_MIN, le=SEED_MAX)]
StopString = Annotated[str, Meta(min_length=1, max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopString], Meta(max_length=MAX_STOPS)]


def check_sampling(params: SamplingParams) -> None:
    """Raises InvalidInput or LimitExceeded, naming the field, for a setting out of bounds."""
    if params.max_tokens < 1:
        raise InvalidInput("max_tokens must be at least 1", param="max_tokens")
    if len(params.stop) > MAX_STOPS:
        raise LimitExceeded(f"at most {MAX_STOPS} stop strings", param="stop")
    if any(not s or len(s) > MAX_STOP_CHARS for s in params.stop):
        raise LimitExceeded(f"stop strings must be 1 to {MAX_STOP_CHARS} characters", param="stop")
    if not SEED_MIN <= params.seed <= SEED_MAX:
        raise InvalidInput("seed must fit in 32 bits", param="seed")
    if not TEMPERATURE_MIN <= params.temperature <= TEMPERATURE_MAX:
        raise InvalidInput(
            f"temperature must be between {TEMPERATURE_MIN:g} and {TEMPERATURE_MAX:g}",
            param="temperature",
        )
    if not 0.0 < params.top_p <= TOP_P_MAX:
        raise InvalidInput(f"top_p must be greater than 0 and at most {TOP_P_MAX:g}", param="top_p")
    if not 0 <= params.top_k <= TOP_K_MAX:
        raise InvalidInput(f"top_k must be 0 to {TOP_K_MAX}", param="top_k")
    if not REPETITION_PENALTY_MIN <= params.repetition_penalty <= REPETITION_PENALTY_MAX:
        raise InvalidInput(
            f"repetition_penalty must be between {REPETITION_PENALTY_MIN:g} and "
            f"{REPETITION_PENALTY_MAX:g}",
            param="repetition_penalty",
        )


def check_message_count(count: int) -> None:
    """The one refusal of a request carrying more messages than a conversation may hold."""
    if count > MAX_MESSAGES:
        raise LimitExceeded(f"a request may carry at most {MAX_MESSAGES} messages", param="input")


def check_input_chars(chars: int) -> None:
    if chars > MAX_INPUT_CHARS:
        raise LimitExceeded(
            f"a request may carry at most {MAX_INPUT_CHARS} characters of text", param="input"
        )
