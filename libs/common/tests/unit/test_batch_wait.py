"""A Kafka batch consumer gathers the events that arrive shortly after the first one into
the same batch (one transaction, one commit), never beyond `max_batch` records and never
waiting past `max_batch_wait_ms`: it pauses its partitions for the wait (no fetch while
events arrive one by one), then takes what arrived in one poll. The consumer here is a
fake; no broker is needed."""

from __future__ import annotations

import asyncio
import time

from aiokafka.structs import TopicPartition

from switchyard.common.bus.base import RetryPolicy
from switchyard.common.bus.kafka import RESUMED_FETCH_WAIT_MS, KafkaBus, _BatchSubscription

TP0 = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


class FakeConsumer:
    """Hands out prepared poll results, then nothing; records each poll's arguments and
    which partitions were paused when it was made."""

    def __init__(self, polls: list[dict], assigned: set | None = None) -> None:
        self.polls = polls
        self.assigned = assigned if assigned is not None else {TP0, TP1}
        self.paused: set = set()
        self.pauses: list[set] = []
        self.calls: list[tuple[int, int]] = []
        self.paused_at_poll: list[set] = []

    def assignment(self) -> set:
        return set(self.assigned)

    def pause(self, *partitions) -> None:
        self.paused |= set(partitions)
        self.pauses.append(set(partitions))

    def resume(self, *partitions) -> None:
        assert set(partitions) <= self.assigned  # resuming a partition not assigned raises
        self.paused -= set(partitions)

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict:
        self.calls.append((timeout_ms, max_records))
        self.paused_at_poll.append(set(self.paused))
        if self.polls:
            return self.polls.pop(0)
        await asyncio.sleep(timeout_ms / 1000)
        return {}


def subscription(max_batch: int, max_wait_ms: int) -> _BatchSubscription:
    bus = KafkaBus("127.0.0.1:1")
    return _BatchSubscription(
        bus, ["t"], "g", None, max_batch, RetryPolicy(), None, max_wait_ms=max_wait_ms
    )


async def test_events_arriving_within_the_wait_join_the_first_batch_in_offset_order():
    consumer = FakeConsumer([{TP0: [2, 3], TP1: [7]}])
    batches = {TP0: [1]}
    await subscription(max_batch=100, max_wait_ms=50)._fill(consumer, batches)
    assert batches == {TP0: [1, 2, 3], TP1: [7]}
    # Paused while the events arrived, fetched once after: one poll, nothing paused then.
    assert consumer.pauses == [{TP0, TP1}]
    assert consumer.paused_at_poll == [set()]
    assert consumer.calls[0][1] == 99  # no more than the batch has room for
    # What arrived is in the log already: the poll after the wait is not a second wait.
    assert consumer.calls[0][0] == RESUMED_FETCH_WAIT_MS < 50


async def test_a_full_batch_is_handled_without_waiting():
    consumer = FakeConsumer([{TP0: [4]}])
    batches = {TP0: [1, 2, 3]}
    started = time.monotonic()
    await subscription(max_batch=3, max_wait_ms=10_000)._fill(consumer, batches)
    assert time.monotonic() - started < 1.0
    assert batches == {TP0: [1, 2, 3]} and consumer.calls == [] and consumer.pauses == []


async def test_partitions_taken_away_during_the_wait_are_not_resumed():
    consumer = FakeConsumer([{TP0: [2]}])

    async def rebalance() -> None:
        await asyncio.sleep(0.01)
        consumer.assigned = {TP0}  # TP1 went to another member meanwhile

    moving = asyncio.create_task(rebalance())
    batches = {TP0: [1]}
    await subscription(max_batch=100, max_wait_ms=50)._fill(consumer, batches)
    await moving
    assert batches == {TP0: [1, 2]}
    assert consumer.paused == {TP1}  # only what is still assigned was resumed


async def test_the_wait_is_bounded_and_zero_means_no_wait():
    started = time.monotonic()
    await subscription(max_batch=100, max_wait_ms=60)._fill(FakeConsumer([]), {TP0: [1]})
    assert time.monotonic() - started < 1.0
    consumer = FakeConsumer([{TP0: [2]}])
    batches = {TP0: [1]}
    await subscription(max_batch=100, max_wait_ms=0)._fill(consumer, batches)
    assert batches == {TP0: [1]} and consumer.calls == [] and consumer.pauses == []
