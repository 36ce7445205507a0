"""A Kafka batch consumer gathers the events that arrive shortly after the first one into
the same batch (one transaction, one commit), never beyond `max_batch` records and never
waiting past `max_batch_wait_ms`. The consumer here is a fake; no broker is needed."""

from __future__ import annotations

import asyncio
import time

from aiokafka.structs import TopicPartition

from switchyard.common.bus.base import RetryPolicy
from switchyard.common.bus.kafka import KafkaBus, _BatchSubscription

TP0 = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


class FakeConsumer:
    """Hands out prepared poll results, then nothing; records each poll's arguments."""

    def __init__(self, polls: list[dict]) -> None:
        self.polls = polls
        self.calls: list[tuple[int, int]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict:
        self.calls.append((timeout_ms, max_records))
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
    consumer = FakeConsumer([{TP0: [2, 3]}, {TP1: [7]}])
    batches = {TP0: [1]}
    await subscription(max_batch=100, max_wait_ms=50)._fill(consumer, batches)
    assert batches == {TP0: [1, 2, 3], TP1: [7]}


async def test_a_full_batch_is_handled_without_waiting():
    consumer = FakeConsumer([{TP0: [2, 3]}])
    batches = {TP0: [1]}
    await subscription(max_batch=3, max_wait_ms=10_000)._fill(consumer, batches)
    assert batches == {TP0: [1, 2, 3]}
    assert consumer.calls[0][1] == 2  # asked for no more than the batch has room for


async def test_the_wait_is_bounded_and_zero_means_no_wait():
    started = time.monotonic()
    await subscription(max_batch=100, max_wait_ms=60)._fill(FakeConsumer([]), {TP0: [1]})
    assert time.monotonic() - started < 1.0
    consumer = FakeConsumer([{TP0: [2]}])
    batches = {TP0: [1]}
    await subscription(max_batch=100, max_wait_ms=0)._fill(consumer, batches)
    assert batches == {TP0: [1]} and consumer.calls == []
