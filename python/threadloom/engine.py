"""The Engine: the Python API for batch jobs and the server's only way in. It assembles the
prompt in the Rust core, generates on a slot in a worker thread, streams token events to the
caller, and stores the inputs and output as a response."""

from __future__ import annotations

import asyncio
import contextlib
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
from threadloom.backends.base import BackendFactory, SamplingParams, physical_cores
from threadloom.bridge import LoopBridge
from threadloom.errors import (
    BackendError,
    InvalidInput,
    NotFound,
    StateConflict,
    ThreadloomError,
)
from threadloom.events import Event, Finished, Result, Started, TokenEvent, Usage
from threadloom.generation import ENDED, Signal, TextJob
from threadloom.scheduler import DEFAULT_PREFILL_CHUNK, Scheduler
from threadloom.storage import (
    ConversationStore,
    assemble,
    close_store,
    open_store,
    turn_messages,
)
from threadloom.summarize import Summarizer

__all__ = ["Engine", "Event", "Finished", "Request", "Result", "Started", "TokenEvent", "Usage"]

Message = Mapping[str, str | None]
DEFAULT_CONTEXT = 4096
log = logging.getLogger("threadloom.engine")


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
        slots: int = 4,
        backend: BackendFactory | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        context_length: int | None = None,
        gpu_layers: int = 0,
        threads: int | None = None,
        max_queue: int = 64,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        model_name: str | None = None,
        progress: bool | None = None,
    ) -> None:
        from threadloom.models import default_model_path

        if slots < 1:
            raise InvalidInput("slots must be at least 1")
        if threads is not None and threads < 1:
            raise InvalidInput("threads must be at least 1")
        # An LMDB directory or a postgresql:// URL; a store passed in stays the caller's.
        self._owns_store = isinstance(store, (str, os.PathLike))
        self.store = open_store(store)
        self.model_path = Path(model) if model is not None else default_model_path()
        self.model_name = model_name or self.model_path.stem
        # One budget for the whole process: the scheduler's thread is the only one computing.
        self.threads = threads or physical_cores()
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
                converted, context_length=context, gpu_layers=gpu_layers, threads=self.threads
            )
        self.backend_name = backend.name
        self.prompt = PromptEngine.from_gguf(
            self.model_path,
            context_length=context_length or getattr(backend, "context_length", None),
        )
        self.context_length = self.prompt.context_length
        self.tokenizer = self.prompt.tokenizer
        self._eog = frozenset(self.tokenizer.eog_ids)
        self.scheduler = Scheduler(backend(slots), max_queue=max_queue, prefill_chunk=prefill_chunk)
        # Assembly and store reads and writes.
        self._executor = ThreadPoolExecutor(max_workers=slots + 4, thread_name_prefix="threadloom")
        # Saves in flight: each runs to the end even when its caller went away.
        self._completions: set[asyncio.Future[Result]] = set()
        # Called on the event loop with every finished generation (cancelled and failed ones
        # too), before it is stored: one place for metrics, whatever dialect asked for it.
        self.on_finished: list[Callable[[Result], None]] = []
        self._summarizer = Summarizer(self)

    def close(self) -> None:
        self.scheduler.close()
        self._executor.shutdown(wait=True, cancel_futures=True)
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
        bridge: LoopBridge[Signal] = LoopBridge(loop)
        ended: asyncio.Future[None] = loop.create_future()

        def sink(signal: Signal) -> None:
            bridge.put(signal)
            if signal == ENDED:
                with contextlib.suppress(RuntimeError):  # the loop is gone
                    loop.call_soon_threadsafe(_resolve, ended)

        job = TextJob(
            assembly.ids,
            params,
            owner,
            tokenizer=self.tokenizer,
            eog=self._eog,
            split_thinking=bool(enable_thinking) and split_reasoning,
            sink=sink,
        )
        self.scheduler.submit(job)
        try:
            pending = await bridge.take()
        except asyncio.CancelledError:
            # Gone while waiting for a slot: drop the request (or stop what it just started).
            self.scheduler.cancel(job)
            raise
        first = pending.pop(0)
        if isinstance(first, Exception):
            raise first

        async def complete() -> Result:
            await ended
            result = self._result(job, assembly)
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

        # Announced from here on: the reply is stored whatever becomes of the caller.
        completion = asyncio.ensure_future(complete())
        self._completions.add(completion)
        completion.add_done_callback(self._completions.discard)
        try:
            yield Started(assembly.prompt_tokens, job.cached, job.seq, response_id)
            while True:
                for signal in pending:
                    if isinstance(signal, TokenEvent):
                        yield signal
                if ENDED in pending:
                    break
                pending = await bridge.take()
        except (GeneratorExit, asyncio.CancelledError):
            # The caller went away: stop generating; what exists is stored as incomplete.
            self.scheduler.cancel(job)
            try:
                await asyncio.shield(completion)
            except Exception:
                log.exception("storing a cancelled generation failed")
            raise
        yield Finished(await asyncio.shield(completion))

    def _result(self, job: TextJob, assembly: Assembly) -> Result:
        finish = job.finish or "error"
        status: Literal["completed", "incomplete", "failed"] = (
            "failed" if finish == "error" else "completed" if finish == "stop" else "incomplete"
        )
        t = job.timings
        return Result(
            status=status,
            text="".join(job.text),
            reasoning="".join(job.reasoning) or None,
            finish_reason=finish,
            usage=Usage(assembly.prompt_tokens, len(job.output_ids), job.cached),
            model=self.model_name,
            error=job.error,
            time_to_first_token_s=t.time_to_first_token_s,
            total_s=(t.ended or time.perf_counter()) - t.submitted,
            messages_dropped=assembly.messages_dropped,
            queue_s=t.queue_s,
            prompt_eval_s=t.prompt_eval_s,
            decode_tokens_per_s=t.decode_tokens_per_s(job.produced),
        )

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

    def generate_text(self, ids: Sequence[int], params: SamplingParams, owner: str) -> str:
        """Blocking generation for the engine's own use (summaries): prompt ids in, text out,
        nothing stored. Runs in a worker thread, never on the event loop or the scheduler's."""
        done = threading.Event()
        refused: list[Exception] = []

        def sink(signal: Signal) -> None:
            if isinstance(signal, Exception):
                refused.append(signal)
            if signal == ENDED or refused:
                done.set()

        job = TextJob(
            ids,
            params,
            owner,
            tokenizer=self.tokenizer,
            eog=self._eog,
            split_thinking=False,
            sink=sink,
        )
        self.scheduler.submit(job, bounded=False)
        done.wait()
        if refused:
            raise refused[0]
        if job.finish == "error":
            raise BackendError(job.error or "generation failed")
        return "".join(job.text)

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
            trimmed = self.prompt.assemble_messages(
                [*past, *new], owner=owner, protected=len(new), **kwargs
            )
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
        return self._summarizer.assemble(trimmed, past, new, kwargs, owner, turn_ids)

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
        return asyncio.run(self._batch(items, concurrency or len(self.scheduler.slots), show))

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


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
