"""What a publisher on the Kafka bus is told when the broker is slow to acknowledge: a
refusal (BusUnavailableError, the caller may say "not taken") only while the event
certainly never left the producer; once aiokafka's sender took its batch, or queued it
again after a failed attempt, a later failure is an unknown outcome
(PublishOutcomeUnknownError), since the broker may have written it.

The producer is a fake with the few aiokafka (0.14) internals the bus reads: the
accumulator's queued batches (`_batches`, each with `_msg_futures` and `retry_count`) and
the sender task. No network."""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from switchyard.common.bus import BusUnavailableError
from switchyard.common.bus.base import EventTooLargeError, PublishOutcomeUnknownError
from switchyard.common.bus.kafka import KafkaBus
from switchyard.common.events import ChatRequestData, ChatRequested

# Long enough never to end a test that works; the tests wait on events, not on the clock.
BOUND_S = 30.0


class FakeBatch:
    """One queued batch: the delivery futures of its events and how often it was sent."""

    def __init__(self, delivery: asyncio.Future[Any], retry_count: int) -> None:
        self._msg_futures = [(delivery, None)]
        self.retry_count = retry_count


class FakeAccumulator:
    """The producer's queue of batches per partition; `inspected` is set once the bus
    looks at it (which it does only after the publish timed out)."""

    def __init__(self) -> None:
        self.queued: dict[str, deque[FakeBatch]] = {}
        self.inspected = asyncio.Event()

    @property
    def _batches(self) -> dict[str, deque[FakeBatch]]:
        self.inspected.set()
        return self.queued


class FakeProducer:
    """Hands out one delivery future per send; where its batch is (still queued, queued
    again, or taken by the sender) is the test's choice."""

    def __init__(self, *, queued: bool, retry_count: int = 0) -> None:
        self._message_accumulator = FakeAccumulator()
        self._sender = None  # no sender task: alive, nothing to cancel
        self.queued = queued
        self.retry_count = retry_count
        self.deliveries: list[asyncio.Future[Any]] = []
        self.sent = asyncio.Event()

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[Any]:
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.deliveries.append(delivery)
        self.sent.set()
        if self.queued:
            batch = FakeBatch(delivery, self.retry_count)
            self._message_accumulator.queued.setdefault(topic, deque()).append(batch)
        return delivery


def event() -> ChatRequested:
    return ChatRequested(
        source="test",
        tenant="t",
        request_id="r1",
        data=ChatRequestData(
            api="openai.chat_completions",
            model="m",
            body={},
            user_id="u",
            deadline=datetime.now(UTC) + timedelta(minutes=5),
        ),
    )


def bus_with(producer: FakeProducer, *, in_flight_timeout_s: float = BOUND_S) -> KafkaBus:
    bus = KafkaBus("127.0.0.1:9", publish_timeout_s=0.01, in_flight_timeout_s=in_flight_timeout_s)
    bus._producer = producer  # type: ignore[assignment]
    bus._producer_ready.set()
    return bus


async def publish_then(
    producer: FakeProducer, bus: KafkaBus, outcome: Any, *, at_once: bool = False
) -> None:
    """Publish; settle the delivery with `outcome` (an exception, or a result) as soon as
    it exists (`at_once`), or else once the publish has timed out and the bus has looked
    where the batch is; return when the publish does (raising what it raised)."""
    publishing = asyncio.create_task(bus.publish("t.requests", event()))
    settled_after = producer.sent if at_once else producer._message_accumulator.inspected
    await asyncio.wait_for(settled_after.wait(), BOUND_S)
    delivery = producer.deliveries[0]
    if isinstance(outcome, BaseException):
        delivery.set_exception(outcome)
    else:
        delivery.set_result(outcome)
    await asyncio.wait_for(publishing, BOUND_S)


async def test_an_event_acknowledged_at_once_is_published() -> None:
    producer = FakeProducer(queued=False)
    bus = bus_with(producer)
    bus.publish_timeout_s = BOUND_S

    await publish_then(producer, bus, "metadata", at_once=True)

    assert not producer._message_accumulator.inspected.is_set()
    assert bus.can_publish()


async def test_a_slow_acknowledgement_of_a_sent_batch_is_still_a_success() -> None:
    producer = FakeProducer(queued=False)  # the sender took the batch
    bus = bus_with(producer)

    await publish_then(producer, bus, "metadata")

    assert bus.can_publish()


async def test_an_event_still_queued_at_the_timeout_is_refused_and_never_sent_later() -> None:
    producer = FakeProducer(queued=True, retry_count=0)
    bus = bus_with(producer)

    with pytest.raises(BusUnavailableError) as refused:
        await asyncio.wait_for(bus.publish("t.requests", event()), BOUND_S)

    assert not isinstance(refused.value, PublishOutcomeUnknownError)
    # The producer holding it is dropped, so the refused event is never sent after all.
    assert not bus.can_publish()


async def test_a_failure_after_the_sender_took_the_batch_is_an_unknown_outcome() -> None:
    producer = FakeProducer(queued=False)
    bus = bus_with(producer)

    with pytest.raises(PublishOutcomeUnknownError, match="may have written"):
        await publish_then(producer, bus, KafkaConnectionError("connection lost"))


async def test_a_failure_of_a_batch_queued_again_after_an_attempt_is_an_unknown_outcome() -> None:
    producer = FakeProducer(queued=True, retry_count=1)
    bus = bus_with(producer)

    with pytest.raises(PublishOutcomeUnknownError, match="may have written"):
        await publish_then(producer, bus, KafkaConnectionError("connection lost"))


async def test_no_answer_for_a_sent_batch_is_an_unknown_outcome_and_replaces_the_producer() -> None:
    producer = FakeProducer(queued=False)
    bus = bus_with(producer, in_flight_timeout_s=0.01)

    with pytest.raises(PublishOutcomeUnknownError, match="may still be written"):
        await asyncio.wait_for(bus.publish("t.requests", event()), BOUND_S)

    assert not bus.can_publish()


async def test_a_sent_event_the_broker_finds_too_large_is_refused_as_too_large() -> None:
    producer = FakeProducer(queued=False)
    bus = bus_with(producer)

    with pytest.raises(EventTooLargeError):
        await publish_then(producer, bus, MessageSizeTooLargeError())


async def test_a_failure_before_any_timeout_is_a_refusal() -> None:
    producer = FakeProducer(queued=False)
    bus = bus_with(producer)
    bus.publish_timeout_s = BOUND_S

    with pytest.raises(BusUnavailableError) as refused:
        await publish_then(producer, bus, KafkaConnectionError("refused"), at_once=True)

    assert not isinstance(refused.value, PublishOutcomeUnknownError)
    assert not producer._message_accumulator.inspected.is_set()
