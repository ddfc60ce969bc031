"""The store side of a generation: before it, every read and the prompt assembly (one worker
hop); after it, the save. Runs in the engine's worker threads, never on the event loop."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgspec

from threadloom import tools
from threadloom._core import (
    MAX_THREAD_MESSAGES,
    Appended,
    Assembly,
    PromptEngine,
    Response,
    ResponseInfo,
    Thread,
)
from threadloom.errors import LimitExceeded, NotFound, StateConflict, ThreadloomError
from threadloom.events import Result, Usage
from threadloom.request import Request
from threadloom.storage import ConversationStore, assemble, turn_messages
from threadloom.summarize import Summarizer

log = logging.getLogger("threadloom.engine")


class Destination(msgspec.Struct, frozen=True, kw_only=True):
    """Where a reply is stored: after the request's new messages, after the turn the model
    saw (`head`), in `thread` (the request's, or the open thread `previous_response_id`
    heads), else after `previous_response_id`. It is also the pending record kept while an
    announced response generates, so a restart can store the response after a crash."""

    new: list[dict[str, str]]
    head: str | None
    thread: str | None
    previous_response_id: str | None
    anchor_window: bool = False
    # A branch after this stored turn (`Request.after_turn`): stored after it, in no thread.
    after_turn: str | None = None
    metadata: dict[str, Any] | None = None
    prompt_tokens: int = 0
    # The model generating it (several models share a store): what a GET of the running
    # response and a restart's recovery name. None in records of older versions.
    model: str | None = None


class HistoryEnd(NamedTuple):
    """Where a request's stored history ends: at most one of a thread's head, a response's last
    turn or a turn (none: a new conversation)."""

    thread: str | None = None
    response: str | None = None
    turn: str | None = None

    @property
    def anchored(self) -> bool:
        return self.thread is not None or self.response is not None or self.turn is not None


class Prepared(msgspec.Struct, frozen=True):
    """What a generation starts from: the prompt and where its reply goes."""

    assembly: Assembly
    destination: Destination
    # The id the reply is stored under (None: not stored), recorded as pending.
    response_id: str | None = None


# The reply of a generation the server did not live to finish.
INTERRUPTED = "the server stopped before the reply was finished"
# The error of a reply whose thread was deleted while it generated.
THREAD_DELETED = "the conversation was deleted while the reply was generated"


class Recorder:
    """Records generations in the conversation store: `begin` reads and checks what a request
    continues, assembles its prompt and announces its id; `save` stores the reply. (The OpenAI
    Conversations API is `server/routes/conversations.py`, another thing.)"""

    def __init__(
        self,
        store: ConversationStore,
        prompt: PromptEngine,
        summarizer: Summarizer,
        model_name: str,
        tool_family: tools.Family = tools.FALLBACK,
    ) -> None:
        self.store = store
        self.prompt = prompt
        self.summarizer = summarizer
        self.model_name = model_name
        self.tool_family = tool_family

    def begin(self, req: Request, new: list[dict[str, str]], response_id: str | None) -> Prepared:
        """The store's half before a generation, in one worker hop: reads and checks the
        conversation (creating `req.thread` when asked), assembles the prompt and, for a reply
        that will be stored as `response_id` and announced before then (`req.announce`),
        records it as pending (its id answers from now on, and a restart stores it if this
        process dies first)."""
        prepared = self.prepare(req, new, create=True)
        if response_id is None:
            return prepared
        if req.announce:
            self.announce(req.owner, prepared.destination, response_id)
        return msgspec.structs.replace(prepared, response_id=response_id)

    def prepare(self, req: Request, new: list[dict[str, str]], *, create: bool) -> Prepared:
        """Reads and checks the conversation, creating `req.thread` if `create` and missing,
        and assembles the prompt. Each record is read once: the history is read from the turn
        the thread or response resolved to, not through them again."""
        head: str | None = None
        owner = req.owner
        at = HistoryEnd(req.thread, req.previous_response_id, req.after_turn)
        if req.thread is not None and create:
            t = (
                self.store.create_thread(
                    req.thread,
                    owner=owner,
                    exist_ok=True,
                    visible=req.visible,
                    metadata=req.thread_metadata or None,
                )
                if req.create_thread
                else self.store.get_thread(req.thread, owner=owner)
            )
            head = t.head
            if t.state != "open":
                raise StateConflict(
                    f"thread {req.thread!r} is {t.state} and accepts no new messages"
                )
            at = HistoryEnd(turn=head)
        save_thread = req.thread
        if req.previous_response_id is not None:
            previous = self._previous(req.previous_response_id, owner, req.anchor_window)
            save_thread = self._headed_thread(previous, owner)
            if save_thread is not None:
                head = previous.last_turn
            at = HistoryEnd(turn=previous.last_turn)
        assembly = self._assemble(req, new, at)
        if req.keeps_reply and assembly.messages_total + 1 > MAX_THREAD_MESSAGES:
            # The store would refuse the reply after the generation; refuse it before.
            raise LimitExceeded(
                f"a conversation may hold at most {MAX_THREAD_MESSAGES} messages; this one "
                f"has {assembly.messages_total - len(new)} and the request adds {len(new) + 1}",
                param="input",
            )
        destination = Destination(
            new=new,
            head=head,
            thread=save_thread,
            previous_response_id=req.previous_response_id,
            anchor_window=req.anchor_window,
            after_turn=req.after_turn,
            metadata=req.metadata or None,
            prompt_tokens=assembly.prompt_tokens,
        )
        return Prepared(assembly, destination)

    def _previous(self, previous_response_id: str, owner: str, anchor_window: bool) -> Response:
        """The response to continue, checked (existence, ownership, status, window) before any
        model time is spent."""
        try:
            r = self.store.get_response(previous_response_id, owner=owner)
        except NotFound:
            self.check_not_running(owner, previous_response_id, "previous_response_id")
            raise
        # The store checks the same when storing, but only after the generation.
        self.store.retention.check_anchor(r, time.time_ns() // 1_000_000, anchor_window)
        return r

    def check_not_running(self, owner: str, response_id: str, param: str) -> None:
        """StateConflict when `response_id` is announced and not stored yet (it generates, on
        this server or another): what a missing response is told apart from."""
        if self.store.get_pending(response_id, owner=owner) is not None:
            raise StateConflict(
                f"response {response_id!r} is still generating; retry once it is stored",
                param=param,
            )

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

    def _assemble(self, req: Request, new: list[dict[str, str]], at: HistoryEnd) -> Assembly:
        """Renders, tokenizes and trims (the Rust core does it all) the history ending `at`
        (a thread, response or turn, or none) and the new messages. `summarize` trims like
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
        spec, family = req.tools, self.tool_family
        # What the model sees as new: the request's messages (and the fallback's tool block).
        shown: list[Mapping[str, str | None]] = list(new)
        if spec is not None and family.template_renders_tools:
            kwargs["tools"] = tools.template_tools(spec.functions)
        if spec is not None and not family.template_renders_tools:
            # A template that renders no tools: they go in a system message of their own
            # before the new messages (never stored), and calls are shown to the model as the
            # text it writes them as, since such a template ignores `tool_calls`.
            block = tools.fallback_block(spec.functions, spec.forced, spec.parallel)
            shown = [{"role": "system", "content": block}, *tools.calls_as_text(new, family)]
            if req.history is None and at.anchored:
                past = turn_messages(
                    self.store.history(
                        owner=owner, thread=at.thread, response=at.response, turn=at.turn
                    )
                )
            trimmed = self.prompt.assemble_messages(
                [*tools.calls_as_text(past, family), *shown],
                owner=owner,
                protected=len(shown),
                cache_key=req.thread,
                **kwargs,
            )
        elif req.history is not None:
            trimmed = self.prompt.assemble_messages(
                [*past, *new], owner=owner, protected=len(new), **kwargs
            )
        else:
            trimmed = assemble(
                self.prompt,
                self.store,
                new,
                owner=owner,
                thread=at.thread,
                response=at.response,
                turn=at.turn,
                cache_key=req.thread,
                **kwargs,
            )
        if not summarize or not trimmed.messages_dropped:
            return trimmed
        turn_ids: list[str] | None = None
        if req.history is None and at.anchored:
            turns = self.store.history(
                owner=owner, thread=at.thread, response=at.response, turn=at.turn
            )
            past, turn_ids = turn_messages(turns), [t.id for t in turns]
        return self.summarizer.assemble(trimmed, past, shown, kwargs, owner, turn_ids)

    def save(
        self, owner: str, to: Destination, result: Result, response_id: str, *, announced: bool
    ) -> Result:
        """Stores the inputs and the reply as one response and drops its pending record, in one
        store transaction. On a thread, the reply goes after the turn the model saw
        (`to.head`); if the thread moved on meanwhile (another server wrote to it, or it was
        locked), the reply is kept as a branch from that turn instead and the result names no
        thread: no turn is lost, and none is stored after a history the model did not see. If
        the thread was deleted, the reply is kept the same way, as failed (`THREAD_DELETED`).
        Whichever way it goes, the response records the `previous_response_id` it continued.
        Only an `announced` reply has a pending record to drop."""
        turns = [*to.new, *self._outputs(result)]
        head = to.head
        info = self._info(to, result, response_id)
        if to.thread is not None and result.error == THREAD_DELETED:
            # Ended by deleting its thread: never stored in it, even when the save runs before
            # the delete commits.
            appended = self._branch(owner, to, turns, info, announced)
        elif to.thread is not None:
            try:
                appended = self.store.append(
                    turns,
                    owner=owner,
                    thread=to.thread,
                    previous_response_id=to.previous_response_id,
                    response=info,
                    expected_head=head if head is not None else "",
                    anchor_window=to.anchor_window,
                    settle_pending=announced,
                )
            except StateConflict:
                appended = self._branch(owner, to, turns, info, announced)
            except NotFound:
                # The thread was deleted meanwhile: the reply ends as failed, kept where the
                # announced id still answers.
                result = msgspec.structs.replace(result, status="failed", error=THREAD_DELETED)
                appended = self._branch(
                    owner, to, turns, self._info(to, result, response_id), announced
                )
        elif to.after_turn is not None:
            appended = self.store.append(
                turns,
                owner=owner,
                after_turn=to.after_turn,
                response=info,
                settle_pending=announced,
            )
        else:
            appended = self.store.append(
                turns,
                owner=owner,
                previous_response_id=to.previous_response_id,
                response=info,
                anchor_window=to.anchor_window,
                settle_pending=announced,
            )
        response = appended.response
        return msgspec.structs.replace(
            result,
            response_id=response.id if response else None,
            thread_id=appended.thread.id if appended.thread else None,
            turn_id=appended.turn_ids[-1],
        )

    def _outputs(self, result: Result) -> list[dict[str, str]]:
        """The reply's turns: its text (unless it is only calls), then one turn per call."""
        outputs = []
        if result.text or result.reasoning is not None or not result.tool_calls:
            output = {"role": "assistant", "content": result.text}
            if result.reasoning is not None:
                output["reasoning"] = result.reasoning
            outputs.append(output)
        status = "completed" if result.status == "completed" else "incomplete"
        for call in result.tool_calls:
            outputs.append(tools.call_turn(call.id, call.name, call.arguments, status))
        return outputs

    def _info(self, to: Destination, result: Result, response_id: str) -> ResponseInfo:
        return ResponseInfo(
            self.model_name,
            status=result.status,
            output_count=len(self._outputs(result)),
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            cached_tokens=result.usage.cached_tokens,
            error=result.error,
            metadata=to.metadata,
            id=response_id,
        )

    def _branch(
        self,
        owner: str,
        to: Destination,
        turns: list[dict[str, str]],
        info: ResponseInfo,
        announced: bool,
    ) -> Appended:
        """Stores a reply meant for a thread outside it: after the response it continued (so
        it keeps its `previous_response_id`), else after the turn the model saw, else (those
        went with a deleted thread) on its own."""
        if to.previous_response_id is not None:
            with contextlib.suppress(NotFound):
                return self.store.append(
                    turns,
                    owner=owner,
                    previous_response_id=to.previous_response_id,
                    response=info,
                    settle_pending=announced,
                )
        if to.head is not None:
            with contextlib.suppress(NotFound):
                return self.store.append(
                    turns, owner=owner, after_turn=to.head, response=info, settle_pending=announced
                )
        return self.store.append(turns, owner=owner, response=info, settle_pending=announced)

    def announce(self, owner: str, to: Destination, response_id: str) -> None:
        """Records the response as running before its id is announced."""
        record = msgspec.structs.replace(to, model=self.model_name)
        self.store.put_pending(response_id, msgspec.json.encode(record), owner=owner)

    def pending(self, owner: str, response_id: str) -> Destination | None:
        """The pending record of an announced response still generating, if there is one."""
        payload = self.store.get_pending(response_id, owner=owner)
        return None if payload is None else msgspec.json.decode(payload, type=Destination)

    def recover(self) -> int:
        """Stores every response a previous process announced and did not live to store, as
        `incomplete` with an empty reply. Returns how many it stored."""
        stored = 0
        for owner, response_id, payload in self.store.pending():
            try:
                self.store.get_response(response_id, owner=owner)
            except NotFound:
                to = msgspec.json.decode(payload, type=Destination)
                result = Result(
                    status="incomplete",
                    text="",
                    reasoning=None,
                    finish_reason="cancelled",
                    usage=Usage(to.prompt_tokens, 0, 0),
                    model=to.model or self.model_name,
                    error=INTERRUPTED,
                )
                # Where it was going, else (that conversation is gone) as a conversation of its
                # own: the announced id answers either way.
                alone = Destination(new=to.new, head=None, thread=None, previous_response_id=None)
                for destination in (to, alone):
                    try:
                        self.save(owner, destination, result, response_id, announced=True)
                        stored += 1
                        break
                    except ThreadloomError:
                        log.exception("could not store interrupted response %s", response_id)
                continue
            self.store.remove_pending(response_id, owner=owner)
        return stored

    def remove_turn(self, owner: str, thread: str, turn_id: str) -> Thread | None:
        """Takes one turn out of a thread's conversation. Turns never change, so the thread
        moves to a new path: the turns after `turn_id` are written again (new turns, new ids)
        after its parent, and the thread's head moves to the last of them, in one store
        transaction. The old path stays for every response (and other thread) that reached
        it. Returns the thread, or None when `turn_id` is not on its path; NotFound for a
        missing thread, StateConflict for a locked or archived one (or one that moved on)."""
        path = self.store.history(owner=owner, thread=thread)
        ids = [t.id for t in path]
        if turn_id not in ids:
            return None
        i = ids.index(turn_id)
        return self.store.rebase_thread(
            thread,
            turn_messages(path[i + 1 :]),
            owner=owner,
            after_turn=path[i].parent_id,
            expected_head=ids[-1],
        )
