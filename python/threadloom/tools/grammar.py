"""The Lark grammar (llguidance's dialect) that keeps a reply to valid calls.

`tool_choice` "required" or a function's name: the whole reply is one group of calls. "auto":
the model writes free text, and from the family's trigger on (`<tool_call>`...) the rest must be
calls; llguidance's lazy rules do this (`prefix[lazy]` ends at the first trigger, after which
only calls parse), so text that never opens a call is not constrained at all. A trigger the
vocabulary holds as one special token (Qwen's `<tool_call>`, Mistral's `[TOOL_CALLS]`) is
matched as that token (`<[id]>`), since the model writes it so. A family without a trigger
(Llama 3: the call is bare JSON) lets "auto" replies be either text that does not start with
`{` or calls. Each call's arguments are its function's `parameters` schema (`%json`), in the
fixed one-space layout."""

from __future__ import annotations

import json
import re
from typing import Any

from threadloom._core import Tokenizer
from threadloom.tools.families import Family
from threadloom.tools.spec import ToolSpec

# The layout every JSON value is written in (as `formats.py`'s schemas are, in the core):
# flexible whitespace would let a small model pad a call with newlines until it runs out.
_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _schema(schema: dict[str, Any]) -> str:
    return json.dumps({**schema, "x-guidance": _LAYOUT}, ensure_ascii=False)


def special_token(tokenizer: Tokenizer, text: str) -> int | None:
    """The id of the single special (control or user-defined) token `text` is, if any."""
    if not text:
        return None
    ids = tokenizer.encode(text, parse_special=True)
    if len(ids) == 1 and tokenizer.encode(text, parse_special=False) != ids:
        return ids[0]
    return None


def build(family: Family, spec: ToolSpec, tokenizer: Tokenizer) -> str:
    """The grammar of `spec`'s calls in `family`'s format."""
    lines: list[str] = []
    names = []
    for i, f in enumerate(spec.offered()):
        head = f'{{"name": "{f.name}", "{family.args_key}": '
        lines.append(f"call_{i}: {_literal(head)} args_{i} {_literal('}')}")
        lines.append(f"args_{i}: %json {_schema(f.schema())}")
        names.append(f"call_{i}")
    lines.append("call: " + " | ".join(names))
    more = f"({_literal(family.sep)} call)*" if spec.parallel else ""
    close = _literal(family.close) if family.close else ""
    token = special_token(tokenizer, family.trigger)
    after_trigger = family.open[len(family.trigger) :]
    rest = " ".join(
        p for p in (_literal(after_trigger) if after_trigger else "", "call", more, close) if p
    )
    lines.append(f"rest: {rest}")
    opener = (
        f"<[{token}]>" if token is not None else _literal(family.trigger) if family.trigger else ""
    )
    lines.append(f"calls: {opener} rest" if opener else "calls: rest")
    if spec.forced:
        start = "start: calls"
    elif not family.trigger:
        start = "start: calls | TEXT\nTEXT: /([^{](?s:.*))?/"
    elif token is not None:
        start = f"start: free | free {opener} rest\nfree: /(?s:.*)/"
    else:
        trigger = re.escape(family.trigger).replace("/", "\\/")
        start = f"start: free | prefix rest\nfree: /(?s:.*)/\nprefix[lazy]: /(?s:.*){trigger}/"
    return "\n".join([start, *lines]) + "\n"
