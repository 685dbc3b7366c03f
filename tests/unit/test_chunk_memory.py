"""The web server's memory of encoded chunks: one production per chunk at a time, bounded, failures forgotten."""

import asyncio

import pytest

from backend.web.chunk_memory import ChunkMemory
from tests.helpers import wait_for


def _producer(calls: list, body: bytes = b"x" * 10, delay: float = 0.05, fail: bool = False):
    async def produce() -> bytes:
        calls.append(asyncio.current_task())  # the production the memory started
        await asyncio.sleep(delay)
        if fail:
            raise RuntimeError("block failed")
        return body
    return produce


def test_concurrent_clients_share_one_production_and_later_ones_are_answered_from_memory():
    async def scenario():
        memory, calls = ChunkMemory(100), []
        bodies = await asyncio.gather(*(memory.get("k", _producer(calls)) for _ in range(8)))
        again = await memory.get("k", _producer(calls))
        return bodies, again, calls, memory.size

    bodies, again, calls, size = asyncio.run(scenario())
    assert bodies == [b"x" * 10] * 8 and again == b"x" * 10 and len(calls) == 1 and size == 10


def test_memory_is_bounded_and_drops_the_least_recently_used():
    async def scenario():
        memory, calls = ChunkMemory(25), []
        for key in ("a", "b", "a", "c"):  # c pushes out b, the least recently used
            await memory.get(key, _producer(calls, delay=0))
        await memory.get("b", _producer(calls, delay=0))
        return calls, memory.size

    calls, size = asyncio.run(scenario())
    assert len(calls) == 4 and size <= 25


def test_failures_are_not_remembered_and_the_last_client_leaving_cancels_the_production():
    async def scenario():
        memory, calls = ChunkMemory(100), []
        with pytest.raises(RuntimeError):
            await memory.get("k", _producer(calls, fail=True))
        assert await memory.get("k", _producer(calls)) == b"x" * 10
        waiting = asyncio.ensure_future(memory.get("slow", _producer(calls, delay=10)))
        await asyncio.to_thread(wait_for, lambda: len(calls) == 3, 10, message="the production did not start")
        task = calls[-1]
        waiting.cancel()
        await asyncio.to_thread(wait_for, task.done, 10, message="the production goes on")
        return task.cancelled(), len(calls), memory.producing("slow")

    cancelled, produced, pending = asyncio.run(scenario())
    assert cancelled and produced == 3 and not pending
