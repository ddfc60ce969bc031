"""`Models`: several declared models over one store, each an `Engine` loaded on the first
request that names it and unloaded when idle (least recently used first beyond
`max_loaded`, or after its TTL). The server uses it; batch jobs keep using one `Engine`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from threadloom.engine import Engine, EngineGroup, Result
from threadloom.errors import InvalidInput, ModelNotFound, ModelUnavailable, Overloaded
from threadloom.registry.spec import RESERVED_NAMES, ModelSpec

__all__ = ["Lease", "LoadedModel", "Models", "OpenEngine"]

log = logging.getLogger("threadloom.models")
# Opens one model's engine (blocking: it runs in a worker thread) into the shared group.
OpenEngine = Callable[[ModelSpec, EngineGroup], Engine]
# How often idle models are checked against their TTL.
TTL_TICK_S = 0.25


@dataclass(eq=False)
class LoadedModel:
    """A declared model and, while loaded, its engine."""

    spec: ModelSpec
    ttl: float
    engine: Engine | None = None
    loading: asyncio.Future[Engine] | None = None
    # Requests holding the engine now (a lease each): a model in use is never unloaded.
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.spec.name

    def idle(self) -> bool:
        return self.engine is not None and self.leases == 0 and self.engine.idle()


class Lease:
    """One request's hold on a loaded model; `release` it when the request ends."""

    def __init__(self, models: Models, entry: LoadedModel, engine: Engine) -> None:
        self.engine = engine
        self._models, self._entry = models, entry
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._entry.leases -= 1
            self._entry.last_used = time.monotonic()


class Models:
    """The declared models, by name and alias ("default" and no name: the first one).

    Loading runs in a worker thread, so the loaded models keep serving meanwhile; requests
    for a model being loaded wait for that one load. At most `max_loaded` stay loaded: a new
    one first unloads the least recently used idle one (waiting up to `evict_wait_s` for one
    to become idle). Unloading closes the engine as at stop, which saves its slots'
    conversation states. All engines share `group` (the store, a thread's turn, the running
    generations)."""

    def __init__(
        self,
        specs: Sequence[ModelSpec],
        open_engine: OpenEngine,
        *,
        max_loaded: int | None = None,
        ttl: float = 0.0,
        max_queue: int = 64,
        evict_wait_s: float = 60.0,
    ) -> None:
        if not specs:
            raise InvalidInput("at least one model must be declared", param="models")
        if max_loaded is not None and max_loaded < 1:
            raise InvalidInput("max_loaded_models must be at least 1", param="max_loaded_models")
        self._open = open_engine
        self.max_loaded = max_loaded
        self.evict_wait_s = evict_wait_s
        self.group = EngineGroup(max_queue)
        self.entries = [LoadedModel(s, ttl if s.ttl is None else s.ttl) for s in specs]
        self._by_name = {n: e for e in self.entries for n in e.spec.names()}
        for name in RESERVED_NAMES:
            self._by_name.setdefault(name, self.entries[0])
        # Loads and unloads one at a time: the loaded count never overshoots.
        self._lock = asyncio.Lock()
        self._ttl_task: asyncio.Task[None] | None = None
        # Called with every finished generation of every model (metrics).
        self.on_finished: list[Callable[[Result], None]] = []

    @property
    def default(self) -> LoadedModel:
        return self.entries[0]

    def entry(self, model: str | None, param: str = "model") -> LoadedModel:
        """The declared model a request names; a name nobody declared is `ModelNotFound`."""
        entry = self._by_name.get(model or "default")
        if entry is None:
            raise ModelNotFound(
                f"model {model!r} does not exist", param=param, kind="model", id=model
            )
        return entry

    async def start(self) -> None:
        """Loads the default model (a broken one fails the start with its own error, as a
        server of one model always did) and starts the TTL watch."""
        try:
            await self._load(self.default)
        except ModelUnavailable as e:
            raise (e.__cause__ or e) from None
        if any(e.ttl > 0 for e in self.entries):
            self._ttl_task = asyncio.create_task(self._watch_ttl())

    async def acquire(self, model: str | None, param: str = "model") -> Lease:
        """The engine of the model a request names, loading it first if needed, held by the
        returned lease until it is released."""
        entry = self.entry(model, param)
        while True:
            engine = entry.engine
            if engine is not None:
                entry.leases += 1
                entry.last_used = time.monotonic()
                return Lease(self, entry, engine)
            if entry.loading is None:
                entry.loading = asyncio.ensure_future(self._load(entry))
            # Shielded: a client that leaves does not abort the load the others wait for.
            await asyncio.shield(entry.loading)

    @contextlib.asynccontextmanager
    async def use(self, model: str | None = None) -> AsyncIterator[Engine]:
        """`acquire` for a block: `async with models.use("gemma") as engine: ...`."""
        lease = await self.acquire(model)
        try:
            yield lease.engine
        finally:
            lease.release()

    async def any_engine(self) -> Lease:
        """An engine for store work (every engine shares the store, the turns and the running
        generations): the most recently used loaded one, else the default model, loaded."""
        loaded = [e for e in self.entries if e.engine is not None]
        if loaded:
            return await self.acquire(max(loaded, key=lambda e: e.last_used).name)
        return await self.acquire(None)

    def loaded(self) -> list[Engine]:
        return [e.engine for e in self.entries if e.engine is not None]

    async def unload(self, model: str | None) -> bool:
        """Unloads a model now (its running generations stop and are stored, its states
        saved). False when it was not loaded."""
        entry = self.entry(model)
        async with self._lock:
            return await self._unload(entry)

    async def close(self) -> None:
        if self._ttl_task is not None:
            self._ttl_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ttl_task
        async with self._lock:
            for entry in self.entries:
                await self._unload(entry)

    # ---- internals -----------------------------------------------------------------------

    async def _load(self, entry: LoadedModel) -> Engine:
        try:
            async with self._lock:
                if entry.engine is not None:
                    return entry.engine
                await self._make_room()
                started = time.monotonic()
                loop = asyncio.get_running_loop()
                try:
                    engine = await loop.run_in_executor(None, self._open, entry.spec, self.group)
                except Exception as e:
                    log.exception("model %r failed to load", entry.name)
                    raise ModelUnavailable(
                        f"model {entry.name!r} could not be loaded ({type(e).__name__}); "
                        "the server log has the detail",
                        param="model",
                    ) from e
                for observer in self.on_finished:
                    engine.on_finished.append(observer)
                engine.on_finished.append(lambda _: _touch(entry))
                entry.engine, entry.last_used = engine, time.monotonic()
                log.info(
                    "loaded model %r (%s) in %.1f s",
                    entry.name,
                    engine.backend_name,
                    entry.last_used - started,
                )
                return engine
        finally:
            entry.loading = None

    async def _make_room(self) -> None:
        """Unloads least recently used idle models until one more fits (lock held)."""
        if self.max_loaded is None:
            return
        deadline = time.monotonic() + self.evict_wait_s
        while sum(e.engine is not None for e in self.entries) >= self.max_loaded:
            idle = [e for e in self.entries if e.idle()]
            if idle:
                await self._unload(min(idle, key=lambda e: e.last_used))
                continue
            if time.monotonic() >= deadline:
                raise Overloaded(
                    f"all {self.max_loaded} loaded models are busy; none can be unloaded"
                )
            await asyncio.sleep(0.05)

    async def _unload(self, entry: LoadedModel) -> bool:
        engine = entry.engine
        if engine is None:
            return False
        entry.engine = None
        await engine.aclose()
        log.info("unloaded model %r", entry.name)
        return True

    async def _watch_ttl(self) -> None:
        while True:
            await asyncio.sleep(TTL_TICK_S)
            now = time.monotonic()
            for entry in self.entries:
                if entry.ttl > 0 and entry.idle() and now - entry.last_used >= entry.ttl:
                    async with self._lock:
                        # Still idle and expired once the lock is ours.
                        if entry.idle() and time.monotonic() - entry.last_used >= entry.ttl:
                            await self._unload(entry)


def _touch(entry: LoadedModel) -> None:
    entry.last_used = time.monotonic()
