"""Child process of the multi-server tests: one threadloom server on 127.0.0.1 (the same app
`threadloom serve` runs) with the scripted echo backend instead of a model.

Usage: scripted_server.py STORE [DELAY_S]

STORE is an LMDB directory or a postgresql:// URL. DELAY_S slows each generated token down (to
keep requests in flight). Prints `port N` once it listens; serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for server_support

from server_support import EchoScript, attach_tokenizer, scripted
from threadloom.server.app import init_app
from threadloom.server.config import ServerConfig


async def serve(store: str, delay_s: float) -> None:
    script = EchoScript()
    app = init_app(
        ServerConfig(store=store, port=0, slots=2, log_level="warning"),
        backend=scripted(script, delay_s=delay_s),
    )
    attach_tokenizer(app, script)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"port {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    store = sys.argv[1]
    delay_s = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    asyncio.run(serve(store, delay_s))


if __name__ == "__main__":
    main()
