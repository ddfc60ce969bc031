"""What the tool tests share: two function tools (OpenAI's chat form and Responses' form) and a
scripted model that writes what a test tells it to."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from server_support import EchoScript

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 30}},
    "required": ["city"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET", "JST"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city",
            "parameters": WEATHER,
        },
    },
    {
        "type": "function",
        "function": {"name": "time", "description": "The time in a zone", "parameters": TIME},
    },
]
SCHEMAS = {"weather": WEATHER, "time": TIME}
TWO_CALLS = (
    '<tool_call>[{"name": "weather", "arguments": {"city": "Paris"}}, '
    '{"name": "time", "arguments": {"zone": "JST"}}]</tool_call>'
)


class SayScript(EchoScript):
    """A last user message `say:TEXT` makes the model write TEXT (then end); a last tool
    message gets `[tool said: OUTPUT]`; otherwise it echoes, as `EchoScript` does."""

    def __call__(self, ids: Sequence[int]) -> list[int]:
        prompt = self.tokenizer.decode(list(ids))
        self.prompts.append(prompt)
        turns = re.findall(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", prompt, re.S)
        role, content = turns[-1] if turns else ("", "")
        if role == "tool":  # after a call's output: the answer quotes it
            return [*self.tokenizer.encode(f"[tool said: {content}]"), 2]
        last = prompt.rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>")[0]
        if last.startswith("say:"):
            return [*self.tokenizer.encode(last[4:]), 2]
        return super().__call__(ids)


RESPONSES_TOOLS: list[Any] = [{"type": "function", **t["function"]} for t in TOOLS]
