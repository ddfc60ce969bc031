"""The Lark grammar (llguidance's dialect) that keeps a reply to valid calls.

`tool_choice` "required" or a function's name: the whole reply is one group of calls. "auto":
the model writes free text, and from the family's trigger on (`<tool_call>`...) the rest must be
calls; llguidance's lazy rules do this (`prefix[lazy]` ends at the first trigger, after which
only calls parse), so text that never opens a call is not constrained at all. A trigger the
vocabulary trie holds as a special token (Qwen's `<tool_call>`, Mistral's `[TOOL_CALLS]`) is
matched as that token (`<[id]>`), since the model writes it so. A family without a trigger
(Llama 3: the call is bare JSON) lets "auto" replies be either text that does not start with
`{` or calls. Each call's arguments are its function's `parameters` schema (`%json`), in the
fixed one-space layout."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from threadloom._core import Tokenizer
from threadloom.tools.families import Family
from threadloom.tools.spec import ToolSpec

# The layout every JSON value is written in (as `formats.py`'s schemas are, in the core):
# flexible whitespace would let a small model pad a call with newlines until it runs out.
# Whether the vocabulary trie holds a token id as special (see `markers`).
Marked = Callable[[int], bool]

_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _schema(schema: dict[str, Any]) -> str:
    return json.dumps({**schema, "x-guidance": _LAYOUT}, ensure_ascii=False)


def markers(tokenizer: Tokenizer, text: str, marked: Marked) -> str:
    """`text` as grammar items: plain text as a literal, and each token the vocabulary trie
    holds as a special token (`marked`) as that token (`<[id]>`). Qwen's `<tool_call>` is such
    a token: the tokenizer writes it for the text, yet llguidance sees it as special, so the
    text alone could never be written."""
    items: list[str] = []
    plain: list[int] = []
    for token in tokenizer.encode(text, parse_special=False):
        if marked(token):
            if plain:
                items.append(_literal(tokenizer.decode(plain)))
                plain = []
            items.append(f"<[{token}]>")
        else:
            plain.append(token)
    if plain:
        items.append(_literal(tokenizer.decode(plain)))
    return " ".join(items)


def build(family: Family, spec: ToolSpec, tokenizer: Tokenizer, marked: Marked) -> str:
    """The grammar of `spec`'s calls in `family`'s format."""
    lines: list[str] = []
    names = []
    for i, f in enumerate(spec.offered()):
        head = f'{{"name": "{f.name}", "{family.args_key}": '
        lines.append(f"call_{i}: {_literal(head)} args_{i} {_literal('}')}")
        lines.append(f"args_{i}: %json {_schema(f.schema())}")
        names.append(f"call_{i}")
    lines.append("call: " + " | ".join(names))

    def text(t: str) -> str:
        return markers(tokenizer, t, marked) if t else ""

    more = f"({text(family.sep)} call)*" if spec.parallel else ""
    after_trigger = family.open[len(family.trigger) :]
    # A newline may follow the last call: models end a block with one before ending the turn,
    # and without it the only way on after a newline would be another call.
    rest = " ".join(p for p in (text(after_trigger), "call", more, text(family.close)) if p)
    rest += ' "\\n"?'
    lines.append(f"rest: {rest}")
    opener = text(family.trigger)
    lines.append(f"calls: {opener} rest" if opener else "calls: rest")
    if spec.forced:
        start = "start: calls"
    elif not family.trigger:
        start = "start: calls | TEXT\nTEXT: /([^{](?s:.*))?/"
    elif "<[" in opener:
        # The trigger is (or holds) a special token: free text cannot contain it, so the
        # text simply ends where the token comes.
        start = f"start: free | free {opener} rest\nfree: /(?s:.*)/"
    else:
        trigger = re.escape(family.trigger).replace("/", "\\/")
        start = f"start: free | prefix rest\nfree: /(?s:.*)/\nprefix[lazy]: /(?s:.*){trigger}/"
    return "\n".join([start, *lines]) + "\n"
