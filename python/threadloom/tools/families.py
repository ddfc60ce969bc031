"""Tool-call formats: how a model family writes calls, recognised from its chat template.

- hermes (a template that mentions `<tool_call>`: Qwen 2.5, Hermes): one block per call,
  `<tool_call>\\n{"name": f, "arguments": {...}}\\n</tool_call>`, blocks on separate lines.
- llama3 (Llama 3 headers and a template that renders tools): bare
  `{"name": f, "parameters": {...}}`, calls on separate lines.
- mistral (a template that mentions `[TOOL_CALLS]`):
  `[TOOL_CALLS][{"name": f, "arguments": {...}}, ...]`.
- fallback (a template that renders no `tools`: SmolLM2's, the built-in gemma, chatml and
  llama3; or renders them in a format not known here):
  `<tool_call>[{"name": f, "arguments": {...}}, ...]</tool_call>`.

A template family gets the tool definitions through the template's own `tools` variable. The
fallback gets them in a system message (`fallback_block`) placed before the request's new
messages, with the call format spelled out: the format SmolLM2 was trained on, and one any
instruction model can follow; tools are never silently dropped. Calls are always written with
one space after `:` and `,`: the grammar enforces that layout, so the parser and the stream
splitter rely on it."""

from __future__ import annotations

import json
from typing import Literal

import msgspec

from threadloom._core import PromptEngine
from threadloom.tools.spec import FunctionTool

FamilyName = Literal["hermes", "llama3", "mistral", "fallback"]


class Family(msgspec.Struct, frozen=True, kw_only=True):
    """The text around a group of calls: `open` call (`sep` call)* `close`. `trigger` is how
    `open` begins: what the model writes to start calling (empty: the call itself starts the
    reply). `args_key` is the key holding the arguments."""

    name: FamilyName
    open: str
    sep: str
    close: str
    trigger: str
    args_key: str = "arguments"
    # Whether the template renders `tools` itself (else `fallback_block` carries them).
    template_renders_tools: bool = True


HERMES = Family(
    name="hermes",
    open="<tool_call>\n",
    sep="\n</tool_call>\n<tool_call>\n",
    close="\n</tool_call>",
    trigger="<tool_call>",
)
LLAMA3 = Family(name="llama3", open="", sep="\n", close="", trigger="", args_key="parameters")
MISTRAL = Family(name="mistral", open="[TOOL_CALLS][", sep=", ", close="]", trigger="[TOOL_CALLS]")
FALLBACK = Family(
    name="fallback",
    open="<tool_call>[",
    sep=", ",
    close="]</tool_call>",
    trigger="<tool_call>",
    template_renders_tools=False,
)


# What the engine renders once at start to learn the family: a conversation with a stored call
# and its output, and one tool whose name appears in the prompt only if the template renders
# `tools`. Judged by what the template writes, not by the model's name.
PROBE_NAME = "threadloom_probe_tool"
PROBE_TOOLS = json.dumps(
    [{"type": "function", "function": {"name": PROBE_NAME, "parameters": {"type": "object"}}}]
)
PROBE_MESSAGES: list[dict[str, str]] = [
    {"role": "user", "content": "hi"},
    {
        "role": "assistant",
        "content": "",
        "tool": json.dumps(
            {"type": "function_call", "call_id": "c1", "name": PROBE_NAME, "arguments": "{}"}
        ),
    },
    {
        "role": "tool",
        "content": "ok",
        "tool": json.dumps({"type": "function_call_output", "call_id": "c1"}),
    },
]


def detect(rendered: str) -> Family:
    """The family of a template, from its rendering of `PROBE_MESSAGES` with `PROBE_TOOLS`. A
    template that does not show the model the tools gets the fallback whatever else it
    writes; so does one that shows them in a format not known here."""
    if PROBE_NAME not in rendered:
        return FALLBACK
    if "<tool_call>" in rendered:
        return HERMES
    if "[TOOL_CALLS]" in rendered or "[AVAILABLE_TOOLS]" in rendered:
        return MISTRAL
    if "<|start_header_id|>" in rendered:
        return LLAMA3
    return FALLBACK


def template_family(prompt: PromptEngine) -> Family:
    """The family of the template `prompt` renders with: its rendering of the probe."""
    probe = prompt.assemble_messages(
        PROBE_MESSAGES, tools=PROBE_TOOLS, max_tokens=1, budget=1 << 30
    )
    return detect(probe.prompt)


def template_tools(functions: tuple[FunctionTool, ...]) -> str:
    """The `tools` JSON chat templates read: OpenAI's chat form, as Hugging Face's
    templates expect."""
    return json.dumps([_definition(f) for f in functions], ensure_ascii=False)


def _definition(f: FunctionTool) -> dict[str, object]:
    function: dict[str, object] = {"name": f.name}
    if f.description:
        function["description"] = f.description
    function["parameters"] = f.schema()
    return {"type": "function", "function": function}


def fallback_block(functions: tuple[FunctionTool, ...], forced: bool, parallel: bool) -> str:
    """The system message that carries tools for a template that renders none."""
    tools = "\n".join(json.dumps(_definition(f), ensure_ascii=False) for f in functions)
    one = '{"name": "<function name>", "arguments": {<arguments as JSON>}}'
    calls = f"[{one}]" if not parallel else f"[{one}, ...]"
    when = (
        "You must call a tool now: answer only with the call."
        if forced
        else "If a tool helps, answer only with the call; otherwise answer in plain text."
    )
    return (
        "You have access to the following tools:\n<tools>\n"
        f"{tools}\n</tools>\n\n"
        f"To call tools, write <tool_call>{calls}</tool_call> "
        f"with arguments that match the tool's parameters. {when}"
    )


def call_text(family: Family, calls: list[tuple[str, str]]) -> str:
    """`(name, arguments)` calls written as the model writes them in `family`'s format."""
    objects = [f'{{"name": "{name}", "{family.args_key}": {args or "{}"}}}' for name, args in calls]
    return family.open + family.sep.join(objects) + family.close
