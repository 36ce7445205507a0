"""The Kafka batch subscription's read barrier (`hurry_and_wait`, history's reads): it
waits while an event published before the read is not handled on a partition this member
reads, and never for a partition without a position (just assigned, being reset, revoked),
whose position it reads from the consumer's state instead of `AIOKafkaConsumer.position`
(which waits, and takes the consumer's pending coordination error away from its poll
loop).

The consumer is a fake with the aiokafka (0.14) internals the bus reads: the assignment
and each partition's state (`has_valid_position`, `position`). No network."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import TopicPartition

from switchyard.common.bus.base import RetryPolicy
from switchyard.common.bus.kafka import KafkaBus, _BatchSubscription

A = TopicPartition("topic", 0)
B = TopicPartition("topic", 1)


class FakeConsumer:
    """Assigned `positions` (partition -> position, None: no valid position yet)."""

    def __init__(self, positions: dict[TopicPartition, int | None]) -> None:
        self.positions = positions
        states = {
            tp: SimpleNamespace(has_valid_position=p is not None, position=p)
            for tp, p in positions.items()
        }
        assignment = SimpleNamespace(state_value=states.get)
        self._subscription = SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    async def position(self, tp: TopicPartition) -> int:
        raise RuntimeError("the barrier must not wait for a position")


def member(consumer: FakeConsumer | None) -> _BatchSubscription:
    async def record(events) -> None:
        return None

    async def healthy() -> bool:
        return True

    subscription = _BatchSubscription(
        KafkaBus("127.0.0.1:1"), ["topic"], "history", record, 100, RetryPolicy(), healthy
    )
    subscription.consumer = consumer  # type: ignore[assignment]
    return subscription


async def test_caught_up_once_every_partition_it_reads_is_handled_to_the_end():
    subscription = member(FakeConsumer({A: 5, B: 3}))
    assert await subscription._handled_up_to({("topic", 0): 5, ("topic", 1): 3})
    assert not await subscription._handled_up_to({("topic", 0): 6, ("topic", 1): 3})
    # Partitions another member reads do not count.
    assert await subscription._handled_up_to({("topic", 0): 5, ("topic", 7): 100})


async def test_a_batch_in_hand_is_not_handled_yet():
    subscription = member(FakeConsumer({A: 5}))
    subscription._in_hand_from = {A: 2}  # records 2..4 handed over, not yet written
    assert not await subscription._handled_up_to({("topic", 0): 5})
    subscription._in_hand_from = {}
    assert await subscription._handled_up_to({("topic", 0): 5})


async def test_a_partition_without_a_position_or_a_member_not_running_holds_nobody_up():
    assert await member(FakeConsumer({A: None}))._handled_up_to({("topic", 0): 9})
    assert await member(None)._handled_up_to({("topic", 0): 9})


async def test_the_wait_ends_at_its_bound_when_the_broker_cannot_tell():
    subscription = member(FakeConsumer({A: 0}))

    async def unreachable(topics):
        await asyncio.sleep(60)

    subscription.bus.end_offsets = unreachable  # type: ignore[method-assign]
    async with asyncio.timeout(5):
        await subscription.hurry_and_wait(0.05)
    assert subscription._hurried.is_set()
