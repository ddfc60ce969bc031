"""The formats a reply must match (a JSON schema; tool calls build on it): compiled by the
core's `Grammars` over the model's own vocabulary into a `Constraint` the scheduler applies to
every token. The vocabulary trie is built once per model, at the first constrained request."""

from __future__ import annotations

import threading

import msgspec

from threadloom._core import Constraint, Grammars, Tokenizer
from threadloom.errors import InvalidInput
from threadloom.request import Request


class OutputFormats:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._grammars: Grammars | None = None
        self._lock = threading.Lock()

    def grammars(self) -> Grammars:
        with self._lock:
            if self._grammars is None:
                self._grammars = Grammars(self._tokenizer)
            return self._grammars

    def constraint(self, req: Request) -> Constraint | None:
        """The matcher `req`'s reply must pass (None: free text). Runs in a worker thread:
        compiling a schema can take milliseconds. A schema llguidance cannot compile is an
        `InvalidInput` naming the request's own field, with llguidance's reason."""
        if req.output_schema is None:
            return None
        source = msgspec.json.encode(req.output_schema).decode()
        try:
            return self.grammars().compile("json_schema", source)
        except InvalidInput as e:
            raise InvalidInput(
                f"{req.output_schema_field} is not a schema this server can enforce: {e}",
                param=req.output_schema_field,
            ) from None
