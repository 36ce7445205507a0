"""A Kafka batch consumer gathers the events that arrive shortly after the first one into
the same batch (one transaction, one commit), never beyond `max_batch` records and never
waiting past `max_batch_wait_ms`: it pauses its partitions for the wait (no fetch while
events arrive one by one), then takes what arrived: everything up to the log end offsets
read when the wait ended, however many fetches that takes. The consumer here is a fake
(records are their offsets); no broker is needed."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import TopicPartition

from switchyard.common.bus import kafka
from switchyard.common.bus.base import RetryPolicy
from switchyard.common.bus.kafka import KafkaBus, _BatchSubscription

TP0 = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


class FakeConsumer:
    """Hands out prepared poll results, then nothing; records each poll's arguments and
    which partitions were paused when it was made. `positions` is the next offset it hands
    over per partition (advanced by what a poll hands out); `ends` the log end offsets."""

    def __init__(
        self,
        polls: list[dict],
        assigned: set | None = None,
        *,
        positions: dict | None = None,
        ends: dict | None = None,
    ) -> None:
        self.polls = polls
        self.assigned = assigned if assigned is not None else {TP0, TP1}
        self.positions = positions if positions is not None else {TP0: 2, TP1: 7}
        self.ends = ends if ends is not None else dict(self.positions)
        self.end_offsets_error: Exception | None = None
        self.paused: set = set()
        self.pauses: list[set] = []
        self.calls: list[tuple[int, int]] = []
        self.polled_partitions: list[set] = []
        self.paused_at_poll: list[set] = []

    def assignment(self) -> set:
        return set(self.assigned)

    def pause(self, *partitions) -> None:
        self.paused |= set(partitions)
        self.pauses.append(set(partitions))

    def resume(self, *partitions) -> None:
        assert set(partitions) <= self.assigned  # resuming a partition not assigned raises
        self.paused -= set(partitions)

    async def end_offsets(self, partitions: list) -> dict:
        if self.end_offsets_error is not None:
            raise self.end_offsets_error
        return {tp: self.ends[tp] for tp in partitions}

    async def getmany(self, *partitions, timeout_ms: int, max_records: int) -> dict:
        self.calls.append((timeout_ms, max_records))
        self.polled_partitions.append(set(partitions))
        self.paused_at_poll.append(set(self.paused))
        if self.polls:
            handed = self.polls.pop(0)
            for tp, records in handed.items():
                self.positions[tp] = records[-1] + 1
            return handed
        await asyncio.sleep(timeout_ms / 1000)
        return {}


@pytest.fixture(autouse=True)
def positions_of_the_fake(monkeypatch):
    """The consumer's position is read from aiokafka's subscription state; the fake keeps
    it in `positions`."""
    monkeypatch.setattr(kafka, "_valid_position", lambda consumer, tp: consumer.positions.get(tp))


def subscription(max_batch: int, max_wait_ms: int) -> _BatchSubscription:
    bus = KafkaBus("127.0.0.1:1")
    return _BatchSubscription(
        bus, ["t"], "g", None, max_batch, RetryPolicy(), None, max_wait_ms=max_wait_ms
    )


async def test_events_arriving_within_the_wait_join_the_first_batch_in_offset_order():
    consumer = FakeConsumer([{TP0: [2, 3], TP1: [7]}], ends={TP0: 4, TP1: 8})
    batches = {TP0: [1]}
    await subscription(max_batch=100, max_wait_ms=50)._fill(consumer, batches)
    assert batches == {TP0: [1, 2, 3], TP1: [7]}
    # Paused while the events arrived, fetched once after: one poll, nothing paused then.
    assert consumer.pauses == [{TP0, TP1}]
    assert consumer.paused_at_poll == [set()]
    assert consumer.calls[0][1] == 99  # no more than the batch has room for


async def test_a_fetch_slower_than_a_round_trip_does_not_split_the_batch():
    """On a busy host the first fetch after the wait may bring nothing yet, or only some
    partitions: the batch still takes everything the log held when the wait ended."""
    consumer = FakeConsumer([{}, {TP1: [7]}, {TP0: [2]}, {TP0: [3]}], ends={TP0: 4, TP1: 8})
    batches = {TP0: [1]}
    await subscription(max_batch=100, max_wait_ms=50)._fill(consumer, batches)
    assert batches == {TP0: [1, 2, 3], TP1: [7]}
    # Each fetch asks only for the partitions still short of their end.
    assert consumer.polled_partitions == [{TP0, TP1}, {TP0, TP1}, {TP0}, {TP0}]
    assert [room for _, room in consumer.calls] == [99, 99, 98, 97]


async def test_what_arrives_after_the_wait_ended_is_left_for_the_next_batch():
    consumer = FakeConsumer([{TP0: [2]}, {TP0: [3]}], ends={TP0: 3, TP1: 7})
    batches = {TP0: [1]}
    await subscription(max_batch=100, max_wait_ms=50)._fill(consumer, batches)
    assert batches == {TP0: [1, 2]} and consumer.polls == [{TP0: [3]}]


async def test_a_lone_event_is_handed_over_without_another_fetch():
    consumer = FakeConsumer([{TP0: [2]}])  # at their log ends already
    batches = {TP0: [1]}
    await subscription(max_batch=100, max_wait_ms=50)._fill(consumer, batches)
    assert batches == {TP0: [1]} and consumer.calls == []


async def test_the_fetches_after_the_wait_stop_at_a_full_batch():
    consumer = FakeConsumer([{TP0: [2, 3]}, {TP1: [7, 8]}], ends={TP0: 9, TP1: 20})
    batches = {TP0: [1]}
    await subscription(max_batch=5, max_wait_ms=50)._fill(consumer, batches)
    assert batches == {TP0: [1, 2, 3], TP1: [7, 8]}
    assert [room for _, room in consumer.calls] == [4, 2]


async def test_a_broker_that_never_brings_what_arrived_holds_the_batch_only_so_long(monkeypatch):
    monkeypatch.setattr(kafka, "RESUMED_FETCH_MAX_WAIT_MS", 200)
    consumer = FakeConsumer([], ends={TP0: 5, TP1: 7})
    batches = {TP0: [1]}
    started = time.monotonic()
    await subscription(max_batch=100, max_wait_ms=50)._fill(consumer, batches)
    assert 0.2 <= time.monotonic() - started < 5.0
    assert batches == {TP0: [1]}


async def test_unreadable_log_end_offsets_leave_the_batch_as_it_is():
    consumer = FakeConsumer([{TP0: [2]}], ends={TP0: 3, TP1: 7})
    consumer.end_offsets_error = KafkaConnectionError("broker gone")
    batches = {TP0: [1]}
    await subscription(max_batch=100, max_wait_ms=50)._fill(consumer, batches)
    assert batches == {TP0: [1]} and consumer.calls == []


async def test_a_full_batch_is_handled_without_waiting():
    consumer = FakeConsumer([{TP0: [4]}])
    batches = {TP0: [1, 2, 3]}
    started = time.monotonic()
    await subscription(max_batch=3, max_wait_ms=10_000)._fill(consumer, batches)
    assert time.monotonic() - started < 5.0
    assert batches == {TP0: [1, 2, 3]} and consumer.calls == [] and consumer.pauses == []


class Sized(int):
    """A record of the fake (its offset) whose value has `size` bytes."""

    def __new__(cls, offset: int, size: int) -> Sized:
        record = super().__new__(cls, offset)
        record.value = b"x" * size
        return record


async def test_a_batch_holds_so_many_bytes_at_most(monkeypatch):
    """Events near the size limit held by the thousand would take gigabytes: a batch
    stops growing at MAX_BATCH_BYTES of values (the first fetch brings what it brings)."""
    monkeypatch.setattr(kafka, "MAX_BATCH_BYTES", 1000)
    big = {TP0: [Sized(1, 1000)]}
    consumer = FakeConsumer([{TP0: [Sized(2, 10)]}], ends={TP0: 9, TP1: 7})
    await subscription(max_batch=100, max_wait_ms=10_000)._fill(consumer, big)
    assert big == {TP0: [1]} and consumer.calls == [] and consumer.pauses == []

    consumer = FakeConsumer(
        [{TP0: [Sized(2, 600)]}, {TP0: [Sized(3, 600)]}, {TP0: [Sized(4, 1)]}],
        ends={TP0: 9, TP1: 7},
    )
    batches = {TP0: [Sized(1, 10)]}
    await subscription(max_batch=100, max_wait_ms=50)._fill(consumer, batches)
    assert batches == {TP0: [1, 2, 3]}  # the third fetch would pass the bound


async def test_partitions_taken_away_during_the_wait_are_not_resumed():
    consumer = FakeConsumer([{TP0: [2]}], ends={TP0: 3, TP1: 7})

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
    assert time.monotonic() - started < 5.0
    consumer = FakeConsumer([{TP0: [2]}])
    batches = {TP0: [1]}
    await subscription(max_batch=100, max_wait_ms=0)._fill(consumer, batches)
    assert batches == {TP0: [1]} and consumer.calls == [] and consumer.pauses == []
