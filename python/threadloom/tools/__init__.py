"""Function tools: the call format of the model's family (`families`), the grammar that keeps
calls valid (`grammar`), and the split of a reply into text and calls (`parse`)."""

from threadloom.tools.families import (
    FALLBACK,
    PROBE_MESSAGES,
    PROBE_TOOLS,
    Family,
    detect,
    fallback_block,
    template_family,
    template_tools,
)
from threadloom.tools.grammar import build
from threadloom.tools.history import calls_as_text
from threadloom.tools.parse import (
    CallArguments,
    CallDone,
    CallScanner,
    CallStarted,
    Piece,
    Text,
    parse,
)
from threadloom.tools.spec import FunctionTool, ToolCall, ToolSpec, check
from threadloom.tools.turns import call_turn, output_turn

__all__ = [
    "FALLBACK",
    "PROBE_MESSAGES",
    "PROBE_TOOLS",
    "CallArguments",
    "CallDone",
    "CallScanner",
    "CallStarted",
    "Family",
    "FunctionTool",
    "Piece",
    "Text",
    "ToolCall",
    "ToolSpec",
    "build",
    "call_turn",
    "calls_as_text",
    "check",
    "detect",
    "fallback_block",
    "output_turn",
    "parse",
    "template_family",
    "template_tools",
]
