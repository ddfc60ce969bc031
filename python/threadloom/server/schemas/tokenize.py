"""Tokenization and token counting (threadloom's own endpoint; names follow llama.cpp's
`/tokenize`: `tokens`, `add_special`, `with_pieces`)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from threadloom.server.schemas.chat import ChatMessage
from threadloom.server.schemas.limits import MAX_ITEMS


class TokenizeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Exactly one of `text` (tokenized as is) and `messages` (rendered with the model's chat
    template first, exactly as a chat request's prompt)."""

    text: str | None = None
    messages: Annotated[list[ChatMessage], Meta(min_length=1, max_length=MAX_ITEMS)] | None = None
    model: str | None = None
    # text only: prepend the model's BOS token the way the tokenizer does.
    add_special: bool = False
    # messages only: open the assistant's turn at the end, as generation does.
    add_generation_prompt: bool = True
    enable_thinking: bool | None = None
    # Each token's text too; a piece that is not valid UTF-8 on its own comes as its bytes.
    with_pieces: bool = False


Piece = str | list[int]


class TokenizeResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    tokens: list[int]
    count: int
    pieces: list[Piece] | None = None


class TokenCount(msgspec.Struct, kw_only=True):
    count: int
