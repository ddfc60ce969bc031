"""The `summarize` trimming strategy: turns that no longer fit the context are replaced by a
summary the model itself writes, instead of being dropped silently.

The cut point comes from the `tokens` strategy (which trims in blocks, so it moves rarely); the
summary of everything up to a cut point is written once and cached by that turn's id, so
consecutive prompts of a conversation start with the same system text and summary: a stable
prefix that the slot's evaluated-token cache keeps reusing.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from threadloom.backends.base import SamplingParams

if TYPE_CHECKING:
    from threadloom._core import Assembly, PromptEngine

# A blocking generation for the summarizer's own use: prompt ids, sampler settings and owner
# in, text out, nothing stored (`Engine.generate_text`; called from a worker thread).
GenerateText = Callable[[Sequence[int], SamplingParams, str], str]

SUMMARY_TOKENS = 192
# The transcript handed to the summarizer keeps its newest part when it is longer than this share
# of the context: the oldest turns were, by construction, summarized less recently anyway.
TRANSCRIPT_SHARE = 0.75
INSTRUCTIONS = (
    "You summarize conversations. Write a short summary of the conversation below: the facts, "
    "names, numbers, decisions and open questions a reader needs to continue it. "
    "Write only the summary."
)
SUMMARY_HEADER = "Summary of the earlier conversation:"
CACHE_SIZE = 1024


class Summarizer:
    """Writes and caches summaries of the turns a `tokens` trim would drop, with the model's
    prompt engine (templates, tokenizer, context) and `generate` (the model)."""

    def __init__(self, prompt: PromptEngine, generate: GenerateText) -> None:
        self._prompt = prompt
        self._generate = generate
        self.tokenizer = prompt.tokenizer
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def assemble(
        self,
        trimmed: Assembly,
        history: Sequence[Mapping[str, str | None]],
        new: Sequence[Mapping[str, str | None]],
        kwargs: Mapping[str, Any],
        owner: str,
        turn_ids: Sequence[str] | None = None,
    ) -> Assembly:
        """The prompt with the turns that `trimmed` (the `tokens` assembly of the same request)
        dropped replaced by their summary. `turn_ids` are the stored history's turn ids (None
        for a history given in full): the summary is cached under the newest dropped one."""
        if not trimmed.messages_dropped:
            return trimmed
        if turn_ids is not None and trimmed.cut_after is not None:
            cut = turn_ids.index(trimmed.cut_after) + 1
            key = trimmed.cut_after
        else:
            cut = _nth_non_system(history, trimmed.messages_dropped) + 1
            key = hashlib.sha256(
                "\0".join(f"{m['role']}\0{m['content']}" for m in history[:cut]).encode()
            ).hexdigest()
        dropped, kept = history[:cut], history[cut:]
        systems = [str(m["content"]) for m in dropped if m["role"] == "system"]
        summary = self.summary(key, [m for m in dropped if m["role"] != "system"], owner)
        system = "\n\n".join([*systems, f"{SUMMARY_HEADER}\n{summary}"])
        messages = [{"role": "system", "content": system}, *kept, *new]
        # Still too long (a huge new input): the token budget trims the kept turns further.
        return self._prompt.assemble_messages(
            messages, owner=owner, protected=len(new), **{**kwargs, "strategy": "tokens"}
        )

    def summary(self, key: str, turns: Sequence[Mapping[str, str | None]], owner: str) -> str:
        """The summary of `turns`, cached per owner: a tenant never gets another tenant's
        summary, nor learns from a fast answer that another tenant had the same turns."""
        key = f"{owner}\0{key}"
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        text = self._write(turns, owner)
        with self._lock:
            self._cache[key] = text
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return text

    def _write(self, turns: Sequence[Mapping[str, str | None]], owner: str) -> str:
        transcript = "\n".join(f"{t['role']}: {t['content']}" for t in turns)
        limit = int(self._prompt.context_length * TRANSCRIPT_SHARE) - SUMMARY_TOKENS
        # Counted as the prompt will tokenize it: turn markers inside turns stay text.
        tokenizer = self._prompt.tokenizer
        tokens = tokenizer.encode(transcript, parse_special=False)
        if len(tokens) > limit:
            transcript = tokenizer.decode(tokens[len(tokens) - limit :])
        prompt = self._prompt.assemble_messages(
            [
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": transcript},
            ],
            owner=owner,
            strategy="none",
            max_tokens=SUMMARY_TOKENS,
        )
        params = SamplingParams(max_tokens=SUMMARY_TOKENS)
        return self._generate(prompt.ids, params, owner).strip()


def _nth_non_system(history: Sequence[Mapping[str, str | None]], n: int) -> int:
    """The index of the `n`th (1-based) non-system message: the `tokens` strategy drops the
    oldest non-system messages first."""
    seen = 0
    for i, m in enumerate(history):
        if m["role"] != "system":
            seen += 1
            if seen == n:
                return i
    return len(history) - 1
