"""The formats a reply must match (a JSON schema, or valid tool calls): compiled by the core's
`Grammars` over the model's own vocabulary into a `Constraint` the scheduler applies to every
token. The vocabulary trie is built once per model, at the first constrained request."""

from __future__ import annotations

import json
import threading

import msgspec

from threadloom import tools
from threadloom._core import Constraint, Grammars, Tokenizer
from threadloom.errors import InvalidInput, ThreadloomError
from threadloom.request import Request


class OutputFormats:
    def __init__(self, tokenizer: Tokenizer, tool_family: tools.Family) -> None:
        self._tokenizer = tokenizer
        self._grammars: Grammars | None = None
        self._lock = threading.Lock()
        self.tool_family = tool_family
        self._marked: dict[int, bool] = {}

    def grammars(self) -> Grammars:
        with self._lock:
            if self._grammars is None:
                self._grammars = Grammars(self._tokenizer)
            return self._grammars

    def constraint(self, req: Request) -> Constraint | None:
        """The matcher `req`'s reply must pass (None: free text). Runs in a worker thread:
        compiling a schema can take milliseconds. A schema llguidance cannot compile is an
        `InvalidInput` naming the request's own field, with llguidance's reason."""
        if req.tools is not None:
            return self._tools(req)
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

    def _tools(self, req: Request) -> Constraint:
        spec = req.tools
        assert spec is not None
        if req.output_schema is not None:
            # One grammar per reply: text that must match a schema, or calls.
            raise InvalidInput(
                f"{req.output_schema_field} cannot be combined with tools",
                param=req.output_schema_field,
            )
        source = tools.build(self.tool_family, spec, self._tokenizer, self.marked)
        try:
            return self.grammars().compile("lark", source)
        except InvalidInput as e:
            raise self._culprit(spec) or InvalidInput(
                f"{spec.field} cannot be enforced: {e}", param=spec.field
            ) from None

    def marked(self, token: int) -> bool:
        """Whether llguidance's trie holds `token` as special: a grammar that spells its
        text cannot produce it (the core's tokenizer gives user-defined tokens, such as
        Qwen's `<tool_call>`, for their text, while the trie marks them special)."""
        known = self._marked.get(token)
        if known is None:
            piece = (self._tokenizer.piece(token) or b"").decode("utf-8", "replace")
            if len(piece) < 2:
                known = False
            else:
                c = self.grammars().compile("lark", f"start: {json.dumps(piece)}\n")
                try:
                    c.advance(token)
                    known = False
                except ThreadloomError:  # the matcher refuses the id its own text forced
                    known = True
            self._marked[token] = known
        return known

    def _culprit(self, spec: tools.ToolSpec) -> InvalidInput | None:
        """The error naming the first function whose parameters do not compile on their own."""
        for i, f in enumerate(spec.functions):
            try:
                self.grammars().compile("json_schema", msgspec.json.encode(f.schema()).decode())
            except InvalidInput as e:
                field = f"{spec.field}[{i}].parameters"
                return InvalidInput(
                    f"{field} is not a schema this server can enforce: {e}", param=field
                )
        return None
