"""Function tools: the call format of the model's family (`families`), the grammar that keeps
calls valid (`grammar`), and the split of a reply into text and calls (`parse`)."""

from threadloom.tools.families import Family, detect, fallback_block, template_tools
from threadloom.tools.grammar import build
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

__all__ = [
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
    "check",
    "detect",
    "fallback_block",
    "parse",
    "template_tools",
]
