"""The store side of a generation: before it, every read and the prompt assembly (one worker
hop); after it, the save. Runs in the engine's worker threads, never on the event loop."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec

from threadloom._core import (
    MAX_THREAD_MESSAGES,
    Assembly,
    PromptEngine,
    Response,
    ResponseInfo,
)
from threadloom.errors import LimitExceeded, NotFound, StateConflict
from threadloom.events import Result
from threadloom.request import Request
from threadloom.storage import ConversationStore, assemble, turn_messages
from threadloom.summarize import Summarizer


class Prepared(msgspec.Struct, frozen=True):
    """What a generation starts from: the prompt, the turn its reply follows (`head`) and the
    thread the reply is stored in (`thread`, or the open thread `previous_response_id` heads)."""

    new: list[dict[str, str]]
    assembly: Assembly
    head: str | None
    thread: str | None


class Conversations:
    def __init__(
        self,
        store: ConversationStore,
        prompt: PromptEngine,
        summarizer: Summarizer,
        model_name: str,
    ) -> None:
        self.store = store
        self.prompt = prompt
        self.summarizer = summarizer
        self.model_name = model_name

    def prepare(self, req: Request, new: list[dict[str, str]], *, create: bool) -> Prepared:
        """Reads and checks the conversation, creating `req.thread` if `create` and missing,
        and assembles the prompt."""
        head: str | None = None
        owner = req.owner
        if req.thread is not None and create:
            t = self.store.create_thread(
                req.thread,
                owner=owner,
                exist_ok=True,
                visible=not req.hidden,
                metadata=req.thread_metadata or None,
            )
            head = t.head
            if t.state != "open":
                raise StateConflict(
                    f"thread {req.thread!r} is {t.state} and accepts no new messages"
                )
        save_thread = req.thread
        if req.previous_response_id is not None:
            previous = self._previous(req.previous_response_id, owner, req.anchor_window)
            save_thread = self._headed_thread(previous, owner)
            if save_thread is not None:
                head = previous.last_turn
        assembly = self._assemble(req, new)
        if req.stores and assembly.messages_total + 1 > MAX_THREAD_MESSAGES:
            # The store would refuse the reply after the generation; refuse it before.
            raise LimitExceeded(
                f"a conversation may hold at most {MAX_THREAD_MESSAGES} messages; this one "
                f"has {assembly.messages_total - len(new)} and the request adds {len(new) + 1}",
                param="input",
            )
        return Prepared(new, assembly, head, save_thread)

    def _previous(self, response_id: str, owner: str, anchor_window: bool) -> Response:
        """The response to continue, checked (existence, ownership, status, window) before any
        model time is spent."""
        r = self.store.get_response(response_id, owner=owner)
        if r.status == "failed":
            raise StateConflict(f"response {response_id} has status failed and cannot be continued")
        window_s = self.store.retention.anchor_window_s
        if anchor_window and time.time() * 1000 - r.created_ms > window_s * 1000:
            # The store refuses it too, but only when storing, after the generation.
            raise NotFound(
                f"response {response_id} is older than the {window_s:.0f} s window "
                "for continuing a response"
            )
        return r

    def _headed_thread(self, previous: Response, owner: str) -> str | None:
        """The open thread whose newest turn is `previous`'s output, if any: continuing that
        response continues the thread (whichever dialect made either), so the thread's history
        holds every turn. Continuing an older response branches off the thread instead."""
        if previous.thread_id is None:
            return None
        try:
            t = self.store.get_thread(previous.thread_id, owner=owner)
        except NotFound:
            return None
        return t.id if t.state == "open" and t.head == previous.last_turn else None

    def _assemble(self, req: Request, new: list[dict[str, str]]) -> Assembly:
        """Renders, tokenizes and trims (the Rust core does it all). `summarize` trims like
        `tokens`, then replaces what was dropped by a summary."""
        summarize = req.strategy == "summarize"
        max_tokens = req.params.max_tokens
        kwargs: dict[str, Any] = {
            "strategy": "tokens" if summarize else req.strategy,
            "window": req.window,
            "max_tokens": max_tokens,
            "budget": self.prompt.context_length - max_tokens,
            "enable_thinking": req.enable_thinking,
            "add_generation_prompt": req.add_generation_prompt,
        }
        owner = req.owner
        past: list[Mapping[str, str | None]] = list(req.history or [])
        if req.history is not None:
            trimmed = self.prompt.assemble_messages(
                [*past, *new], owner=owner, protected=len(new), **kwargs
            )
        else:
            trimmed = assemble(
                self.prompt,
                self.store,
                new,
                owner=owner,
                thread=req.thread,
                response=req.previous_response_id,
                cache_key=req.thread,
                **kwargs,
            )
        if not summarize or not trimmed.messages_dropped:
            return trimmed
        turn_ids: list[str] | None = None
        if req.history is None:
            turns = self.store.history(
                owner=owner, thread=req.thread, response=req.previous_response_id
            )
            past, turn_ids = turn_messages(turns), [t.id for t in turns]
        return self.summarizer.assemble(trimmed, past, new, kwargs, owner, turn_ids)

    def save(self, req: Request, prepared: Prepared, result: Result, response_id: str) -> Result:
        """Stores the inputs and the reply as one response. On a thread, the reply goes after
        the turn the model saw (`prepared.head`); if the thread moved on meanwhile (another
        server wrote to it, or it was locked), the reply is kept as a branch from that turn
        instead and the result names no thread: no turn is lost, and none is stored after a
        history the model did not see."""
        output: dict[str, str] = {"role": "assistant", "content": result.text}
        if result.reasoning is not None:
            output["reasoning"] = result.reasoning
        info = ResponseInfo(
            self.model_name,
            status=result.status,
            output_count=1,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            cached_tokens=result.usage.cached_tokens,
            error=result.error,
            metadata=req.metadata or None,
            id=response_id,
        )
        turns = [*prepared.new, output]
        owner, head = req.owner, prepared.head
        if prepared.thread is not None:
            try:
                appended = self.store.append(
                    turns,
                    owner=owner,
                    thread=prepared.thread,
                    response=info,
                    expected_head=head if head is not None else "",
                )
            except StateConflict:
                if head is None:
                    appended = self.store.append(turns, owner=owner, response=info)
                else:
                    appended = self.store.append(turns, owner=owner, after_turn=head, response=info)
        else:
            appended = self.store.append(
                turns,
                owner=owner,
                after_response=req.previous_response_id,
                response=info,
                anchor_window=req.anchor_window,
            )
        response = appended.response
        return msgspec.structs.replace(
            result,
            response_id=response.id if response else None,
            thread_id=appended.thread.id if appended.thread else None,
            turn_id=appended.turn_ids[-1],
        )
