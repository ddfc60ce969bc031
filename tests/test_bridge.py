"""The loop's mailbox and the engine's worker threads: results and errors come back to the
awaiting coroutine, a cancelled waiter leaves its work running, closing fails what has not
started, and calls posted together wake the loop once."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
from threadloom.bridge import LoopBridge, Workers, mailbox


def test_work_returns_its_result_or_raises_its_error_in_the_caller() -> None:
    workers = Workers(2, "test")

    async def main() -> None:
        assert await workers.run(lambda: threading.current_thread().name) in {"test_0", "test_1"}
        empty: dict[str, int] = {}
        with pytest.raises(KeyError, match="missing"):
            await workers.run(lambda: empty["missing"])
        results = await asyncio.gather(*(workers.run(lambda i=i: i * i) for i in range(50)))  # type: ignore[misc]
        assert results == [i * i for i in range(50)]

    try:
        asyncio.run(main())
    finally:
        workers.shutdown()


def test_a_cancelled_waiter_leaves_its_work_running_to_the_end() -> None:
    workers = Workers(1, "test")
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.1)
        finished.set()

    async def main() -> None:
        task = asyncio.ensure_future(workers.run(slow))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await workers.run(lambda: finished.is_set())  # ran after `slow` ended

    try:
        asyncio.run(main())
    finally:
        workers.shutdown()


def test_closing_fails_the_work_that_has_not_started_and_refuses_more() -> None:
    workers = Workers(1, "test")
    release = threading.Event()

    async def main() -> None:
        running = workers.run(release.wait)
        queued = workers.run(lambda: "never")
        await asyncio.sleep(0.02)
        closing = asyncio.get_running_loop().run_in_executor(None, workers.shutdown)
        await asyncio.sleep(0.02)
        release.set()
        await closing
        assert await running is True
        with pytest.raises(RuntimeError, match="closed"):
            await queued
        with pytest.raises(RuntimeError, match="closed"):
            workers.run(lambda: None)

    asyncio.run(main())


def test_calls_posted_together_wake_the_loop_once_and_run_in_order() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        box = mailbox(loop)
        assert mailbox(loop) is box
        wakes = 0
        real = loop.call_soon_threadsafe

        def counting(*args: object) -> asyncio.Handle:
            nonlocal wakes
            wakes += 1
            return real(*args)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
        streams: list[LoopBridge[int]] = [LoopBridge(loop), LoopBridge(loop)]

        def produce() -> None:  # a scheduler step after step, two streams' tokens each
            for i in range(100):
                for stream in streams:
                    stream.put(i)

        # The loop is busy (blocked here) while another thread posts: one wake-up for all
        # of both streams' items.
        thread = threading.Thread(target=produce)
        thread.start()
        thread.join()
        for stream in streams:
            assert await stream.take() == list(range(100))
        assert wakes == 1

    asyncio.run(main())


def test_a_finished_loop_is_not_kept_alive_by_its_mailbox() -> None:
    """Every `asyncio.run` (`Engine.respond_sync`, a batch job's calls) makes a loop: its
    mailbox must not keep it, or a long batch job grows without bound."""

    async def use() -> weakref.ref[asyncio.AbstractEventLoop]:
        loop = asyncio.get_running_loop()
        bridge: LoopBridge[int] = LoopBridge(loop)
        bridge.put(1)
        assert await bridge.take() == [1]
        return weakref.ref(loop)

    gone = asyncio.run(use())
    gc.collect()
    assert gone() is None


def test_work_running_at_exit_is_finished_first(tmp_path: Path) -> None:
    """The worker threads never hold the interpreter open while idle, but a store write
    running when the program ends is waited for, as an executor's would be."""
    marker = tmp_path / "written"
    script = f"""
import asyncio, time
from threadloom.bridge import Workers
workers = Workers(1, "test")
def slow_write():
    time.sleep(0.3)
    open({str(marker)!r}, "w").write("done")
async def main():
    workers.run(slow_write)
    await asyncio.sleep(0.05)
asyncio.run(main())
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    assert marker.read_text() == "done"
