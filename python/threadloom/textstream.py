"""Turning a stream of token bytes into text events: UTF-8 reassembly, stop strings, and the
split of `<think>...</think>` reasoning from the answer."""

from __future__ import annotations

import codecs

_UTF8 = codecs.getincrementaldecoder("utf-8")

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class StopMatcher:
    """Holds back just enough text to recognise a stop string that spans several tokens."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Returns the text that is safe to emit now."""
        if not self.stops:  # the common case, on every token
            return text
        if self.stopped:
            return ""
        self.pending += text
        cut = min((i for s in self.stops if (i := self.pending.find(s)) >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        if self.hold == 0 or len(self.pending) <= self.hold:
            out = "" if self.hold else self.pending
            self.pending = self.pending if self.hold else ""
            return out
        out, self.pending = self.pending[: -self.hold], self.pending[-self.hold :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class ThinkSplitter:
    """Routes text inside a leading `<think>...</think>` block to reasoning."""

    def __init__(self, enabled: bool) -> None:
        self.state = "start" if enabled else "answer"
        self.buffer = ""

    def feed(self, text: str) -> list[tuple[bool, str]]:
        """Returns (is_reasoning, text) pieces, in order."""
        if self.state == "after":
            # The template's blank line between "</think>" and the answer is not the answer.
            text = text.lstrip("\n")
            if text:
                self.state = "answer"
        if self.state == "answer":
            return [(False, text)] if text else []
        self.buffer += text
        out: list[tuple[bool, str]] = []
        if self.state == "start":
            stripped = self.buffer.lstrip()
            if THINK_OPEN.startswith(stripped):
                return out  # could still become "<think>"
            if not stripped.startswith(THINK_OPEN):
                self.state = "answer"
                text, self.buffer = self.buffer, ""
                return [(False, text)]
            self.buffer = stripped[len(THINK_OPEN) :]
            self.state = "thinking"
        end = self.buffer.find(THINK_CLOSE)
        if end >= 0:
            reasoning, rest = self.buffer[:end], self.buffer[end + len(THINK_CLOSE) :]
            self.buffer, self.state = "", "after"
            if reasoning:
                out.append((True, reasoning))
            return out + self.feed(rest)
        # Keep a tail that could be the start of "</think>".
        keep = len(THINK_CLOSE) - 1
        if len(self.buffer) > keep:
            out.append((True, self.buffer[:-keep]))
            self.buffer = self.buffer[-keep:]
        return out

    def flush(self) -> list[tuple[bool, str]]:
        text, self.buffer = self.buffer, ""
        if not text or self.state == "after":
            return []
        return [(self.state == "thinking", text)]


class Utf8Stream:
    """Reassembles UTF-8 characters split across token pieces."""

    def __init__(self) -> None:
        self._decoder = _UTF8(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
