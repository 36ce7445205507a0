"""A Kafka group consumer commits what it has handled at most once per commit interval
while events keep coming (an offset commit is a broker round trip and a write per call),
at once when a poll comes back empty, and never an offset whose event is not handled.
The consumer here is a fake; no broker is needed."""

from __future__ import annotations

import asyncio

from aiokafka.structs import ConsumerRecord, TopicPartition

from switchyard.common.bus.kafka import _GroupSubscription
from switchyard.common.events import Event
from switchyard.common.testing.events import chat_requested, consumer_record
from switchyard.common.testing.group_member import group_member
from switchyard.common.testing.infra import async_wait_until

TP = TopicPartition("requests", 0)


def record(offset: int) -> ConsumerRecord:
    return consumer_record(TP.topic, TP.partition, offset, chat_requested())


class FakeConsumer:
    """Hands out one record per poll (a request every few milliseconds, as at
    concurrency 1), then nothing; records every commit."""

    def __init__(self, records: int, gap_s: float) -> None:
        self.pending = list(range(records))
        self.gap_s = gap_s
        self.commits: list[int] = []

    async def getmany(self, *, timeout_ms: int, max_records: int = 1) -> dict:
        if self.pending:
            await asyncio.sleep(self.gap_s)
            return {TP: [record(self.pending.pop(0))]}
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets: dict) -> None:
        self.commits.append(offsets[TP].offset)

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    def paused(self) -> set:
        return set()


def subscription(consumer: FakeConsumer, handled: list[str], interval_s: float):
    async def handler(event: Event) -> None:
        handled.append(event.request_id)

    return group_member(consumer, handler, commit_interval_s=interval_s)


async def run_until_committed(
    sub: _GroupSubscription, consumer: FakeConsumer, offset: int, timeout_s: float = 20.0
) -> None:
    """Run the consumer loop until `offset` is committed (or `timeout_s` passes)."""
    task = asyncio.create_task(sub._run(consumer))  # type: ignore[arg-type]

    async def committed() -> bool:
        return bool(consumer.commits) and consumer.commits[-1] == offset

    try:
        await async_wait_until(committed, timeout=timeout_s, interval=0.01, message="commit")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_steady_stream_is_committed_about_once_per_interval_and_fully_once_idle():
    consumer, handled = FakeConsumer(records=40, gap_s=0.005), []
    sub = subscription(consumer, handled, interval_s=30.0)
    await run_until_committed(sub, consumer, 40)
    assert len(handled) == 40
    # One commit while the 40 events arrived (the first handled one), and the rest at the
    # first empty poll: not one commit per event.
    assert len(consumer.commits) <= 3
    assert consumer.commits[-1] == 40  # everything handled is committed once idle
    assert consumer.commits == sorted(consumer.commits)


async def test_interval_zero_commits_after_every_poll():
    consumer, handled = FakeConsumer(records=20, gap_s=0.005), []
    sub = subscription(consumer, handled, interval_s=0.0)
    await run_until_committed(sub, consumer, 20)
    assert len(handled) == 20
    assert len(consumer.commits) >= 15
    assert consumer.commits[-1] == 20


async def test_an_event_still_being_handled_is_never_committed():
    consumer, handled = FakeConsumer(records=3, gap_s=0.005), []
    release = asyncio.Event()

    async def slow(event: Event) -> None:
        handled.append(event.request_id)
        if len(handled) == 2:
            await release.wait()  # the second event is still in flight

    sub = subscription(consumer, handled, interval_s=0.0)
    sub.handler = slow
    task = asyncio.create_task(sub._run(consumer))  # type: ignore[arg-type]

    async def all_started_and_one_committed() -> bool:
        return len(handled) == 3 and bool(consumer.commits)

    await async_wait_until(all_started_and_one_committed, timeout=20, interval=0.01)
    await asyncio.sleep(0.3)  # a few empty polls, each of which may commit
    assert consumer.commits and max(consumer.commits) == 1  # only below the one in flight
    release.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await run_until_committed(sub, consumer, 3)
    assert consumer.commits[-1] == 3
