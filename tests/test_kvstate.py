"""Saved conversation states (`threadloom.kvstate`): the file cache itself, and the scheduler
saving and restoring through the Engine with the scripted backend, whose state is its held
token ids (the llama.cpp backend's real states: tests/test_llama_states.py)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import threadloom
from threadloom.backends.base import SamplingParams
from threadloom.engine import Engine
from threadloom.kvstate import Found, StateCache, StateTag, file_fingerprint
from threadloom.scheduler import Finish, Job, Scheduler
from threadloom.testing import ScriptedBackend, ScriptedFactory

EOS = 2
IDS = list(range(100, 200))
TAG = StateTag("thread_a", "resp_a")


def cache(tmp_path: Path, budget: int = 1 << 20, fingerprint: str = "model-1") -> StateCache:
    return StateCache(tmp_path / "kv", fingerprint, budget)


def test_save_find_load_round_trip(tmp_path: Path) -> None:
    c = cache(tmp_path)
    c.save("alice", IDS, b"payload" * 100, TAG)
    found = c.find("alice", [*IDS, 7, 8])
    assert found is not None and found.shared == len(IDS) and list(found.ids) == IDS
    assert c.load(found) == b"payload" * 100
    # A prompt that leaves the saved path early still shares its beginning.
    partial = c.find("alice", [*IDS[:50], 1, 2, 3])
    assert partial is not None and partial.shared == 50
    assert c.find("alice", [1, 2, 3]) is None
    assert c.stats.saved == 1


def test_another_tenant_never_finds_the_state(tmp_path: Path) -> None:
    c = cache(tmp_path)
    c.save("alice", IDS, b"x" * 10, TAG)
    assert c.find("bob", IDS) is None


def test_a_longer_state_supersedes_its_prefix(tmp_path: Path) -> None:
    c = cache(tmp_path)
    c.save("alice", IDS[:60], b"short", StateTag("thread_a", "resp_1"))
    c.save("alice", IDS, b"long", StateTag("thread_a", "resp_2"))
    assert len(c) == 1 and len(list((tmp_path / "kv").glob("*.kv"))) == 1
    found = c.find("alice", IDS[:60])
    assert found is not None and c.load(found) == b"long"


def test_budget_evicts_least_recently_used(tmp_path: Path) -> None:
    # Each file is about 1.5 kB (header, 101 ids, 900 payload bytes): three fit.
    c = cache(tmp_path, budget=5000)
    for n in range(3):
        c.save("alice", [n, *IDS], bytes(900), StateTag(None, f"resp_{n}"))
    first = c.find("alice", [0, *IDS])
    assert first is not None and c.load(first) is not None  # now the most recently used
    c.save("alice", [9, *IDS], bytes(900), StateTag(None, "resp_9"))
    assert c.stats.evicted == 1 and c.bytes_held <= 5000
    assert c.find("alice", [0, *IDS]) is not None
    assert c.find("alice", [1, *IDS]) is None
    # A state larger than the whole budget is not kept at all.
    c.save("alice", [5, *IDS], bytes(6000), StateTag(None, "resp_5"))
    assert c.find("alice", [5, *IDS]) is None


def test_states_survive_a_reopen_and_a_foreign_models_are_ignored(tmp_path: Path) -> None:
    cache(tmp_path).save("alice", IDS, b"abc" * 50, TAG)
    again = cache(tmp_path)
    found = again.find("alice", IDS)
    assert found is not None and again.load(found) == b"abc" * 50
    other = cache(tmp_path, fingerprint="model-2")
    assert len(other) == 0 and other.find("alice", IDS) is None
    # The other model's file is left for whoever made it.
    assert len(list((tmp_path / "kv").glob("*.kv"))) == 1


def test_corrupt_and_truncated_files_are_ignored_and_removed(tmp_path: Path) -> None:
    c = cache(tmp_path)
    c.save("alice", IDS, b"A" * 1000, TAG)
    c.save("alice", [1, *IDS], b"B" * 1000, StateTag(None, "resp_b"))
    files = sorted((tmp_path / "kv").glob("*.kv"))
    assert len(files) == 2
    corrupt, truncated = (
        (c.directory / c.find("alice", IDS).name),  # type: ignore[union-attr]
        (c.directory / c.find("alice", [1, *IDS]).name),  # type: ignore[union-attr]
    )
    data = bytearray(corrupt.read_bytes())
    data[-10] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    # Found while running: the payload check refuses the corrupt one.
    found = c.find("alice", IDS)
    assert found is not None and c.load(found) is None and not corrupt.exists()
    # Found at start: the size check refuses the truncated one.
    reopened = cache(tmp_path)
    assert reopened.find("alice", [1, *IDS]) is None and not truncated.exists()
    assert reopened.stats.rejected == 1


def test_forget_by_thread_and_response(tmp_path: Path) -> None:
    c = cache(tmp_path)
    c.save("alice", IDS, b"1", StateTag("thread_a", "resp_1"))
    c.save("alice", [1, *IDS], b"2", StateTag("thread_b", "resp_2"))
    c.save("alice", [2, *IDS], b"3", StateTag(None, "resp_3"))
    assert c.forget(thread="thread_a") == 1
    assert c.forget(response="resp_3") == 1
    assert [t.response for _, t in c.tags()] == ["resp_2"]
    assert len(list((tmp_path / "kv").glob("*.kv"))) == 1


# ---- through the scheduler -----------------------------------------------------------------


def reopen(engine: Engine, tmp_path: Path) -> tuple[Engine, ScriptedFactory]:
    """Closes `engine` (as a server stop does) and starts another on the same store."""
    store = engine.store
    engine.close()
    return make_engine(tmp_path, store=store)


def make_engine(
    tmp_path: Path, store: object = None, **kwargs: object
) -> tuple[Engine, ScriptedFactory]:
    holder: dict[str, threadloom.Tokenizer] = {}

    def script(ids: Sequence[int]) -> list[int]:
        return [*holder["tok"].encode(" A reply of several words."), EOS]

    factory = ScriptedFactory(script)
    try:
        engine = Engine(
            store or threadloom.Store(tmp_path / "store"),  # type: ignore[arg-type]
            backend=factory,
            slots=1,
            kv_cache_dir=tmp_path / "kv",
            **kwargs,  # type: ignore[arg-type]
        )
    except threadloom.errors.ModelNotInstalled as e:
        pytest.skip(str(e))
    holder["tok"] = engine.tokenizer
    return engine, factory


LONG = "Please remember this long story about a lighthouse keeper. " * 6


def restores(backend: ScriptedBackend) -> list[int]:
    return [n for kind, _, n in backend.log if kind == "restore"]


def test_a_conversation_whose_slot_was_taken_restores_its_state(tmp_path: Path) -> None:
    engine, factory = make_engine(tmp_path)
    try:
        first = engine.respond_sync(LONG, thread="a")
        # Another conversation takes the only slot: the first one's state is saved.
        engine.respond_sync("An unrelated question about tides and the moon. " * 4, thread="b")
        assert engine.scheduler.states is not None
        engine.scheduler.states.flush()
        assert engine.scheduler.states.stats.saved == 1
        backend = factory.instances[0]
        evaluated = backend.prompt_tokens_evaluated
        again = engine.respond_sync("And then?", thread="a")
        assert restores(backend) and again.usage.cached_tokens >= first.usage.prompt_tokens
        # Only the new turn (and the re-rendered end of the last reply) was evaluated.
        assert backend.prompt_tokens_evaluated - evaluated < again.usage.prompt_tokens // 2
    finally:
        engine.close()


def test_states_outlive_the_process(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path)
    first = engine.respond_sync(LONG, thread="a")
    engine, factory = reopen(engine, tmp_path)  # closing saves what the slots hold
    try:
        again = engine.respond_sync("And then?", thread="a")
        assert restores(factory.instances[0])
        assert again.usage.cached_tokens >= first.usage.prompt_tokens
    finally:
        engine.close()


def test_deleting_the_thread_removes_its_states(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path)
    engine.respond_sync(LONG, thread="a")
    engine, _ = reopen(engine, tmp_path)
    try:
        states = engine.scheduler.states
        assert states is not None and len(states) == 1
        asyncio.run(engine.delete_thread("default", "a"))
        assert len(states) == 0 and not list((tmp_path / "kv").glob("*.kv"))
    finally:
        engine.close()


def test_two_tenants_with_the_same_prompt_do_not_share_a_state(tmp_path: Path) -> None:
    engine, factory = make_engine(tmp_path)
    try:
        alice = engine.respond_sync(LONG, thread="shared", owner="alice")
        engine.respond_sync("Something else entirely, said at length. " * 4, owner="carol")
        bob = engine.respond_sync(LONG, thread="shared", owner="bob")
        assert alice.usage.cached_tokens == 0 and bob.usage.cached_tokens == 0
        assert not restores(factory.instances[0])
    finally:
        engine.close()


def test_store_false_conversations_are_never_saved(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path)
    try:
        engine.respond_sync(LONG, store=False)
        engine.respond_sync("Another long and different question. " * 5, store=False)
        assert engine.scheduler.states is not None and len(engine.scheduler.states) == 0
    finally:
        engine.close()


def test_model_fingerprint_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights" * 1000)
    memo = tmp_path / "model.json"
    plain = file_fingerprint(model, "llama-cpp/4096/f16")
    assert file_fingerprint(model, "llama-cpp/4096/f16", memo) == plain
    assert file_fingerprint(model, "llama-cpp/4096/q8_0", memo) != plain
    # An unchanged file is not read again: a doctored digest in the memo is believed...
    record = json.loads(memo.read_bytes())
    memo.write_text(json.dumps({**record, "sha256": "0" * 64}))
    assert file_fingerprint(model, "llama-cpp/4096/f16", memo) != plain
    # ...until the file changes (size or modification time), when it is hashed afresh.
    model.write_bytes(b"other weights" * 1000)
    changed = file_fingerprint(model, "llama-cpp/4096/f16", memo)
    assert changed == file_fingerprint(model, "llama-cpp/4096/f16")
    assert changed != plain
    # A damaged memo is recomputed, not trusted.
    memo.write_text("{not json")
    assert file_fingerprint(model, "llama-cpp/4096/f16", memo) == changed


class _SlowDisk(StateCache):
    """A cache whose file writes wait until `release` is set (a slow or busy disk)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "model-1", 1 << 20)
        self.release = threading.Event()
        self.writing = threading.Event()

    def save(self, owner: str, ids: Sequence[int], payload: bytes, tag: StateTag) -> None:
        self.writing.set()
        assert self.release.wait(30)
        super().save(owner, ids, payload, tag)


class _Count(Job):
    def __init__(self, ids: Sequence[int], max_tokens: int, tag: StateTag | None) -> None:
        super().__init__(ids, SamplingParams(max_tokens=max_tokens), "alice")
        self.tag = tag
        self.tokens = 0
        self.done = threading.Event()

    def on_token(self, token: int) -> Finish | None:
        self.tokens += 1
        return None

    def on_end(self, finish: Finish, error: str | None) -> None:
        self.done.set()


def test_writing_a_saved_state_does_not_stall_the_other_streams(tmp_path: Path) -> None:
    """The state of a conversation whose slot goes to another is copied out on the scheduler's
    thread and written by the cache's writer: while the write hangs, every stream goes on."""
    disk = _SlowDisk(tmp_path / "kv")
    backend = ScriptedBackend(lambda ids: [7] * 100_000, 2, 100_000, delay_s=0.001)
    s = Scheduler(backend, states=disk)
    try:
        stream = _Count([1, 2, 3], 100_000, None)
        s.submit(stream)
        first = _Count(IDS[:40], 3, StateTag("thread_a", "resp_a"))
        s.submit(first)
        assert first.done.wait(10)
        # Another conversation takes the first one's slot: its state is saved.
        s.submit(_Count(IDS[50:90], 3, StateTag("thread_b", "resp_b")))
        assert disk.writing.wait(10)
        before = stream.tokens
        threading.Event().wait(0.2)
        assert stream.tokens > before + 20
        # The state is found (and restorable) before its file exists.
        found = disk.find("alice", IDS[:40])
        assert found is not None and disk.load(found) is not None
        assert not list((tmp_path / "kv").glob("*.kv"))
    finally:
        disk.release.set()
        s.cancel(stream)
        s.close()
    assert len(list((tmp_path / "kv").glob("*.kv"))) >= 1


class _Watched(StateCache):
    """A cache that notes which thread reads each state file."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "model-1", 1 << 20)
        self.readers: list[str] = []

    def load(self, found: Found) -> memoryview | None:
        self.readers.append(threading.current_thread().name)
        return super().load(found)


def _evicted(tmp_path: Path) -> tuple[_Watched, ScriptedBackend, Scheduler]:
    """One slot; conversation TAG ran, then another took the slot: TAG's state is on disk."""
    disk = _Watched(tmp_path / "kv")
    backend = ScriptedBackend(lambda ids: [7] * 100_000, 1, 100_000)
    s = Scheduler(backend, states=disk)
    for ids, tag in ((IDS[:40], TAG), (IDS[50:90], StateTag("thread_b", "resp_b"))):
        _run(s, _Count(ids, 3, tag))
    disk.flush()
    return disk, backend, s


def _run(s: Scheduler, job: _Count) -> None:
    s.submit(job)
    assert job.done.wait(10)


def test_a_saved_state_is_read_while_its_request_waits_not_on_the_step_thread(
    tmp_path: Path,
) -> None:
    disk, backend, s = _evicted(tmp_path)
    try:
        _run(s, _Count([*IDS[:40], 7, 7, 7, 5, 6], 3, TAG))
    finally:
        s.close()
    # The prompt and the reply's evaluated tokens (40 + 2) came back from the saved state.
    assert [n for kind, _, n in backend.log if kind == "restore"] == [42]
    assert disk.readers and all(r.startswith("threadloom-kvread") for r in disk.readers)
    assert disk.stats.restored == 1


def test_no_saved_state_is_read_for_a_conversation_its_free_slot_still_holds(
    tmp_path: Path,
) -> None:
    """A conversation restored into its slot and continued there again: the slot holds more of
    it than the saved file, so the reader thread leaves the file alone."""
    disk, backend, s = _evicted(tmp_path)
    try:
        turn = [*IDS[:40], 7, 7, 7, 5, 6]
        for more in ([], [7, 7, 7, 8, 9]):  # restored from the file, then continued in place
            turn = [*turn, *more]
            _run(s, _Count(turn, 3, TAG))
    finally:
        s.close()
    assert len(disk.readers) == 1
    assert [kind for kind, _, _ in backend.log].count("restore") == 1
