"""A compacted conversation survives a restart: the compaction turn is stored, so an engine
opened again on the same store (either kind) continues from the summary."""

from __future__ import annotations

import asyncio
import gc

from server_support import EchoScript


def test_a_restarted_engine_continues_the_compacted_conversation(store_spec: str) -> None:
    from threadloom.engine import Engine
    from threadloom.testing import ScriptedFactory

    def engine() -> Engine:
        script = EchoScript()
        e = Engine(store_spec, backend=ScriptedFactory(script), slots=1)
        script.tokenizer = e.tokenizer
        return e

    async def before() -> str:
        e = engine()
        try:
            one = await e.respond("one")
            two = await e.respond("two", previous_response_id=one.response_id)
            inputs, summary = await e.compact_over(
                [{"role": "user", "content": "three"}], 5, previous_response_id=two.response_id
            )
            assert summary is not None and [m["role"] for m in inputs] == ["system", "user"]
            three = await e.respond(inputs, previous_response_id=two.response_id)
            assert three.text == "[three]"
            assert three.response_id is not None
            return three.response_id
        finally:
            await e.aclose()

    async def after(previous: str) -> str:
        e = engine()
        try:
            return (await e.respond("four", previous_response_id=previous)).text
        finally:
            await e.aclose()

    third = asyncio.run(before())
    gc.collect()  # the LMDB store closes with its last reference
    assert asyncio.run(after(third)) == "[three | four]"
