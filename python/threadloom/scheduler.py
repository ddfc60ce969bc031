"""The generation scheduler: one thread owns the model and steps every active sequence.

Each iteration of its loop hands the backend the next chunks (`prefill_chunk` tokens at most
each) of the admitted requests still in prefill, oldest first, as many as fit in one chunk's
worth of tokens (a token budget per step, as llama-server's `n_batch`: several short new turns
start in one step), then asks it for one token of
every sequence that is decoding. A batching backend evaluates all of that in one call. So a long
prompt delays the others' streams by one budget per token at most, every decoding stream gets
one token per iteration (token-level round robin), and requests are admitted first come, first
served. A sequence is a slot: it keeps the evaluated tokens of the
conversation it ran last, and a request goes to the free slot that holds the longest prefix of
its prompt *for the same owner*, so a returning conversation evaluates only its new turn while
no tenant ever profits (in `cached_tokens` or in time) from another tenant's prompt."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from threadloom.backends.base import Backend, SamplingParams, TokenConstraint
from threadloom.errors import Overloaded
from threadloom.kvstate import MIN_STATE_TOKENS, Found, StateCache, StateTag, common_prefix

log = logging.getLogger("threadloom.scheduler")

Finish = Literal["stop", "length", "cancelled", "error"]

# Tokens a continuation may miss of the prompt a slot last evaluated (a reply cut by
# max_tokens may end mid-word, and re-rendering it moves the boundary).
CONTINUATION_SLACK = 8
# A new conversation copies the beginning another of its owner's slots holds when they share
# at least this many tokens: copying a cache stream costs about as much as evaluating a few.
MIN_SHARED_PREFIX = 16
DEFAULT_PREFILL_CHUNK = 64


@dataclass
class Timings:
    """`time.perf_counter()` readings along one request's way through the scheduler."""

    submitted: float = field(default_factory=time.perf_counter)
    admitted: float | None = None
    first_token: float | None = None
    ended: float | None = None

    @property
    def queue_s(self) -> float:
        return (self.admitted or self.submitted) - self.submitted

    @property
    def prompt_eval_s(self) -> float:
        """Until the first token: a batching backend evaluates the prompt's last chunk in the
        step's call that samples it, so the evaluation ends there, not when it was queued."""
        if self.admitted is None or self.first_token is None:
            return 0.0
        return self.first_token - self.admitted

    @property
    def time_to_first_token_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.submitted

    def decode_tokens_per_s(self, tokens: int) -> float | None:
        """Tokens after the first over the time they took."""
        if self.first_token is None or self.ended is None or tokens < 2:
            return None
        span = self.ended - self.first_token
        return (tokens - 1) / span if span > 0 else None


class Job:
    """One generation as the scheduler sees it. The callbacks run on the scheduler's thread,
    so they must be quick; subclasses decide what becomes of the tokens."""

    def __init__(self, ids: Sequence[int], params: SamplingParams, owner: str) -> None:
        if not ids:
            raise ValueError("a generation needs at least one prompt token")
        self.ids = ids
        self.params = params
        self.owner = owner
        # Set from any thread (`Scheduler.cancel`); the loop looks at it every step.
        self.cancelled = False
        self.timings = Timings()
        self.seq = -1
        self.cached = 0
        # Set for a conversation whose state may be saved when its slot goes to another.
        self.tag: StateTag | None = None
        # Prompt tokens the sequence holds; decoding starts when it reaches len(ids).
        self.position = 0
        self.produced = 0
        # The format the reply must match (JSON schema, tool calls): masks every token.
        self.constraint: TokenConstraint | None = None
        # Its saved state, read from its file while it waited (`Scheduler.submit`).
        self.saved: Future[tuple[Found, memoryview] | None] | None = None

    def on_start(self) -> None:
        """Admitted: `seq` and `cached` are set."""

    def on_token(self, token: int) -> Finish | None:
        """A sampled token; a finish reason ends the generation here."""
        return None

    def on_end(self, finish: Finish, error: str | None) -> None:
        """The generation is over and its slot is free again."""

    def on_refused(self, error: Exception) -> None:
        """Never admitted (cancelled while queued, or the scheduler closed)."""


@dataclass
class _Slot:
    index: int
    owner: str | None = None
    last_used: int = 0
    job: Job | None = None
    # The stored conversation the slot's state belongs to (None: not to be saved).
    tag: StateTag | None = None
    # What the slot held when its last job ended, for the reader thread (under the lock): a
    # request its own free slot can continue needs no saved state read.
    held: Sequence[int] = ()
    # The length of the prompt its last job had.
    prompt: int = 0

    def continued_by(self, shared: int, held: int) -> bool:
        """Whether a prompt sharing `shared` of the slot's `held` tokens continues its
        conversation: it holds all of the slot's last prompt. The reply after that prompt is
        stored as text and re-rendered, and need not re-tokenize as it was sampled (a model
        may spell a word in byte tokens that the tokenizer merges), so it may differ."""
        return shared >= min(held, self.prompt) - CONTINUATION_SLACK


class ComputeTurns:
    """A first-come, first-served lock the schedulers of several models take around each step
    (a prompt chunk and one decode step): each model computes with the whole thread budget in
    turn instead of two models oversubscribing the cores. FIFO, so a scheduler that steps
    again at once cannot starve another that waits (a plain Lock gives no such order). A
    scheduler alone takes no turn: the lock would cost it three Condition round trips a
    step for nothing."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._schedulers = 0

    def join(self) -> None:
        with self._cond:
            self._schedulers += 1

    def leave(self) -> None:
        with self._cond:
            self._schedulers -= 1

    def take(self) -> int | None:
        """Waits for this scheduler's turn; returns its ticket for `give` (None: alone)."""
        if self._schedulers < 2:
            return None
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._cond.wait()
        return ticket

    def give(self, ticket: int | None) -> None:
        if ticket is None:
            return
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class Scheduler:
    """Owns `backend` and drives it from one thread. `max_queue` requests may wait while every
    slot is busy; beyond that `submit` raises `Overloaded`. Schedulers given the same
    `compute` turns step one at a time."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_queue: int = 64,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        states: StateCache | None = None,
        compute: ComputeTurns | None = None,
    ) -> None:
        if backend.sequences < 1:
            raise ValueError("a scheduler needs at least one slot")
        if prefill_chunk < 1:
            raise ValueError("prefill_chunk must be at least 1")
        self.backend = backend
        self.slots = [_Slot(i) for i in range(backend.sequences)]
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        # False: every request re-evaluates its whole prompt (for benchmarks).
        self.affinity = True
        # Saved states of conversations whose slot went to another (backends that can).
        self.states = states
        self._compute = compute or ComputeTurns()
        self._compute.join()
        self._clock = itertools.count(1)
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._active: list[Job] = []
        self._closing = False
        # Reads saved states of queued requests, so the step loop never waits on a file.
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="threadloom-kvread")
        self._thread = threading.Thread(target=self._run, name="threadloom-scheduler", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        return len(self._active)

    def submit(self, job: Job, *, bounded: bool = True) -> None:
        """Queues `job`. `bounded=False` is for the engine's own work (summaries), which an
        admitted request waits on and so must not be refused."""
        with self._cond:
            if self._closing:
                raise Overloaded("the engine is shutting down")
            if bounded and len(self._queue) + len(self._active) >= len(self.slots) + self.max_queue:
                raise Overloaded(
                    f"all {len(self.slots)} slots are busy and {len(self._queue)} requests wait"
                )
            if self.states is not None and self.affinity:
                job.saved = self._reader.submit(self._read_saved, job)
                job.saved.add_done_callback(lambda _: self._wake())
            self._queue.append(job)
            self._cond.notify()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _read_saved(self, job: Job) -> tuple[Found, memoryview] | None:
        """The saved state sharing most of `job`'s prompt, read (reader thread); none when a
        free slot of the same owner holds as much (the conversation is still there)."""
        assert self.states is not None
        found = self.states.find(job.owner, job.ids)
        if found is None:
            return None
        with self._cond:
            kept = [s.held for s in self.slots if s.job is None and s.owner == job.owner]
        if any(common_prefix(h, job.ids) + CONTINUATION_SLACK >= found.shared for h in kept):
            return None
        payload = self.states.load(found)
        return None if payload is None else (found, payload)

    def running(self) -> list[Job]:
        """The admitted jobs and the queued ones."""
        with self._cond:
            return [*self._active, *self._queue]

    def cancel(self, job: Job) -> None:
        """Stops `job`: a queued one is dropped, a running one ends as cancelled."""
        job.cancelled = True
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        """Cancels what runs, refuses what waits, stops the thread and closes the backend."""
        with self._cond:
            self._closing = True
            for job in self._active:
                job.cancelled = True
            self._cond.notify()
        self._thread.join()
        self._compute.leave()
        self._reader.shutdown(wait=True)
        if self.states is not None:
            for slot in self.slots:
                self._save(slot)
            self.states.close()
        self.backend.close()

    # ---- the loop (scheduler thread only) ------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._has_work():
                    self._cond.wait()
                refused = self._take_refused()
                if self._closing:
                    refused.extend(self._queue)
                    self._queue.clear()
                admitted = self._admit()
                done = self._closing and not self._active
            for job in refused:
                _call(job.on_refused, Overloaded("cancelled before a slot was free"))
            for job, previous, source in admitted:
                if self.states is not None:
                    self._swap_states(job, previous)
                if source is not None:
                    self._share(job, *source)
                _call(job.on_start)
            if done:
                return
            turn = self._compute.take()
            try:
                self._step()
            except BaseException:  # a bug (or a Rust panic) must not kill the thread all wait on
                log.exception("scheduler step failed")
                for job in list(self._active):
                    self._end(job, "error", "internal error in the scheduler")
            finally:
                self._compute.give(turn)

    def _has_work(self) -> bool:
        return (
            self._closing
            or bool(self._active)
            or (bool(self._queue) and _ready(self._queue[0]))
            or any(j.cancelled for j in self._queue)
        )

    def _take_refused(self) -> list[Job]:
        if not any(j.cancelled for j in self._queue):
            return []
        keep = [j for j in self._queue if not j.cancelled]
        refused = [j for j in self._queue if j.cancelled]
        self._queue = deque(keep)
        return refused

    def _admit(self) -> list[tuple[Job, _Slot, tuple[int, int] | None]]:
        """Gives waiting jobs free slots; returns each with a copy of its slot as it was, and
        the slot and length of a prefix to copy into it (`_prefix_source`)."""
        admitted = []
        while self._queue and not self._closing and any(s.job is None for s in self.slots):
            if not _ready(self._queue[0]):
                break  # its saved state is still being read: first come, first served
            job = self._queue.popleft()
            holding = self._holding(job)
            slot, shared = self._pick(job, holding)
            source = self._prefix_source(job, slot, shared, holding)
            previous = _Slot(slot.index, slot.owner, slot.last_used, None, slot.tag)
            previous.prompt = slot.prompt
            slot.job = job
            slot.held = ()
            slot.prompt = len(job.ids)
            slot.owner = job.owner
            slot.tag = job.tag
            slot.last_used = next(self._clock)
            job.seq = slot.index
            # At least one prompt token is evaluated, so there are logits to sample from.
            job.cached = job.position = min(shared, len(job.ids) - 1)
            job.timings.admitted = time.perf_counter()
            self._active.append(job)
            admitted.append((job, previous, source))
        return admitted

    def _holding(self, job: Job) -> dict[int, tuple[int, int]]:
        """For each slot of `job`'s owner (running or not): how many tokens of `job`'s prompt
        it holds, and how many it holds in all. Only the owner's own slots: one tenant's cache
        never serves another's, not even as a faster first token."""
        if not self.affinity:
            return {}
        out = {}
        for s in self.slots:
            if s.owner == job.owner:
                held = self.backend.held(s.index)
                out[s.index] = (common_prefix(held, job.ids), len(held))
        return out

    def _prefix_source(
        self, job: Job, slot: _Slot, shared: int, holding: dict[int, tuple[int, int]]
    ) -> tuple[int, int] | None:
        """Another slot of the same owner holding a longer beginning of `job`'s prompt than
        `slot` does (a system prompt, a shared opening): copying it is cheaper than evaluating
        it again, and evicts nobody."""
        best, most = None, shared + MIN_SHARED_PREFIX - 1
        for index, (n, _) in holding.items():
            if index != slot.index and n > most:
                best, most = index, n
        return None if best is None else (best, min(most, len(job.ids) - 1))

    def _pick(self, job: Job, holding: dict[int, tuple[int, int]]) -> tuple[_Slot, int]:
        free = [s for s in self.slots if s.job is None]
        mine = [s for s in free if s.index in holding]
        best, shared = None, 0
        for s in mine:
            n, held = holding[s.index]
            # Sharing only a system prompt is not enough; that would evict another
            # conversation.
            if n > shared and s.continued_by(n, held):
                best, shared = s, n
        if best is not None:
            return best, shared
        # Beside the running sequences first, then the least recently used: llama.cpp
        # evaluates a batch over per-sequence caches as one pass over the weights per run of
        # consecutive sequence ids (4 streams on slots 0, 2, 4, 6 decode 1.6x (SmolLM2) to
        # 2.4x (Gemma 3) slower than on 0 to 3). A conversation evicted for it keeps its
        # saved state.
        slots = self.slots

        def running_beside(s: _Slot) -> int:
            return sum(
                1 for i in (s.index - 1, s.index + 1) if 0 <= i < len(slots) and slots[i].job
            )

        chosen = min(free, key=lambda s: (-running_beside(s), s.last_used))
        return chosen, holding[chosen.index][0] if chosen in mine else 0

    def _swap_states(self, job: Job, previous: _Slot) -> None:
        """Before `job` overwrites its slot: saves the conversation the slot held if this is
        not its continuation, and restores `job`'s own saved state if that shares more of its
        prompt than the slot does. A failure costs only the reuse, never the request."""
        assert self.states is not None
        early = job.saved.result() if job.saved is not None else None
        job.saved = None  # the payload is megabytes: not kept for the whole reply
        if not previous.continued_by(job.cached, len(self.backend.held(job.seq))):
            self._save(previous)
        found = self.states.find(job.owner, job.ids)
        if found is None or found.shared <= job.cached + CONTINUATION_SLACK:
            return
        try:
            # What was read while the job waited, unless a better state was saved since.
            if early is not None and early[0].name == found.name:
                payload: memoryview | None = early[1]
            else:
                payload = self.states.load(found)
            if payload is None:
                return
            if not self.backend.load_state(job.seq, payload, found.ids):
                self.states.reject(found)
                return
        except Exception:
            log.exception("restoring a saved state failed")
            return
        self.states.stats.restored += 1
        job.cached = job.position = min(found.shared, len(job.ids) - 1)

    def _share(self, job: Job, src: int, n: int) -> None:
        """Copies the first `n` tokens of slot `src` into `job`'s slot, unless its own saved
        state restored as much. A failure costs only the reuse."""
        if n < job.cached + MIN_SHARED_PREFIX:
            return
        try:
            got = self.backend.share_prefix(src, job.seq, n)
        except Exception:
            log.exception("copying a shared prefix failed")
            return
        if got > job.cached:
            job.cached = job.position = min(got, len(job.ids) - 1)

    def _save(self, slot: _Slot) -> None:
        """Saves the state of the conversation `slot` holds (scheduler thread, or after it):
        copied out of the backend here, written to its file by the cache's writer thread."""
        if self.states is None or slot.tag is None or slot.owner is None:
            return
        try:
            saved = self.backend.save_state(slot.index)
        except Exception:
            log.exception("saving a sequence state failed")
            return
        if saved is not None and len(saved[0]) >= MIN_STATE_TOKENS:
            self.states.save_soon(slot.owner, saved[0], saved[1], slot.tag)

    def _step(self) -> None:
        for job in [j for j in self._active if j.cancelled]:
            self._end(job, "cancelled")
        # The waiting prompts' next chunks, oldest first, while they fit in one chunk's worth
        # of tokens (the first always goes). A chunk is always the next `prefill_chunk`
        # tokens of its prompt, so where a prompt is cut never depends on what else waits:
        # the same prompt evaluates the same way (bit for bit) alone or in company.
        budget = self.prefill_chunk
        for job in [j for j in self._active if j.position < len(j.ids)]:
            size = min(self.prefill_chunk, len(job.ids) - job.position)
            if size > budget and budget < self.prefill_chunk:
                break
            budget -= size
            self._prefill(job, size)
        decoding = [j for j in self._active if j.position >= len(j.ids)]
        if not decoding:
            return
        batch = [(j.seq, j.params) for j in decoding]
        constraints = [j.constraint for j in decoding]
        try:
            if any(c is not None for c in constraints):
                tokens = self.backend.decode(batch, constraints)
            else:
                tokens = self.backend.decode(batch)
        except BaseException as e:  # a Rust panic too: it fails these jobs, not the loop
            log.exception("decode failed")
            for job in decoding:
                self._end(job, "error", f"{type(e).__name__}: {e}")
            return
        now = time.perf_counter()
        for job, token in zip(decoding, tokens, strict=True):
            if job.timings.first_token is None:
                job.timings.first_token = now
            if token is None:
                self._end(job, "length")
                continue
            job.produced += 1
            complete = False
            if job.constraint is not None:
                try:
                    complete = job.constraint.advance(token)
                except Exception as e:  # never a token the format refused
                    self._end(job, "error", str(e))
                    continue
            finish = _call(job.on_token, token)
            if finish is None and complete:
                finish = "stop"
            if finish is None and job.produced >= job.params.max_tokens:
                finish = "length"
            if finish is not None:
                self._end(job, finish)

    def _prefill(self, job: Job, size: int) -> None:
        """Hands the backend the next `size` prompt tokens of `job`."""
        start = job.position
        chunk = job.ids[start : start + size]
        try:
            self.backend.prefill(job.seq, start, chunk)
        except BaseException as e:
            log.exception("prefill failed")
            self._end(job, "error", f"{type(e).__name__}: {e}")
            return
        job.position = start + len(chunk)

    def _end(self, job: Job, finish: Finish, error: str | None = None) -> None:
        held = list(self.backend.held(job.seq)) if self.states is not None else []
        with self._cond:
            self._active.remove(job)
            slot = self.slots[job.seq]
            slot.job = None
            slot.held = held
            slot.last_used = next(self._clock)
        job.timings.ended = time.perf_counter()
        _call(job.on_end, finish, error)


def _ready(job: Job) -> bool:
    """Whether `job` may be admitted: no saved state is still being read for it."""
    return job.saved is None or job.saved.done()


def _call(callback: Callable[..., Finish | None], *args: object) -> Finish | None:
    """Runs a job's callback; its bug ends that job's stream, never the scheduler."""
    try:
        return callback(*args)
    except BaseException:
        log.exception("job callback %r failed", callback)
        return "error" if callback.__name__ == "on_token" else None
