"""The Engine: the Python API for batch jobs and the server's only way in. It assembles the
prompt in the Rust core, hands it to the scheduler (which owns the model), streams token
events to the caller, and stores the inputs and output as a response."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from threadloom import branches, tools
from threadloom._core import Assembly, Constraint, Thread, new_response_id
from threadloom.backends import BackendName, load_backend
from threadloom.backends.base import BackendFactory, SamplingParams, physical_cores
from threadloom.batch import run_batch
from threadloom.bridge import LoopBridge, Workers, mailbox
from threadloom.compaction import Compactor, Summary, compaction_turn, store_key
from threadloom.errors import BackendError, ContextLengthExceeded, InvalidInput, NotFound
from threadloom.events import Event, Finished, Result, Started, TokenEvent, Usage
from threadloom.formats import OutputFormats
from threadloom.generation import ENDED, Signal, TextJob
from threadloom.kvstate import StateCache, StateTag
from threadloom.locks import KeyedLocks
from threadloom.recording import THREAD_DELETED, Destination, Prepared, Recorder
from threadloom.request import Message, Request, make_request
from threadloom.scheduler import DEFAULT_PREFILL_CHUNK, ComputeTurns, Scheduler
from threadloom.storage import ConversationStore, StoreStats, close_store, open_store
from threadloom.summarize import Summarizer

__all__ = [
    "Engine",
    "EngineGroup",
    "Event",
    "Finished",
    "Request",
    "Result",
    "Started",
    "TokenEvent",
    "Usage",
]

T = TypeVar("T")
DEFAULT_KV_CACHE_BYTES = 2 << 30
log = logging.getLogger("threadloom.engine")


class EngineGroup:
    """What the engines of several models over one store share (`threadloom.registry`): a
    thread's turn and the running generations are the conversation's, not the model's, so a
    conversation that changes model between turns still takes turns, a delete ends its
    replies whichever model writes them, and only the first engine stores what a previous
    process left unfinished (a later one would take the others' running replies for that).
    Their schedulers step in turns (`compute`): the thread budget is the process's, so two
    models generating at once share the cores instead of oversubscribing them."""

    def __init__(self, max_queue: int = 64) -> None:
        self.compute = ComputeTurns()
        self.thread_turns = KeyedLocks(max_waiting=max_queue)
        self.runs: dict[tuple[str, str], _Run] = {}
        self.engines: list[Engine] = []
        self.recovered = False

    def state_caches(self) -> list[StateCache]:
        return [e.scheduler.states for e in self.engines if e.scheduler.states is not None]


class Engine:
    """A model, its prompt engine, a pool of slots and a store.

    `model` is the original GGUF file (default: the shipped SmolLM2). `backend` is a factory or
    a name: "ctransformers" (the default; it runs a converted copy kept in `cache_dir`) or
    "llama-cpp" (the `.[llama]` extra; reads the file as is). `chat_template` (a file or a
    built-in name) serves models whose GGUF has none. `kv_cache_dir` turns on saved
    conversation states (`threadloom.kvstate`), at most `kv_cache_bytes`. `group` joins
    other engines over the same (caller's) store; alone, an engine is a group of one.
    """

    def __init__(
        self,
        store: ConversationStore | str | os.PathLike[str],
        model: str | os.PathLike[str] | None = None,
        *,
        slots: int = 4,
        backend: BackendFactory | BackendName | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        context_length: int | None = None,
        gpu_layers: int = 0,
        threads: int | None = None,
        max_queue: int = 64,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        model_name: str | None = None,
        chat_template: str | None = None,
        decode_group: int | None = None,
        kv_cache_type: str = "f16",
        kv_cache_dir: str | os.PathLike[str] | None = None,
        kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
        compaction_key: bytes | None = None,
        progress: bool | None = None,
        group: EngineGroup | None = None,
    ) -> None:
        from threadloom.models import default_model_path, prompt_engine

        if slots < 1:
            raise InvalidInput("slots must be at least 1")
        if threads is not None and threads < 1:
            raise InvalidInput("threads must be at least 1")
        # An LMDB directory or a postgresql:// URL; a store passed in stays the caller's.
        self._owns_store = isinstance(store, (str, os.PathLike))
        opened = open_store(store)
        self.model_path = Path(model) if model is not None else default_model_path()
        self.model_name = model_name or self.model_path.stem
        # One budget for the whole process: the scheduler's thread is the only one computing.
        self.threads = threads or physical_cores()
        if backend is None or isinstance(backend, str):
            backend = load_backend(
                backend or "ctransformers",
                self.model_path,
                cache_dir=Path(cache_dir) if cache_dir is not None else None,
                context_length=context_length,
                gpu_layers=gpu_layers,
                threads=self.threads,
                decode_group=decode_group,
                kv_cache_type=kv_cache_type,
                progress=sys.stderr.isatty() if progress is None else progress,
            )
        self.backend_name = backend.name
        self.prompt = prompt_engine(
            self.model_path,
            context_length or getattr(backend, "context_length", None),
            chat_template,
        )
        self.context_length = self.prompt.context_length
        self.tokenizer = self.prompt.tokenizer
        self._eog = frozenset(self.tokenizer.eog_ids)
        self.tool_family = tools.template_family(self.prompt)
        log.info("tool calls: the %s format", self.tool_family.name)
        self.formats = OutputFormats(self.tokenizer, self.tool_family)
        states = None
        if kv_cache_dir is not None and kv_cache_bytes > 0:
            settings = f"{backend.name}/{self.context_length}/{kv_cache_type}"
            states = StateCache.for_model(
                self.model_path, settings, Path(kv_cache_dir), kv_cache_bytes
            )
        self.group = group or EngineGroup(max_queue)
        self.scheduler = Scheduler(
            backend(slots),
            max_queue=max_queue,
            prefill_chunk=prefill_chunk,
            states=states,
            compute=self.group.compute,
        )
        # Assembly and store reads and writes.
        self._workers = Workers(slots + 4, "threadloom")
        # Saves in flight: each runs to the end even when its caller went away.
        self._completions: set[asyncio.Future[Result]] = set()
        # Pending records of refused requests being dropped.
        self._cleanups: set[asyncio.Future[None]] = set()
        # Called on the event loop with every finished generation (cancelled and failed ones
        # too), before it is stored: one place for metrics, whatever dialect asked for it.
        self.on_finished: list[Callable[[Result], None]] = []
        summarizer = Summarizer(self.prompt, self.generate_text, opened, self.model_name)
        self.recorder = Recorder(opened, self.prompt, summarizer, self.model_name, self.tool_family)
        self.compactor = Compactor(compaction_key or store_key(opened), summarizer)
        self._recover(states, first=not self.group.recovered)
        self.group.recovered = True
        self.group.engines.append(self)
        # Requests on one thread run one after another, in arrival order.
        self._thread_turns = self.group.thread_turns
        # Generations that store a response, by (owner, response id), from their prompt to
        # their stored reply: what deleting their thread or response, a cancel and a request
        # continuing one stop or wait for.
        self._runs = self.group.runs

    @property
    def store(self) -> ConversationStore:
        return self.recorder.store

    @store.setter
    def store(self, store: ConversationStore) -> None:
        self.recorder.store = store

    def close(self) -> None:
        """Cancels running generations and closes everything. From async code prefer
        `aclose`, which also waits for the cancelled generations' replies to be stored."""
        with contextlib.suppress(ValueError):
            self.group.engines.remove(self)
        self.scheduler.close()
        self._workers.shutdown()
        if self._owns_store:
            close_store(self.store)

    def idle(self) -> bool:
        """Nothing generating, queued or being stored: closing now stops nobody."""
        return not self._completions and not self.scheduler.running()

    async def aclose(self) -> None:
        """Stops generating, stores what every running generation produced (as incomplete),
        then closes: a SIGTERM loses no announced reply."""
        for job in self.scheduler.running():
            self.scheduler.cancel(job)
        pending: list[asyncio.Future[Any]] = [*self._completions, *self._cleanups]
        if pending:
            await asyncio.wait(pending, timeout=30)
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    # ---- generation ----------------------------------------------------------------------

    def stream(self, inputs: str | Iterable[Message], **options: Any) -> AsyncGenerator[Event]:
        """`stream_request(Request(inputs=inputs, **options))`: the keyword form."""
        return self.stream_request(make_request(inputs, options))

    async def stream_request(self, req: Request) -> AsyncGenerator[Event]:
        """Generates a reply and yields `Started`, `TokenEvent`s and one `Finished`. Closing the
        iterator early cancels the generation; what was produced is stored as incomplete (the
        save runs to its end even if the caller is gone). Requests on one thread take turns:
        each sees every turn stored before it."""
        new = req.check(self.context_length)
        prepared, constraint, turn_key = await self._begin(req, new)
        run: _Run | None = None
        try:
            run = _Run(self, req, prepared, constraint)
            await run.admitted()
        except BaseException as e:
            if turn_key is not None:
                self._thread_turns.release(turn_key)
            if req.announce:
                self._forget_pending(req.owner, prepared.response_id)
            if run is not None:
                run.untrack()
                if run.ended_by is not None and isinstance(e, Exception):
                    # Its thread was deleted while it waited for a slot.
                    raise NotFound(run.ended_by) from None
            raise
        completion = asyncio.ensure_future(run.complete())
        self._completions.add(completion)
        completion.add_done_callback(self._completions.discard)
        if turn_key is not None:
            completion.add_done_callback(lambda _: self._thread_turns.release(turn_key))
        try:
            yield run.started()
            async for event in run.tokens():
                yield event
        except (GeneratorExit, asyncio.CancelledError):
            # The caller went away: stop generating; the completion stores what exists.
            self.scheduler.cancel(run.job)
            try:
                await asyncio.shield(completion)
            except Exception:
                log.exception("storing a cancelled generation failed")
            raise
        try:
            result = await asyncio.shield(completion)
        except asyncio.CancelledError:
            # Cancelled while the reply is being stored: the save goes on regardless; wait for
            # it, so whoever cancelled finds the response stored.
            with contextlib.suppress(Exception):
                await asyncio.shield(completion)
            raise
        yield Finished(result)

    async def respond(self, inputs: str | Iterable[Message] | Request, **options: Any) -> Result:
        """Like `stream`, returning only the finished result. The reply's id is known only
        once it is stored, so it is not recorded as pending first."""
        req = inputs if isinstance(inputs, Request) else make_request(inputs, options)
        req = msgspec.structs.replace(req, announce=False)
        result: Result | None = None
        async for event in self.stream_request(req):
            if isinstance(event, Finished):
                result = event.result
        assert result is not None
        return result

    def respond_sync(self, inputs: str | Iterable[Message] | Request, **options: Any) -> Result:
        """`respond` for code without an event loop."""
        return asyncio.run(self.respond(inputs, **options))

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
        show = sys.stderr.isatty() if progress is None else progress
        slots = len(self.scheduler.slots)
        return run_batch(self.respond, self.model_name, requests, concurrency or slots, show)

    async def assemble_prompt(
        self, inputs: str | Iterable[Message] | Request, **options: Any
    ) -> Assembly:
        """The prompt `stream` would give the model for the same arguments (same checks, same
        assembly and trimming), without generating or storing anything: for token counting.
        A missing thread is not created."""
        req = inputs if isinstance(inputs, Request) else make_request(inputs, options)
        new = req.check(self.context_length)
        prepared = await self.offload(lambda: self.recorder.prepare(req, new, create=False))
        return prepared.assembly

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

        job = self._job(ids, params, owner, False, sink)
        self.scheduler.submit(job, bounded=False)
        done.wait()
        if refused:
            raise refused[0]
        if job.finish == "error":
            raise BackendError(job.error or "generation failed")
        return "".join(job.text)

    async def compact(self, owner: str, messages: Sequence[Message]) -> Summary:
        """A summary of `messages` for a compaction item (the model writes it)."""
        return await self.offload(lambda: self.compactor.summarize(owner, messages))

    async def history_messages(
        self, owner: str, *, thread: str | None = None, response: str | None = None
    ) -> list[dict[str, str]]:
        """A stored conversation as messages (`role`, `content`, and `tool` where a turn has
        tool data), the form `compact` and `stream` take."""

        def read(store: ConversationStore) -> list[dict[str, str]]:
            turns = store.history(owner=owner, thread=thread, response=response)
            return [
                {"role": t.role, "content": t.content, **({"tool": t.tool} if t.tool else {})}
                for t in turns
            ]

        return await self.offload(lambda: read(self.store))

    async def compact_over(
        self, inputs: list[dict[str, str]], threshold: int, **options: Any
    ) -> tuple[list[dict[str, str]], Summary | None]:
        """`compact_request` in the keyword form."""
        return await self.compact_request(make_request(inputs, options), threshold)

    async def compact_request(
        self, req: Request, threshold: int
    ) -> tuple[list[dict[str, str]], Summary | None]:
        """`req`'s inputs as they go to `stream`, unless the whole prompt (untrimmed) would
        cross `threshold` tokens: then the stored conversation and all but the newest input
        are compacted, and the inputs become the instructions, a compaction turn and that
        newest input. Returns the summary written, if any."""
        inputs = req.new_messages()
        try:
            untrimmed = msgspec.structs.replace(req, strategy="none")
            tokens = (await self.assemble_prompt(untrimmed)).prompt_tokens
        except ContextLengthExceeded as e:
            tokens = e.prompt_tokens
        if tokens <= threshold:
            return inputs, None
        owner, thread, previous = req.owner, req.thread, req.previous_response_id
        history = []
        if thread is not None or previous is not None:
            history = await self.history_messages(owner, thread=thread, response=previous)
        head, last = inputs[:-1], inputs[-1]
        if not any(m["role"] != "system" for m in [*history, *head]):
            return inputs, None  # nothing before the newest input to compact
        summary = await self.compact(owner, [*history, *head])
        instructions = [m for m in head if m["role"] == "system" and "tool" not in m]
        return [*instructions, compaction_turn(summary.text), last], summary

    async def delete_thread(self, owner: str, thread: str) -> None:
        """Deletes a thread and the saved model states of its conversation. The generations
        on it end: each is stored as failed, naming the deletion, before this returns."""
        ending = [r for r in self._runs.values() if r.owner == owner and r.thread == thread]
        for run in ending:
            run.end(THREAD_DELETED)
        try:
            await self.offload(lambda: self.store.delete_thread(thread, owner=owner))
        finally:
            for run in ending:
                await run.wait()
        for states in self.group.state_caches():
            states.forget(thread=thread)

    async def delete_response(self, owner: str, response_id: str) -> None:
        """Deletes a response and the saved model state that ends with it. A running one is
        stopped and stored first; one running on another server is a StateConflict."""
        await self.cancel_response(owner, response_id)
        try:
            await self.offload(lambda: self.store.delete_response(response_id, owner=owner))
        except NotFound:
            check = self.recorder.check_not_running
            await self.offload(lambda: check(owner, response_id, "response_id"))
            raise
        for states in self.group.state_caches():
            states.forget(response=response_id)

    async def cancel_response(self, owner: str, response_id: str) -> bool:
        """Stops a generation of this server and waits until its reply is stored (as
        incomplete). False when no such generation runs here."""
        run = self._runs.get((owner, response_id))
        if run is None:
            return False
        run.end(None)
        await run.wait()
        return True

    async def settled(self, owner: str, response_id: str) -> None:
        """Waits until a response this server is generating is stored (at once when none)."""
        run = self._runs.get((owner, response_id))
        if run is not None:
            await run.wait()

    async def in_turn(self, owner: str, thread: str, work: Callable[[ConversationStore], T]) -> T:
        """Runs `work(store)` in the thread's turn: after every generation and write queued on
        it before, and before the next one reads it. Every write to a thread goes this way (or
        through a generation), so a reply is stored after exactly the history its model saw."""
        key = (owner, thread)
        await self._thread_turns.acquire(key)
        try:
            return await self.offload(lambda: work(self.store))
        finally:
            self._thread_turns.release(key)

    async def pending_response(self, owner: str, response_id: str) -> Destination | None:
        """Where an announced response that is still generating goes; None when there is none."""
        return await self.offload(lambda: self.recorder.pending(owner, response_id))

    async def store_stats(self) -> StoreStats:
        """The store's `stats()` (for /metrics), read in the engine's worker threads."""
        return await self.offload(self.store.stats)

    def _recover(self, states: StateCache | None, *, first: bool) -> None:
        """What a previous run left: responses it announced but did not store (for the
        group's first engine only), and saved states of conversations deleted or swept while
        it was down."""
        recovered = self.recorder.recover() if first else 0
        if recovered:
            log.warning(
                "stored %d responses a previous run announced but did not finish", recovered
            )
        if states is not None:
            self._prune_states(states)

    def _prune_states(self, states: StateCache) -> None:
        """Drops saved states whose response is gone (deleted or swept while the server was
        down): a state must not outlive the conversation it holds."""
        for owner, tag in states.tags():
            try:
                self.store.get_response(tag.response, owner=owner)
            except NotFound:
                states.forget(response=tag.response)

    async def discard_thread_if_empty(self, owner: str, thread: str) -> None:
        """Deletes `thread` if it holds no message, after any generation on it has stored its
        reply (requests on a thread take turns): undoes a thread a failed request created
        without ever deleting one that another request wrote to meanwhile."""

        def discard(store: ConversationStore) -> None:
            if store.get_thread(thread, owner=owner).message_count == 0:
                store.delete_thread(thread, owner=owner)

        with contextlib.suppress(NotFound):
            await self.in_turn(owner, thread, discard)

    # ---- branch trees (threadloom.branches) -----------------------------------------------

    async def thread_tree(self, owner: str, thread: str) -> branches.Tree:
        """The thread's turns and every branch recorded for it, with token counts."""
        return await self.offload(lambda: branches.build(self.store, owner, thread, self.tokenizer))

    async def branch_point(self, owner: str, thread: str, after: str) -> str | None:
        """Where a reply continuing `after` goes: None (the thread), a turn id or `ROOT`."""
        return await self.offload(lambda: branches.resolve(self.store, owner, thread, after))

    async def register_branch(
        self, owner: str, thread: str, response_id: str, after: str | None
    ) -> None:
        """Records a reply stored outside the thread as one of its branches."""
        await self.offload(lambda: branches.register(self.store, owner, thread, response_id, after))

    async def remove_turn(self, owner: str, thread: str, turn_id: str) -> Thread | None:
        """`Recorder.remove_turn` in the thread's turn: after any generation on it has
        stored its reply, and before the next one reads it."""
        return await self.in_turn(
            owner, thread, lambda _: self.recorder.remove_turn(owner, thread, turn_id)
        )

    # ---- internals -----------------------------------------------------------------------

    async def _begin(
        self, req: Request, new: list[dict[str, str]]
    ) -> tuple[Prepared, Constraint | None, tuple[str, str] | None]:
        """The store's half before a generation (`Recorder.begin`: one worker hop) in the
        turn of the thread the request writes to, whichever handle named it; returns the lock
        key it holds. A request naming its thread takes the turn first. One continuing a
        response learns the thread from the read, so it takes the turn after it, and reads
        again inside it only when another request on that thread ran meanwhile."""
        owner = req.owner
        if req.previous_response_id is not None:
            # A response still generating here is waited for: it is the history asked for.
            await self.settled(owner, req.previous_response_id)
        response_id = new_response_id() if req.keeps_reply else None
        turns = self._thread_turns

        def work() -> tuple[Prepared, Constraint | None]:
            return self._begin_work(req, new, response_id)

        held: tuple[str, str] | None = None
        announced = False
        try:
            if req.keeps_reply and req.thread is not None:
                held = (owner, req.thread)
                await turns.acquire(held)
                return (*await self.offload(work), held)
            stamp = turns.read_started()
            try:
                begun = await self.offload(work)
                announced = response_id is not None and req.announce
                thread = begun[0].destination.thread
                if not req.keeps_reply or thread is None:
                    return (*begun, None)
                if await turns.acquire_unchanged((owner, thread), stamp):
                    held = (owner, thread)
                    return (*begun, held)
            finally:
                turns.read_ended(stamp)
            # Another request on that thread ran meanwhile: read again in its turn (the
            # pending record is rewritten in place).
            await turns.acquire((owner, thread))
            held = (owner, thread)
            return (*await self.offload(work), held)
        except BaseException:
            if held is not None:
                turns.release(held)
            if announced:
                self._forget_pending(owner, response_id)
            raise

    def _begin_work(
        self, req: Request, new: list[dict[str, str]], response_id: str | None
    ) -> tuple[Prepared, Constraint | None]:
        """The format first: a schema that cannot be enforced is refused before the store
        creates anything."""
        constraint = self.formats.constraint(req)
        return self.recorder.begin(req, new, response_id), constraint

    def _forget_pending(self, owner: str, response_id: str | None) -> None:
        """Drops the pending record of a request refused after `begin` wrote it (its id was
        never announced). In the background, so a cancelled caller need not wait for it."""
        if response_id is None:
            return
        store = self.store
        cleanup = asyncio.ensure_future(
            self.offload(lambda: store.remove_pending(response_id, owner=owner))
        )
        self._cleanups.add(cleanup)
        cleanup.add_done_callback(self._cleanups.discard)
        cleanup.add_done_callback(_log_failure)

    async def offload(self, work: Callable[[], T]) -> T:
        """Runs store or assembly work in the engine's worker threads, off the event loop: the
        one way the engine and the routes do it (a PostgreSQL round trip or an LMDB commit
        must never stall the other clients)."""
        return await self._workers.run(work)

    def _job(
        self,
        ids: Sequence[int],
        params: SamplingParams,
        owner: str,
        split_thinking: bool,
        sink: Callable[[Signal], None],
    ) -> TextJob:
        return TextJob(
            ids,
            params,
            owner,
            tokenizer=self.tokenizer,
            eog=self._eog,
            split_thinking=split_thinking,
            sink=sink,
        )

    def _notify(self, result: Result) -> None:
        for observer in self.on_finished:
            try:
                observer(result)
            except Exception:  # an observer's bug must not lose the reply
                log.exception("on_finished observer %r failed", observer)


class _Run:
    """One generation between the engine's prologue and its stored result: the scheduler job,
    the bridge its events cross to the loop on, and the save at the end."""

    def __init__(
        self, engine: Engine, req: Request, prepared: Prepared, constraint: Constraint | None
    ) -> None:
        self.engine, self.req, self.prepared = engine, req, prepared
        self.loop = asyncio.get_running_loop()
        self.bridge: LoopBridge[Signal] = LoopBridge(self.loop)
        self.mailbox = mailbox(self.loop)
        self.ended: asyncio.Future[None] = self.loop.create_future()
        self.response_id = prepared.response_id
        self.owner, self.thread = req.owner, prepared.destination.thread
        # Why the run was stopped from outside (its thread deleted): stored as its error.
        self.ended_by: str | None = None
        # Resolved once the run is stored, or has failed before generating.
        self.settled: asyncio.Future[None] = self.loop.create_future()
        self.pending: list[Signal] = []
        split = bool(req.enable_thinking) and req.split_reasoning
        self.job = engine._job(prepared.assembly.ids, req.params, req.owner, split, self._sink)
        self.job.constraint = constraint
        if self.response_id is not None:
            # Its state may be saved for a later turn: only a stored conversation's, which
            # deleting the thread or response removes again.
            self.job.tag = StateTag(prepared.destination.thread, self.response_id)
            engine._runs[(req.owner, self.response_id)] = self

    def end(self, reason: str | None) -> None:
        """Stops the generation; `reason` (else a plain cancel) makes it a failure."""
        if reason is not None:
            self.ended_by = reason
        self.engine.scheduler.cancel(self.job)

    async def wait(self) -> None:
        """Until the reply is stored (or the run failed before generating)."""
        await asyncio.shield(self.settled)

    def untrack(self) -> None:
        if self.response_id is not None:
            self.engine._runs.pop((self.owner, self.response_id), None)
        _resolve(self.settled)

    def _sink(self, signal: Signal) -> None:
        self.bridge.put(signal)
        if signal is ENDED:
            self.mailbox.post(_resolve, self.ended)

    async def admitted(self) -> None:
        """Queues the job and waits for its slot; raises if it was refused."""
        self.engine.scheduler.submit(self.job)
        try:
            self.pending = await self.bridge.take()
        except asyncio.CancelledError:
            # Gone while waiting for a slot: drop the request (or stop what it just started).
            self.engine.scheduler.cancel(self.job)
            raise
        first = self.pending.pop(0)
        if isinstance(first, Exception):
            raise first

    def started(self) -> Started:
        assembly = self.prepared.assembly
        return Started(assembly.prompt_tokens, self.job.cached, self.job.seq, self.response_id)

    async def tokens(self) -> AsyncGenerator[TokenEvent]:
        pending = self.pending
        while True:
            ended = False
            for signal in pending:
                if isinstance(signal, TokenEvent):
                    yield signal
                elif signal is ENDED:
                    ended = True
            if ended:
                return
            pending = await self.bridge.take()

    async def complete(self) -> Result:
        try:
            await self.ended
            result = self._result()
            self.engine._notify(result)
            if self.response_id is None:
                return result
            response_id, owner = self.response_id, self.req.owner
            destination = self.prepared.destination
            announced = self.req.announce
            return await self.engine.offload(
                lambda: self.engine.recorder.save(
                    owner, destination, result, response_id, announced=announced
                )
            )
        finally:
            self.untrack()

    def _result(self) -> Result:
        job, assembly = self.job, self.prepared.assembly
        finish = job.finish or "error"
        status: Literal["completed", "incomplete", "failed"] = (
            "failed"
            if finish == "error" or self.ended_by is not None
            else "completed"
            if finish == "stop"
            else "incomplete"
        )
        t = job.timings
        text, calls = "".join(job.text), list[tools.ToolCall]()
        if self.req.tools is not None:
            text, calls = tools.parse(self.engine.tool_family, self.req.tools, text)
        return Result(
            status=status,
            text=text,
            tool_calls=tuple(calls),
            reasoning="".join(job.reasoning) or None,
            finish_reason=finish,
            usage=Usage(assembly.prompt_tokens, len(job.output_ids), job.cached),
            model=self.engine.model_name,
            error=self.ended_by or job.error,
            time_to_first_token_s=t.time_to_first_token_s,
            total_s=(t.ended or t.submitted) - t.submitted,
            messages_dropped=assembly.messages_dropped,
            queue_s=t.queue_s,
            prompt_eval_s=t.prompt_eval_s,
            decode_tokens_per_s=t.decode_tokens_per_s(job.produced),
        )


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("dropping a pending record failed", exc_info=future.exception())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
