"""Calls out of generated text, as it streams: `CallScanner` splits a reply into the text the
user sees and the calls, piece by piece, so a stream sends call text only as calls (never as
content) and names each call (index, id, name) as soon as its name is complete. Parsing a whole
reply is the same scanner fed once, so a stream and the stored result always agree."""

from __future__ import annotations

import re

import msgspec

from threadloom.tools.families import Family
from threadloom.tools.spec import ToolCall, ToolSpec


class Text(msgspec.Struct, frozen=True):
    text: str


class CallStarted(msgspec.Struct, frozen=True):
    index: int
    id: str
    name: str


class CallArguments(msgspec.Struct, frozen=True):
    index: int
    delta: str


class CallDone(msgspec.Struct, frozen=True):
    call: ToolCall
    index: int


Piece = Text | CallStarted | CallArguments | CallDone


class CallScanner:
    """Feed it the reply's text in pieces; it returns what each piece completes."""

    def __init__(self, family: Family, spec: ToolSpec) -> None:
        self._family = family
        self._spec = spec
        self._head = re.compile(
            r'\{"name": "([A-Za-z0-9_-]{1,64})", "' + re.escape(family.args_key) + '": '
        )
        # "required" and named choices start in calls; "auto" in text until the trigger.
        self._in_calls = spec.forced
        self._held = ""  # text not yet sent: maybe the start of the trigger, or only spaces
        self._buf = ""  # call text from the trigger on
        self._pos = 0
        self._args_from: int | None = None  # where the current call's arguments begin
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self.text: list[str] = []
        self.calls: list[ToolCall] = []
        self._name = ""

    def feed(self, piece: str) -> list[Piece]:
        out: list[Piece] = []
        if not self._in_calls:
            piece = self._text(piece, out)
        if self._in_calls and piece:
            self._buf += piece
            self._scan(out)
        return out

    def finish(self) -> list[Piece]:
        """The end of the reply: text held back goes out (a call cut off stays out)."""
        out: list[Piece] = []
        if not self._in_calls and self._held.strip():
            self._emit_text(self._held, out)
        self._held = ""
        return out

    def _text(self, piece: str, out: list[Piece]) -> str:
        """Text mode: returns what follows the trigger once it appears (else "")."""
        held = self._held + piece
        trigger = self._family.trigger
        if not trigger:
            # No trigger (Llama 3): a reply is calls when it starts with `{`.
            stripped = held.lstrip()
            if not stripped:
                self._held = held
                return ""
            if stripped.startswith("{"):
                self._held, self._in_calls = "", True
                return stripped
            self._held = ""
            self._emit_text(held, out)
            return ""
        at = held.find(trigger)
        if at >= 0:
            if held[:at].strip():
                self._emit_text(held[:at], out)
            self._held, self._in_calls = "", True
            return held[at:]
        keep = _partial_suffix(held, trigger)
        send, self._held = held[: len(held) - keep], held[len(held) - keep :]
        if send.strip() or (send and self.text):
            self._emit_text(send, out)
        else:
            self._held = held  # only spaces so far: they may precede a call
        return ""

    def _emit_text(self, text: str, out: list[Piece]) -> None:
        self.text.append(text)
        out.append(Text(text))

    def _scan(self, out: list[Piece]) -> None:
        while True:
            if self._args_from is None:
                m = self._head.search(self._buf, self._pos)
                if m is None:
                    return
                index = len(self.calls)
                self._name = m.group(1)
                out.append(CallStarted(index, self._spec.call_id(index), self._name))
                self._args_from = self._pos = m.end()
                self._depth, self._in_string, self._escaped = 0, False, False
            start = self._pos
            end = self._arguments_end()
            if end is None:
                if self._pos > start:
                    out.append(CallArguments(len(self.calls), self._buf[start : self._pos]))
                return
            index = len(self.calls)
            if end > start:
                out.append(CallArguments(index, self._buf[start:end]))
            call = ToolCall(
                id=self._spec.call_id(index),
                name=self._name,
                arguments=self._buf[self._args_from : end],
            )
            self.calls.append(call)
            out.append(CallDone(call, index))
            self._args_from, self._pos = None, end

    def _arguments_end(self) -> int | None:
        """Advances over the arguments' JSON; the index just past it once it is complete."""
        buf = self._buf
        while self._pos < len(buf):
            c = buf[self._pos]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                if self._depth == 0:  # a scalar argument ended by the call's own `}`
                    return self._pos
                self._depth -= 1
                if self._depth == 0:
                    self._pos += 1
                    return self._pos
            self._pos += 1
        return None


def _partial_suffix(text: str, trigger: str) -> int:
    """The length of the longest end of `text` that begins `trigger`."""
    for n in range(min(len(text), len(trigger) - 1), 0, -1):
        if trigger.startswith(text[-n:]):
            return n
    return 0


def parse(family: Family, spec: ToolSpec, text: str) -> tuple[str, list[ToolCall]]:
    """A whole reply: its text (what the user sees) and its complete calls."""
    scanner = CallScanner(family, spec)
    scanner.feed(text)
    scanner.finish()
    return "".join(scanner.text), scanner.calls
