"""The Engine: the Python API for batch jobs and the server's only way in. It assembles the
prompt in the Rust core, generates on a slot in a worker thread, streams token events to the
caller, and stores the inputs and output as a response."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import msgspec

from threadloom._core import (
    Assembly,
    PromptEngine,
    Response,
    ResponseInfo,
    new_response_id,
)
from threadloom.backends.base import BackendFactory, SamplingParams
from threadloom.errors import InvalidInput, NotFound, StateConflict, ThreadloomError
from threadloom.slots import Overloaded, SlotPool
from threadloom.storage import (
    ConversationStore,
    assemble,
    close_store,
    open_store,
    turn_messages,
)
from threadloom.summarize import Summarizer
from threadloom.textstream import StopMatcher, ThinkSplitter, Utf8Stream

Message = Mapping[str, str | None]
DEFAULT_CONTEXT = 4096
log = logging.getLogger("threadloom.engine")


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """One finished generation."""

    status: Literal["completed", "incomplete", "failed"]
    text: str
    reasoning: str | None
    finish_reason: Literal["stop", "length", "cancelled", "error"]
    usage: Usage
    model: str
    response_id: str | None = None
    thread_id: str | None = None
    turn_id: str | None = None
    error: str | None = None
    time_to_first_token_s: float | None = None
    total_s: float = 0.0
    messages_dropped: int = 0


class Started(msgspec.Struct, frozen=True, tag="started"):
    prompt_tokens: int
    cached_tokens: int
    slot: int
    # The id the response will be stored under (None when nothing is stored), known before the
    # first token so a stream can name it up front.
    response_id: str | None = None


class TokenEvent(msgspec.Struct, frozen=True, tag="token"):
    text: str
    reasoning: bool = False


class Finished(msgspec.Struct, frozen=True, tag="finished"):
    result: Result


Event = Started | TokenEvent | Finished


class Request(msgspec.Struct, kw_only=True):
    """One `run_batch` item; the fields are `respond`'s arguments."""

    inputs: list[dict[str, str]] | str
    thread: str | None = None
    previous_response_id: str | None = None
    history: list[dict[str, str]] | None = None
    store: bool = True
    owner: str = "default"
    sampling: SamplingParams | None = None


def _normalize(inputs: str | Iterable[Message]) -> list[dict[str, str]]:
    if isinstance(inputs, str):
        return [{"role": "user", "content": inputs}]
    out = []
    for i, m in enumerate(inputs):
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise InvalidInput(f"inputs[{i}] needs string role and content")
        out.append({"role": role, "content": content})
    return out


class Engine:
    """A model, its prompt engine, a pool of slots and a store.

    `model` is the original GGUF file (default: the shipped SmolLM2); `backend` defaults to
    ctransformers on a converted copy of it kept in `cache_dir`.
    """

    def __init__(
        self,
        store: ConversationStore | str | os.PathLike[str],
        model: str | os.PathLike[str] | None = None,
        *,
        slots: int = 2,
        backend: BackendFactory | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        context_length: int | None = None,
        gpu_layers: int = 0,
        threads: int | None = None,
        max_queue: int = 64,
        model_name: str | None = None,
        progress: bool | None = None,
    ) -> None:
        from threadloom.models import default_model_path

        # An LMDB directory or a postgresql:// URL; a store passed in stays the caller's.
        self._owns_store = isinstance(store, (str, os.PathLike))
        self.store = open_store(store)
        self.model_path = Path(model) if model is not None else default_model_path()
        self.model_name = model_name or self.model_path.stem
        if backend is None:
            from threadloom.backends.ctransformers import CTransformersFactory
            from threadloom.convert import prepared_model

            converted = prepared_model(
                self.model_path,
                Path(cache_dir) if cache_dir is not None else None,
                progress=sys.stderr.isatty() if progress is None else progress,
            )
            context = context_length or DEFAULT_CONTEXT
            backend = CTransformersFactory(
                converted, context_length=context, gpu_layers=gpu_layers, threads=threads
            )
        self.backend_name = backend.name
        self.prompt = PromptEngine.from_gguf(
            self.model_path,
            context_length=context_length or getattr(backend, "context_length", None),
        )
        self.context_length = self.prompt.context_length
        self.tokenizer = self.prompt.tokenizer
        self._eog = frozenset(self.tokenizer.eog_ids)
        self.pool = SlotPool(backend, slots, max_queue=max_queue)
        # Assembly and store reads and writes.
        self._executor = ThreadPoolExecutor(max_workers=slots + 4, thread_name_prefix="threadloom")
        # A generation waits for its slot and then generates in one thread of its own: one per
        # slot and queue place (started on demand). Requests beyond that are refused before
        # they take a thread (`_admitted`), so none waits invisibly behind the pool, and slot
        # waits never starve the store work that the running generations need to finish.
        self._capacity = slots + max_queue
        self._admitted = 0
        self._waiters = ThreadPoolExecutor(
            max_workers=self._capacity, thread_name_prefix="threadloom-gen"
        )
        # Called on the event loop with every finished generation (cancelled and failed ones
        # too), before it is stored: one place for metrics, whatever dialect asked for it.
        self.on_finished: list[Callable[[Result], None]] = []
        self._summarizer = Summarizer(self)

    def close(self) -> None:
        self._waiters.shutdown(wait=True, cancel_futures=True)
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.pool.close()
        if self._owns_store:
            close_store(self.store)

    # ---- generation ----------------------------------------------------------------------

    async def stream(
        self,
        inputs: str | Iterable[Message],
        *,
        thread: str | None = None,
        previous_response_id: str | None = None,
        history: Iterable[Message] | None = None,
        store: bool = True,
        owner: str = "default",
        sampling: SamplingParams | None = None,
        strategy: str = "tokens",
        window: int | None = None,
        enable_thinking: bool | None = None,
        anchor_window: bool = False,
        metadata: Mapping[str, Any] | None = None,
        thread_metadata: Mapping[str, Any] | None = None,
        hidden: bool = False,
        add_generation_prompt: bool = True,
        split_reasoning: bool = True,
    ) -> AsyncGenerator[Event, None]:
        """Generates a reply and yields `Started`, `TokenEvent`s and one `Finished`. Closing the
        iterator early cancels the generation; what was produced is stored as incomplete.

        `add_generation_prompt=False` renders the conversation without opening a new assistant
        message, so the model continues the last one. `split_reasoning=False` leaves a
        thinking model's `<think>` block inline in the text (for dialects that stream raw
        tokens) instead of routing it to reasoning events."""
        params, new = self._check_request(inputs, thread, previous_response_id, history, sampling)
        loop = asyncio.get_running_loop()
        stateless = history is not None

        head, save_thread, assembly = await loop.run_in_executor(
            self._executor,
            lambda: self._prepare(
                new,
                params,
                thread=thread,
                previous_response_id=previous_response_id,
                history=history,
                owner=owner,
                anchor_window=anchor_window,
                hidden=hidden,
                thread_metadata=thread_metadata,
                strategy=strategy,
                window=window,
                enable_thinking=enable_thinking,
                add_generation_prompt=add_generation_prompt,
            ),
        )
        response_id = new_response_id() if store and not stateless else None
        ids = assembly.ids
        cancel = threading.Event()
        # The worker thread hands events over in batches: it wakes the loop only when the
        # loop has drained the previous batch, so a fast generator costs one wake-up per
        # batch, not per token.
        batch: list[tuple[str, Any]] = []
        lock = threading.Lock()
        ready = asyncio.Event()

        def put(item: tuple[str, Any]) -> None:
            with lock:
                batch.append(item)
                wake = len(batch) == 1
            if wake:
                loop.call_soon_threadsafe(ready.set)

        def take_batch() -> list[tuple[str, Any]]:
            with lock:
                items = batch[:]
                batch.clear()
                ready.clear()
            return items

        started = time.perf_counter()

        def work() -> None:
            # Waiting for the slot and generating are one task, so a slot is never held while
            # its request waits for the event loop to start the generation.
            try:
                slot, cached = self.pool.acquire(ids, cancel)
            except Exception as e:
                put(("refused", e))
                return
            put(("started", (slot.index, cached)))
            out_ids: list[int] = []
            finish = "length"
            error: str | None = None
            utf8, stops = Utf8Stream(), StopMatcher(params.stop)
            think = ThinkSplitter(bool(enable_thinking) and split_reasoning)
            first: float | None = None

            def emit(text: str) -> None:
                for reasoning, piece in think.feed(stops.feed(text)):
                    put(("token", TokenEvent(piece, reasoning)))

            try:
                for token in slot.backend.generate(ids, params, cancel):
                    if first is None:
                        first = time.perf_counter() - started
                    if token in self._eog:
                        finish = "stop"
                        break
                    out_ids.append(token)
                    emit(utf8.feed(self.tokenizer.piece(token) or b""))
                    if stops.stopped:
                        finish = "stop"
                        break
                else:
                    if cancel.is_set():
                        finish = "cancelled"
            except Exception as e:  # the engine failed: stored as a failed response
                finish, error = "error", f"{type(e).__name__}: {e}"
            finally:
                self.pool.release(slot)
            emit(utf8.flush())
            for reasoning, piece in think.feed(stops.flush()) + think.flush():
                put(("token", TokenEvent(piece, reasoning)))
            put(("done", (out_ids, finish, error, first)))

        if self._admitted >= self._capacity:
            raise Overloaded(
                f"all {len(self.pool.slots)} slots are busy and {self.pool.waiting} requests wait"
            )
        self._admitted += 1
        future = loop.run_in_executor(self._waiters, work)
        future.add_done_callback(self._release_admission)
        pending: list[tuple[str, Any]] = []
        try:
            while not pending:
                await ready.wait()
                pending = take_batch()
        except asyncio.CancelledError:
            # Gone while waiting for a slot: stop waiting (or stop the generation it just got).
            cancel.set()
            raise
        kind, payload = pending.pop(0)
        if kind == "refused":
            raise payload
        slot_index, cached = payload
        text: list[str] = []
        reasoning: list[str] = []

        def take(payload: TokenEvent) -> None:
            (reasoning if payload.reasoning else text).append(payload.text)

        async def finish(done: tuple[list[int], str, str | None, float | None]) -> Result:
            out_ids, finish_reason, error, first = done
            status: Literal["completed", "incomplete", "failed"] = (
                "failed"
                if finish_reason == "error"
                else "completed"
                if finish_reason == "stop"
                else "incomplete"
            )
            result = Result(
                status=status,
                text="".join(text),
                reasoning="".join(reasoning) or None,
                finish_reason=finish_reason,  # type: ignore[arg-type]
                usage=Usage(assembly.prompt_tokens, len(out_ids), cached),
                model=self.model_name,
                error=error,
                time_to_first_token_s=first,
                total_s=time.perf_counter() - started,
                messages_dropped=assembly.messages_dropped,
            )
            self._notify(result)
            if not store or stateless:
                return result
            return await loop.run_in_executor(
                self._executor,
                lambda: self._save(
                    result,
                    new,
                    owner,
                    save_thread,
                    previous_response_id,
                    head,
                    anchor_window,
                    metadata,
                    response_id,
                ),
            )

        done: Any = None
        try:
            yield Started(assembly.prompt_tokens, cached, slot_index, response_id)
            while done is None:
                if not pending:
                    await ready.wait()
                    pending = take_batch()
                    continue
                kind, payload = pending.pop(0)
                if kind == "done":
                    done = payload
                    break
                take(payload)
                yield payload
        except (GeneratorExit, asyncio.CancelledError):
            # The caller went away: stop generating, then store what exists as incomplete.
            cancel.set()
            await asyncio.shield(future)
            for kind, payload in [*pending, *take_batch()]:
                if kind == "done":
                    done = payload
                else:
                    take(payload)
            await asyncio.shield(finish((done[0], "cancelled", done[2], done[3])))
            raise
        yield Finished(await finish(done))

    def _release_admission(self, _: asyncio.Future[None]) -> None:
        self._admitted -= 1

    def _notify(self, result: Result) -> None:
        for observer in self.on_finished:
            try:
                observer(result)
            except Exception:  # an observer's bug must not lose the reply
                log.exception("on_finished observer %r failed", observer)

    def _save(
        self,
        result: Result,
        new: list[dict[str, str]],
        owner: str,
        thread: str | None,
        previous_response_id: str | None,
        head: str | None,
        anchor_window: bool,
        metadata: Mapping[str, Any] | None,
        response_id: str | None,
    ) -> Result:
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
            metadata=dict(metadata) if metadata else None,
            id=response_id,
        )
        turns = [*new, output]
        if thread is not None:
            try:
                appended = self.store.append(
                    turns,
                    owner=owner,
                    thread=thread,
                    response=info,
                    expected_head=head if head is not None else "",
                )
            except StateConflict:
                # The thread moved on (or was locked) while this reply was generated: keep the
                # reply as a branch from what the model saw, so no turn is lost.
                if head is None:
                    appended = self.store.append(turns, owner=owner, response=info)
                else:
                    appended = self.store.append(turns, owner=owner, after_turn=head, response=info)
        else:
            appended = self.store.append(
                turns,
                owner=owner,
                after_response=previous_response_id,
                response=info,
                anchor_window=anchor_window,
            )
        response = appended.response
        return msgspec.structs.replace(
            result,
            response_id=response.id if response else None,
            thread_id=appended.thread.id if appended.thread else None,
            turn_id=appended.turn_ids[-1],
        )

    async def respond(self, inputs: str | Iterable[Message], **kwargs: Any) -> Result:
        """Like `stream`, returning only the finished result."""
        result: Result | None = None
        async for event in self.stream(inputs, **kwargs):
            if isinstance(event, Finished):
                result = event.result
        assert result is not None
        return result

    def respond_sync(self, inputs: str | Iterable[Message], **kwargs: Any) -> Result:
        """`respond` for code without an event loop."""
        return asyncio.run(self.respond(inputs, **kwargs))

    def generate_text(self, ids: Sequence[int], params: SamplingParams) -> str:
        """Blocking generation for the engine's own use (summaries): prompt ids in, text out,
        nothing stored. Runs in a worker thread, never on the event loop."""
        slot, _ = self.pool.acquire(ids)
        utf8, out = Utf8Stream(), []
        try:
            for token in slot.backend.generate(ids, params, threading.Event()):
                if token in self._eog:
                    break
                out.append(utf8.feed(self.tokenizer.piece(token) or b""))
        finally:
            self.pool.release(slot)
        out.append(utf8.flush())
        return "".join(out)

    # ---- prompt assembly -----------------------------------------------------------------

    async def assemble_prompt(
        self,
        inputs: str | Iterable[Message],
        *,
        previous_response_id: str | None = None,
        history: Iterable[Message] | None = None,
        owner: str = "default",
        sampling: SamplingParams | None = None,
        strategy: str = "tokens",
        window: int | None = None,
        enable_thinking: bool | None = None,
        add_generation_prompt: bool = True,
    ) -> Assembly:
        """The prompt `stream` would give the model for the same arguments (same checks, same
        assembly and trimming), without generating or storing anything: for token counting.
        Threads are left out because `stream` creates a missing thread, which a count must not."""
        params, new = self._check_request(inputs, None, previous_response_id, history, sampling)
        _, _, assembly = await asyncio.get_running_loop().run_in_executor(
            self._executor,
            lambda: self._prepare(
                new,
                params,
                thread=None,
                previous_response_id=previous_response_id,
                history=history,
                owner=owner,
                anchor_window=False,
                hidden=False,
                thread_metadata=None,
                strategy=strategy,
                window=window,
                enable_thinking=enable_thinking,
                add_generation_prompt=add_generation_prompt,
            ),
        )
        return assembly

    def _prepare(
        self,
        new: list[dict[str, str]],
        params: SamplingParams,
        *,
        thread: str | None,
        previous_response_id: str | None,
        history: Iterable[Message] | None,
        owner: str,
        anchor_window: bool,
        hidden: bool,
        thread_metadata: Mapping[str, Any] | None,
        strategy: str,
        window: int | None,
        enable_thinking: bool | None,
        add_generation_prompt: bool,
    ) -> tuple[str | None, str | None, Assembly]:
        """Every store read and the assembly before a generation, in one worker hop. Returns the
        head the reply's turns go after, the thread they are stored in (`thread`, or the open
        thread that `previous_response_id` heads) and the prompt."""
        head: str | None = None
        if thread is not None:
            t = self.store.create_thread(
                thread,
                owner=owner,
                exist_ok=True,
                visible=not hidden,
                metadata=dict(thread_metadata) if thread_metadata else None,
            )
            head = t.head
            if t.state != "open":
                raise StateConflict(f"thread {thread!r} is {t.state} and accepts no new messages")
        save_thread = thread
        if previous_response_id is not None:
            previous = self._previous(previous_response_id, owner, anchor_window)
            save_thread = self._headed_thread(previous, owner)
            if save_thread is not None:
                head = previous.last_turn
        assembly = self._assemble(
            new,
            thread=thread,
            previous_response_id=previous_response_id,
            history=history,
            owner=owner,
            max_tokens=params.max_tokens,
            strategy=strategy,
            window=window,
            enable_thinking=enable_thinking,
            add_generation_prompt=add_generation_prompt,
        )
        return head, save_thread, assembly

    def _check_request(
        self,
        inputs: str | Iterable[Message],
        thread: str | None,
        previous_response_id: str | None,
        history: Iterable[Message] | None,
        sampling: SamplingParams | None,
    ) -> tuple[SamplingParams, list[dict[str, str]]]:
        params = sampling or SamplingParams()
        params.validate()
        new = _normalize(inputs)
        if not new:
            raise InvalidInput("inputs is empty")
        if sum(x is not None for x in (thread, previous_response_id, history)) > 1:
            raise InvalidInput("give at most one of thread, previous_response_id and history")
        if params.max_tokens >= self.context_length:
            raise InvalidInput(
                f"max_tokens ({params.max_tokens}) must be smaller than the context "
                f"({self.context_length})"
            )
        return params, new

    def _previous(
        self, previous_response_id: str, owner: str, anchor_window: bool = False
    ) -> Response:
        """The response to continue, checked (existence, ownership, status, window) before any
        model time is spent."""
        r = self.store.get_response(previous_response_id, owner=owner)
        if r.status == "failed":
            raise StateConflict(
                f"response {previous_response_id} has status failed and cannot be continued"
            )
        window_s = self.store.retention.anchor_window_s
        if anchor_window and time.time() * 1000 - r.created_ms > window_s * 1000:
            # The store refuses it too, but only when storing, after the generation.
            raise NotFound(
                f"response {previous_response_id} is older than the {window_s:.0f} s window "
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

    def _assemble(
        self,
        new: list[dict[str, str]],
        *,
        thread: str | None,
        previous_response_id: str | None,
        history: Iterable[Message] | None,
        owner: str,
        max_tokens: int,
        strategy: str,
        window: int | None,
        enable_thinking: bool | None,
        add_generation_prompt: bool,
    ) -> Assembly:
        """Runs in a worker thread: renders, tokenizes and trims (the Rust core does it all).
        `summarize` trims like `tokens`, then replaces what was dropped by a summary."""
        summarize = strategy == "summarize"
        kwargs: dict[str, Any] = {
            "strategy": "tokens" if summarize else strategy,
            "window": window,
            "max_tokens": max_tokens,
            "budget": self.context_length - max_tokens,
            "enable_thinking": enable_thinking,
            "add_generation_prompt": add_generation_prompt,
        }
        past: list[Mapping[str, str | None]] = []
        if history is not None:
            past = list(_normalize(history))
            trimmed = self.prompt.assemble_messages([*past, *new], protected=len(new), **kwargs)
        else:
            trimmed = assemble(
                self.prompt,
                self.store,
                new,
                owner=owner,
                thread=thread,
                response=previous_response_id,
                cache_key=thread,
                **kwargs,
            )
        if not summarize or not trimmed.messages_dropped:
            return trimmed
        turn_ids: list[str] | None = None
        if history is None:
            turns = self.store.history(owner=owner, thread=thread, response=previous_response_id)
            past, turn_ids = turn_messages(turns), [t.id for t in turns]
        return self._summarizer.assemble(trimmed, past, new, kwargs, turn_ids)

    # ---- batch ----------------------------------------------------------------------------

    def run_batch(
        self,
        requests: Sequence[Request | Mapping[str, Any]],
        *,
        concurrency: int | None = None,
        progress: bool | None = None,
    ) -> list[Result]:
        """Runs many requests, `concurrency` at a time (default: one per slot). Results come
        back in input order; a request that fails yields a failed `Result`, never an
        exception that sinks the batch."""
        items = [r if isinstance(r, Request) else msgspec.convert(r, Request) for r in requests]
        show = sys.stderr.isatty() if progress is None else progress
        return asyncio.run(self._batch(items, concurrency or len(self.pool.slots), show))

    async def _batch(self, items: list[Request], concurrency: int, show: bool) -> list[Result]:
        gate = asyncio.Semaphore(concurrency)
        done = 0

        async def one(r: Request) -> Result:
            nonlocal done
            async with gate:
                try:
                    return await self.respond(
                        r.inputs,
                        thread=r.thread,
                        previous_response_id=r.previous_response_id,
                        history=r.history,
                        store=r.store,
                        owner=r.owner,
                        sampling=r.sampling,
                    )
                except ThreadloomError as e:
                    return Result(
                        status="failed",
                        text="",
                        reasoning=None,
                        finish_reason="error",
                        usage=Usage(0, 0, 0),
                        model=self.model_name,
                        error=f"{type(e).__name__}: {e}",
                    )
                finally:
                    done += 1
                    if show:
                        bar = "#" * (30 * done // len(items))
                        print(f"\r[{bar:<30}] {done}/{len(items)}", end="", file=sys.stderr)

        results = await asyncio.gather(*(one(r) for r in items))
        if show:
            print(file=sys.stderr)
        return list(results)
