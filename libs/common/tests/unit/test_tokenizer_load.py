"""`tokenizer.load()`: the vocabulary loads in a worker thread, once for every caller
waiting at the same time, while the event loop goes on; a failed load is tried again."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from switchyard.common import tokenizer


@pytest.fixture
def slow_vocabulary(monkeypatch) -> list[str]:
    """A load that takes 0.3 s and records the thread it ran on; nothing is loaded yet."""
    loads: list[str] = []

    def load() -> object:
        loads.append(threading.current_thread().name)
        time.sleep(0.3)
        tokenizer._encoding = "vocabulary"
        return tokenizer._encoding

    monkeypatch.setattr(tokenizer, "_encoding", None)
    monkeypatch.setattr(tokenizer, "_loading", None)
    monkeypatch.setattr(tokenizer, "encoding", load)
    return loads


async def test_concurrent_callers_share_one_load_in_a_thread_while_the_loop_runs(
    slow_vocabulary, monkeypatch
):
    ticks = 0
    ticked = threading.Event()  # set by the loop's 10th tick
    waited: list[bool] = []

    def load() -> object:
        slow_vocabulary.append(threading.current_thread().name)
        # The load ends only once the loop has ticked 10 times meanwhile: it does only if
        # the load does not block it.
        waited.append(ticked.wait(timeout=5))
        tokenizer._encoding = "vocabulary"
        return tokenizer._encoding

    monkeypatch.setattr(tokenizer, "encoding", load)

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1
            if ticks == 10:
                ticked.set()

    ticker = asyncio.create_task(tick())
    try:
        loaded = await asyncio.gather(*(tokenizer.load() for _ in range(20)))
    finally:
        ticker.cancel()
    assert loaded == ["vocabulary"] * 20
    assert len(slow_vocabulary) == 1 and slow_vocabulary[0] != threading.main_thread().name
    assert waited == [True]  # the loop went on while the thread loaded
    assert tokenizer.loaded()
    assert await tokenizer.load() == "vocabulary" and len(slow_vocabulary) == 1


async def test_a_caller_that_gives_up_leaves_the_load_to_the_others(slow_vocabulary):
    first = asyncio.create_task(tokenizer.load())
    second = asyncio.create_task(tokenizer.load())
    await asyncio.sleep(0.05)
    first.cancel()
    assert await second == "vocabulary"
    assert first.cancelled() and len(slow_vocabulary) == 1


async def test_a_failed_load_raises_to_its_callers_and_is_tried_again(monkeypatch):
    attempts: list[int] = []

    def load() -> object:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("vocabulary file unreadable")
        tokenizer._encoding = "vocabulary"
        return tokenizer._encoding

    monkeypatch.setattr(tokenizer, "_encoding", None)
    monkeypatch.setattr(tokenizer, "_loading", None)
    monkeypatch.setattr(tokenizer, "encoding", load)
    results = await asyncio.gather(tokenizer.load(), tokenizer.load(), return_exceptions=True)
    assert [type(result) for result in results] == [OSError, OSError]
    assert not tokenizer.loaded()
    assert await tokenizer.load() == "vocabulary"
    assert len(attempts) == 2
