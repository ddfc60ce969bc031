"""The request bounds every dialect's schema uses, so that an oversized request is refused while
decoding, with a 400 that names the field. They are `threadloom.limits`', which the engine
checks too; this module only names them for the schemas."""

from __future__ import annotations

from threadloom.limits import (
    MAX_MESSAGES,
    MAX_STOP_CHARS,
    MAX_STOPS,
    RepetitionPenalty,
    Seed,
    StopList,
    StopString,
    Temperature,
    TopK,
    TopP,
)

# Items (messages) in one request.
MAX_ITEMS = MAX_MESSAGES

__all__ = [
    "MAX_ITEMS",
    "MAX_STOPS",
    "MAX_STOP_CHARS",
    "RepetitionPenalty",
    "Seed",
    "StopList",
    "StopString",
    "Temperature",
    "TopK",
    "TopP",
]
