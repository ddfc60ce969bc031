"""The tool-call formats module: family detection, the prompt's tool block, the call grammar
(compiled by llguidance over SmolLM2's real vocabulary and walked token by token) and the split
of a reply into text and calls, whole and streamed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from threadloom._core import ChatTemplate, Constraint, Grammars, Tokenizer
from threadloom.errors import InvalidInput
from threadloom.formats import OutputFormats
from threadloom.models import default_model_path, prompt_engine
from threadloom.tools import (
    CallArguments,
    CallDone,
    CallScanner,
    CallStarted,
    FunctionTool,
    Text,
    ToolSpec,
    build,
    check,
    detect,
    fallback_block,
    parse,
    template_tools,
)
from threadloom.tools.families import (
    FALLBACK,
    HERMES,
    LLAMA3,
    MISTRAL,
    PROBE_MESSAGES,
    PROBE_TOOLS,
    Family,
)
from threadloom.tools.grammar import Marked

WEATHER = FunctionTool(
    name="weather",
    description="The weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
TIME = FunctionTool(name="time", parameters={"type": "object", "properties": {}})


def spec(choice: str = "auto", parallel: bool = True) -> ToolSpec:
    return ToolSpec(functions=(WEATHER, TIME), choice=choice, parallel=parallel, call_prefix="c")


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(default_model_path())


@pytest.fixture(scope="module")
def grammars(tokenizer: Tokenizer) -> Iterator[Grammars]:
    yield Grammars(tokenizer)


@pytest.fixture(scope="module")
def marked(tokenizer: Tokenizer) -> Marked:
    return OutputFormats(tokenizer, FALLBACK).marked


def accepts(g: Grammars, tk: Tokenizer, grammar: str, text: str) -> bool:
    """Whether the grammar lets a model write `text` (as the tokenizer splits it) and end."""
    c: Constraint = g.compile("lark", grammar)
    for token in tk.encode(text, parse_special=False):
        if token not in set(c.allowed()):
            return False
        c.advance(token)
    return c.accepting


def family_of(source: str) -> Family:
    template = ChatTemplate(source)
    return detect(template.render(PROBE_MESSAGES, add_generation_prompt=True, tools=PROBE_TOOLS))


def test_families_are_detected_from_the_template() -> None:
    qwen = (
        "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }}{% endfor %}</tools>"
        "Call with <tool_call></tool_call>{% endif %}{% for m in messages %}{{ m.content }}"
        "{% endfor %}"
    )
    assert family_of(qwen) is HERMES
    mistral = "[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]"
    assert family_of(mistral) is MISTRAL
    llama = "<|start_header_id|>system<|end_header_id|>{{ tools | tojson }}<|eot_id|>"
    assert family_of(llama) is LLAMA3
    # Templates that never show the tools get the fallback, whatever else they mention.
    for name in ("chatml", "gemma", "llama3"):
        source = ChatTemplate.builtin_source(name)
        assert source is not None
        assert family_of(source) is FALLBACK
    assert family_of("<tool_call>{% for m in messages %}{{ m.content }}{% endfor %}") is FALLBACK
    # The real default model's template (SmolLM2's) renders no tools.
    prompt = prompt_engine(default_model_path(), None, None)
    probe = prompt.assemble_messages(PROBE_MESSAGES, tools=PROBE_TOOLS)
    assert detect(probe.prompt) is FALLBACK


def test_tool_definitions_render_for_templates_and_the_fallback() -> None:
    rendered = json.loads(template_tools((WEATHER,)))
    assert rendered == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city",
                "parameters": WEATHER.parameters,
            },
        }
    ]
    block = fallback_block((WEATHER,), forced=True, parallel=False)
    assert '"name": "weather"' in block and "<tool_call>[" in block and "must call" in block


def test_specs_are_checked() -> None:
    with pytest.raises(InvalidInput) as e:
        check(ToolSpec(functions=(WEATHER, WEATHER)))
    assert e.value.param == "tools[1].name"
    with pytest.raises(InvalidInput) as e:
        check(ToolSpec(functions=(FunctionTool(name="bad name"),)))
    assert e.value.param == "tools[0].name"
    with pytest.raises(InvalidInput) as e:
        check(ToolSpec(functions=(WEATHER,), choice="missing"))
    assert e.value.param == "tool_choice"


CALL = '{"name": "weather", "arguments": {"city": "Paris"}}'
CALL2 = '{"name": "time", "arguments": {}}'


@pytest.mark.parametrize(
    ("family", "good", "bad"),
    [
        (
            FALLBACK,
            [f"<tool_call>[{CALL}]</tool_call>", f"<tool_call>[{CALL}, {CALL2}]</tool_call>"],
            [
                "Hello",
                '<tool_call>[{"name": "weather", "arguments": {"town": "Paris"}}]</tool_call>',
                '<tool_call>[{"name": "nope", "arguments": {}}]</tool_call>',
                f"<tool_call>[{CALL}]</tool_call> and more",
            ],
        ),
        (
            HERMES,
            [
                f"<tool_call>\n{CALL}\n</tool_call>",
                f"<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n{CALL2}\n</tool_call>",
            ],
            ["Hello", f"<tool_call>{CALL}</tool_call>"],
        ),
        (
            LLAMA3,
            [CALL.replace("arguments", "parameters")],
            ["Hello", CALL],
        ),
        (MISTRAL, [f"[TOOL_CALLS][{CALL}, {CALL2}]"], ["Hello", f"[TOOL_CALLS]{CALL}"]),
    ],
)
def test_required_allows_exactly_valid_calls(
    grammars: Grammars,
    tokenizer: Tokenizer,
    marked: Marked,
    family: Family,
    good: list[str],
    bad: list[str],
) -> None:
    grammar = build(family, spec("required"), tokenizer, marked)
    for text in good:
        assert accepts(grammars, tokenizer, grammar, text), text
    for text in bad:
        assert not accepts(grammars, tokenizer, grammar, text), text


def test_auto_leaves_text_free_and_constrains_from_the_trigger(
    grammars: Grammars, tokenizer: Tokenizer, marked: Marked
) -> None:
    grammar = build(FALLBACK, spec("auto"), tokenizer, marked)
    assert accepts(grammars, tokenizer, grammar, "Just text, {no} [calls] <tool here.")
    assert accepts(grammars, tokenizer, grammar, f"Let me look. <tool_call>[{CALL}]</tool_call>")
    assert not accepts(grammars, tokenizer, grammar, "I will <tool_call>call something")
    llama = build(LLAMA3, spec("auto"), tokenizer, marked)
    assert accepts(grammars, tokenizer, llama, "Plain answer.")
    assert accepts(grammars, tokenizer, llama, CALL.replace("arguments", "parameters"))
    assert not accepts(grammars, tokenizer, llama, '{"not": "a call"}')


def test_one_call_unless_parallel_and_named_choice(
    grammars: Grammars, tokenizer: Tokenizer, marked: Marked
) -> None:
    single = build(FALLBACK, spec("required", parallel=False), tokenizer, marked)
    assert accepts(grammars, tokenizer, single, f"<tool_call>[{CALL}]</tool_call>")
    assert not accepts(grammars, tokenizer, single, f"<tool_call>[{CALL}, {CALL2}]</tool_call>")
    named = build(FALLBACK, spec("time"), tokenizer, marked)
    assert accepts(grammars, tokenizer, named, f"<tool_call>[{CALL2}]</tool_call>")
    assert not accepts(grammars, tokenizer, named, f"<tool_call>[{CALL}]</tool_call>")


def test_a_reply_splits_into_text_and_calls() -> None:
    text, calls = parse(FALLBACK, spec(), f"Looking.\n<tool_call>[{CALL}, {CALL2}]</tool_call>")
    assert text == "Looking.\n"
    assert [(c.id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("c_0", "weather", {"city": "Paris"}),
        ("c_1", "time", {}),
    ]
    assert parse(FALLBACK, spec(), "No tools needed.") == ("No tools needed.", [])
    # Spaces before a call are not text; a call cut off (max tokens) is left out.
    assert parse(HERMES, spec(), f"\n\n<tool_call>\n{CALL}\n</tool_call>")[0] == ""
    assert parse(FALLBACK, spec(), '<tool_call>[{"name": "weather", "arguments": {"ci') == ("", [])
    llama = CALL.replace("arguments", "parameters")
    assert parse(LLAMA3, spec(), llama)[1][0].arguments == '{"city": "Paris"}'
    assert parse(LLAMA3, spec(), "Sunny {maybe}.") == ("Sunny {maybe}.", [])


def test_a_streamed_reply_gives_the_same_split_in_pieces() -> None:
    tricky = '{"name": "weather", "arguments": {"city": "a}\\"]"}}'
    reply = f"Sure <tool_call>[{CALL}, {tricky}]</tool_call>"
    scanner = CallScanner(FALLBACK, spec())
    pieces = [p for ch in reply for p in scanner.feed(ch)] + scanner.finish()
    text = "".join(p.text for p in pieces if isinstance(p, Text))
    assert text == "Sure "
    started = [p for p in pieces if isinstance(p, CallStarted)]
    assert [(p.index, p.id, p.name) for p in started] == [
        (0, "c_0", "weather"),
        (1, "c_1", "weather"),
    ]
    for index in (0, 1):
        args = "".join(p.delta for p in pieces if isinstance(p, CallArguments) and p.index == index)
        done = [p.call for p in pieces if isinstance(p, CallDone) and p.index == index]
        assert done[0].arguments == args
        json.loads(args)
    assert json.loads(scanner.calls[1].arguments) == {"city": 'a}"]'}
    # No piece of call text reached the text, even the trigger's first characters.
    assert "<" not in text
