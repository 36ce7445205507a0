"""A task is stopped within a bound even when it swallows a cancellation; work waited for
within a bound is left to finish, not cancelled, when the bound passes."""

from __future__ import annotations

import asyncio
import time

import pytest

from switchyard.common.tasks import LEFT, LeftWork, cancel_and_wait, wait_or_leave


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


async def test_work_past_its_bound_is_left_to_finish_and_a_late_success_undone():
    """A timeout raises at once without cancelling the work (database work cancelled
    half-way loses its connection); its result, which the caller never got, goes to
    `on_late`, sync or async; the owner's record waits for both."""
    finished, undone = asyncio.Event(), []

    async def slow(value: int) -> int:
        await asyncio.sleep(0.2)
        finished.set()
        return value

    async def undo_later(value: int) -> None:
        await asyncio.sleep(0)
        undone.append(("async", value))

    left = LeftWork()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await wait_or_leave(
            slow(1), 0.05, on_late=lambda value: undone.append(("sync", value)), left=left
        )
    assert time.monotonic() - started < 0.15 and not finished.is_set()
    with pytest.raises(TimeoutError):
        await wait_or_leave(slow(2), 0.05, on_late=undo_later, left=left)
    assert left.running() == 2 and LEFT.running() == 0
    assert await left.wait(5) == 0
    assert finished.is_set() and sorted(undone) == [("async", 2), ("sync", 1)]


async def test_work_within_its_bound_answers_and_its_failure_is_raised():
    async def fails() -> None:
        raise ValueError("no")

    async def answers() -> str:
        return "yes"

    left = LeftWork()
    late = lambda _: pytest.fail("late")  # noqa: E731
    assert await wait_or_leave(answers(), 1, on_late=late, left=left) == "yes"
    with pytest.raises(ValueError, match="no"):
        await wait_or_leave(fails(), 1, on_late=late, left=left)
    assert left.running() == 0


async def test_work_left_running_is_cancelled_after_its_finishing_time():
    cancelled = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    left = LeftWork()
    with pytest.raises(TimeoutError):
        await wait_or_leave(
            hangs(), 0.01, finish_s=0.1, on_late=lambda _: pytest.fail("late"), left=left
        )
    await asyncio.wait_for(cancelled.wait(), 5)
    assert await left.wait(1) == 0


async def test_a_cancelled_caller_leaves_the_work_running_and_undoes_its_success():
    undone = []

    async def slow() -> int:
        await asyncio.sleep(0.1)
        return 7

    left = LeftWork()
    caller = asyncio.create_task(wait_or_leave(slow(), 10, on_late=undone.append, left=left))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert left.running() == 1
    assert await left.wait(5) == 0
    assert undone == [7]


async def test_a_caller_sharing_work_that_another_caller_left_gets_a_timeout_when_it_is_stopped():
    """Two callers wait on one task (a readiness check shared by probes): the first gives up
    and leaves it, with a short `finish_s`; when that cancels the work, the second caller,
    still within its own bound, gets a TimeoutError, not the work's cancellation."""
    left = LeftWork()
    shared = asyncio.ensure_future(asyncio.sleep(3600))
    with pytest.raises(TimeoutError):
        await wait_or_leave(shared, 0.01, finish_s=0.05, left=left)
    with pytest.raises(TimeoutError):
        await wait_or_leave(shared, 5, left=left)
    assert shared.cancelled()
    assert await left.wait(1) == 0
