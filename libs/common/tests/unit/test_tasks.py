"""A task is stopped within a bound even when it swallows a cancellation."""

from __future__ import annotations

import asyncio
import time

from switchyard.common.tasks import cancel_and_wait


async def test_a_task_that_swallows_one_cancellation_is_still_stopped():
    cancellations = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancellations.append(1)
                if len(cancellations) == 1:
                    continue  # what a racing asyncio.wait_for does on Python 3.11
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()

    assert await cancel_and_wait(task, timeout_s=5)
    assert task.cancelled() and len(cancellations) == 2
    assert time.monotonic() - started < 4  # not the 5 s bound


async def test_a_task_that_never_stops_is_given_up_on_at_the_bound():
    stop = asyncio.Event()

    async def deaf() -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    started = time.monotonic()

    assert not await cancel_and_wait(task, timeout_s=1.2)
    assert 1.0 < time.monotonic() - started < 5.0
    stop.set()
    task.cancel()
    await asyncio.wait([task], timeout=1)
