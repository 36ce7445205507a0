"""A batch group's backlog beyond a few batches waits in a file, not in memory
(`SpillingQueue`, embedded mode's history): every event comes back, in order, with its
trace context; the file is emptied once read and leaves nothing in its directory; a disk
that refuses writes keeps the queue in memory, in order, dropping nothing; admission
still counts the whole backlog."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from switchyard.common.bus import InMemoryBus
from switchyard.common.bus.spill import SpillingQueue
from switchyard.common.testing.infra import async_wait_until

from .test_memory_bus import TRACEPARENT, request


def _item(n: int) -> tuple[str, bytes, str | None]:
    return (f"topic-{n % 3}", f"event {n} ".encode() * (n % 5 + 1), None if n % 2 else TRACEPARENT)


async def test_everything_comes_back_in_order_and_the_file_empties(tmp_path: Path):
    queue = SpillingQueue(4, tmp_path)
    items = [_item(n) for n in range(50)]

    for item in items[:30]:
        queue.put_nowait(item)
    assert queue.qsize() == 30 and queue.spilled == 26
    taken = [await queue.get() for _ in range(10)]
    for item in items[30:]:
        queue.put_nowait(item)
    while not queue.empty():
        taken.append(queue.get_nowait())

    assert taken == items
    assert queue.spilled == 0 and queue.qsize() == 0
    assert queue._fd is not None and os.fstat(queue._fd).st_size == 0
    assert os.listdir(tmp_path) == []  # removed from the directory when opened
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    queue.close()


async def test_a_waiting_get_wakes_for_the_next_event(tmp_path: Path):
    queue = SpillingQueue(2, tmp_path)
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiting.done()

    queue.put_nowait(_item(1))

    assert await asyncio.wait_for(waiting, 1) == _item(1)


async def test_a_disk_refusing_writes_keeps_the_rest_in_memory_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    queue = SpillingQueue(3, tmp_path)
    items = [_item(n) for n in range(20)]
    for item in items[:6]:
        queue.put_nowait(item)
    assert queue.spilled == 3

    def full(*_: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    for item in items[6:]:
        queue.put_nowait(item)

    assert queue.qsize() == 20
    assert [queue.get_nowait() for _ in range(20)] == items


async def test_the_bus_spills_a_batch_groups_backlog_and_loses_nothing(tmp_path: Path):
    bus = InMemoryBus(spill_dir=tmp_path, spill_after=5, max_pending=1000)
    seen: list[str] = []
    gate = asyncio.Event()

    async def record(events):
        await gate.wait()  # the store is slow: the backlog builds up
        seen.extend(event.request_id for event in events)

    await bus.subscribe_batch(["topic"], "history", record, max_batch=4)
    for n in range(100):
        await bus.publish("topic", request(n))
    queue = bus._groups["history"].queue
    assert isinstance(queue, SpillingQueue) and queue.spilled > 80
    # Admission counts the whole backlog, on disk too.
    assert queue.qsize() >= 95

    gate.set()
    await async_wait_until(lambda: asyncio.sleep(0, len(seen) == 100))
    assert seen == [f"r{n}" for n in range(100)]
    assert await bus.settled("history", 1)
    await bus.stop()


async def test_without_a_spill_directory_the_queue_is_memorys():
    bus = InMemoryBus()

    async def record(events):
        return None

    await bus.subscribe_batch(["topic"], "history", record)
    assert isinstance(bus._groups["history"].queue, asyncio.Queue)
    await bus.stop()
