"""Bounds on what one request may carry, shared by every dialect's schema so that an oversized
request is refused while decoding, with a 400 that names the field."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from threadloom import MAX_THREAD_MESSAGES

# Items (messages) in one request: no request can need more than a conversation may hold.
MAX_ITEMS = MAX_THREAD_MESSAGES
# Stop sequences: OpenAI's count; a stop string longer than this is not a stop sequence.
MAX_STOPS = 4
MAX_STOP_CHARS = 256
StopString = Annotated[str, Meta(min_length=1, max_length=MAX_STOP_CHARS)]
# The samplers take a 32-bit seed.
Seed = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
