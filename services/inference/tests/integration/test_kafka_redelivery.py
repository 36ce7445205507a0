"""The reply partition read back on real Kafka: a replica that starts after another one
answered a request, and receives that request again, finds the reply and the usage event
its record carries, and publishes them again without calling the upstream; a record
written a moment before a lookup, by another producer, is always seen (the lookup's read
barrier); between lookups the log fetches nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from switchyard.common.bus.kafka import KafkaBus
from switchyard.common.events import ChatCompleted, ReplyAddress, StreamEvent
from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.inference.handlers import ChatRequestHandler
from switchyard.inference.providers import ProviderPool
from switchyard.inference.publishing import chunk_records
from switchyard.inference.redelivery import KafkaReplyLog
from switchyard.inference.testing import chat_request

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(kafka_servers, kafka_topics) -> AsyncIterator[KafkaBus]:
    bus = KafkaBus(kafka_servers, client_id="redelivery-test")
    await bus.start()
    yield bus
    await bus.stop()


@pytest.fixture
async def providers() -> AsyncIterator[ProviderPool]:
    pool = ProviderPool()
    yield pool
    await pool.aclose()


def routing(simulator) -> RoutingTable:
    deployment = Deployment(
        name="d", provider="openai", model="up-m", base_url=simulator.openai_url, max_retries=0
    )
    return RoutingTable(models={"m": ModelRoute(name="m", deployments=[deployment])})


@contextlib.asynccontextmanager
async def running_log(
    kafka_servers: str, topic: str, bus: KafkaBus, **options
) -> AsyncIterator[KafkaReplyLog]:
    """A reply log of `topic`, started, and stopped after use."""
    options = {"lookback_s": 600, "read_timeout_s": 20, **options}
    log = KafkaReplyLog(kafka_servers, topic, bus.partition_count, **options)
    await log.start()
    try:
        yield log
    finally:
        await log.stop()


def replicas(bus, topics, simulator, providers, published: list | None = None):
    """Makes an inference replica's request handler for a reply log: it publishes on
    `bus` (noting each (topic, event) in `published`) and calls the simulator."""

    async def publish(topic, event, *, key=None, partition=None, headers=None) -> None:
        if published is not None:
            published.append((topic, event))
        await bus.publish(topic, event, key=key, partition=partition, headers=headers)

    def replica(log: KafkaReplyLog) -> ChatRequestHandler:
        return ChatRequestHandler(
            publish=publish,
            topics=topics,
            routing=routing(simulator),
            providers=providers,
            outcomes=log,
        )

    return replica


async def test_a_replica_started_later_answers_a_redelivered_request_from_the_log(
    kafka_servers, kafka_topics, bus, simulator, providers
) -> None:
    published: list = []
    replica = replicas(bus, kafka_topics, simulator, providers, published)

    request = chat_request(model="m", reply_to=False)  # the test's topics are smaller
    async with running_log(kafka_servers, kafka_topics.replies, bus) as first_log:
        await replica(first_log)(request)
    # Another process: a log that has read nothing yet.
    async with running_log(kafka_servers, kafka_topics.replies, bus) as second_log:
        await asyncio.wait_for(replica(second_log)(request), timeout=30)

    assert simulator.calls("up-m") == 1
    replies = [event for topic, event in published if topic == kafka_topics.replies]
    assert len(replies) == 2 and isinstance(replies[1], ChatCompleted)
    assert replies[0].id == replies[1].id
    usages = [event for topic, event in published if topic == kafka_topics.usage]
    assert len(usages) == 2 and usages[0] == usages[1]  # the one the reply's record carried


async def test_a_record_the_client_cannot_parse_on_the_reply_partition_is_stepped_over(
    kafka_servers, kafka_topics, bus, simulator, providers
) -> None:
    """An unreadable record on a reply partition made every lookup there fail as if Kafka
    were down (the request retried for the whole lookback, 15 minutes): it is stepped
    over, and a redelivered request is answered from the log, never run twice."""
    from switchyard.common.testing.kafka_records import produce_with_unreadable

    for partition in range(await bus.partition_count(kafka_topics.replies)):
        produce_with_unreadable(
            kafka_servers, kafka_topics.replies, [b"x"], bad=0, partition=partition
        )

    replica = replicas(bus, kafka_topics, simulator, providers)
    request = chat_request(model="m", reply_to=False)
    async with running_log(kafka_servers, kafka_topics.replies, bus) as first_log:
        await replica(first_log)(request)
    async with running_log(kafka_servers, kafka_topics.replies, bus) as second_log:
        await asyncio.wait_for(replica(second_log)(request), timeout=30)

    assert simulator.calls("up-m") == 1


async def test_a_lookup_sees_a_record_written_just_before_it(
    kafka_servers, kafka_topics, bus
) -> None:
    async with running_log(kafka_servers, kafka_topics.replies, bus) as log:
        for n in range(5):
            # A gateway replica's partition, and the request id's own when nobody waits.
            request = chat_request(model="m", stream=True, reply_to=False)
            partition = None
            if n % 2 == 0:
                partition = n % await bus.partition_count(kafka_topics.replies)
                address = ReplyAddress(partition=partition, instance_id="gw-1")
                data = request.data.model_copy(update={"reply_to": address})
                request = request.model_copy(update={"data": data})
            marker = chunk_records(request.request_id, request.id, request.tenant, "run-1")(
                0, [StreamEvent(data={"choices": []})]
            )
            await bus.publish(
                kafka_topics.replies, marker, key=request.request_id, partition=partition
            )

            recorded = await log.lookup(request)

            assert recorded is not None and recorded.stream_started == marker
            assert not recorded.answered
            assert log._consumer.assignment() == set()  # nothing fetched between lookups


def marker_of(request, pad: int = 0):
    """The first chunk record of a stream run of `request` (`pad` bytes of filler)."""
    events = [StreamEvent(data={"choices": [], "pad": "x" * pad})]
    return chunk_records(request.request_id, request.id, request.tenant, "run-1")(0, events)


async def publish_markers(
    bus: KafkaBus, topic: str, count: int, pad: int = 0, partition: int = 0
) -> None:
    await asyncio.gather(
        *(
            bus.publish(topic, marker_of(r, pad), key=r.request_id, partition=partition)
            for r in (chat_request(model="m", reply_to=False) for _ in range(count))
        )
    )


def on_partition(request, partition: int):
    address = ReplyAddress(partition=partition, instance_id="gw-1")
    data = request.data.model_copy(update={"reply_to": address})
    return request.model_copy(update={"data": data})


async def test_a_later_lookup_reads_from_its_own_request_not_from_an_old_position(
    kafka_servers, kafka_topics, bus
) -> None:
    async with running_log(kafka_servers, kafka_topics.replies, bus, clock_skew_s=1) as log:
        assert await log.lookup(on_partition(chat_request(model="m"), 0)) is None
        await publish_markers(bus, kafka_topics.replies, 200)  # long before the next request
        await asyncio.sleep(2.5)
        kept = len(log.index)

        assert await log.lookup(on_partition(chat_request(model="m"), 0)) is None

        assert len(log.index) == kept  # none of the 200 older records was read


async def test_a_request_is_found_though_its_read_outgrows_what_the_index_keeps(
    kafka_servers, kafka_topics, bus
) -> None:
    async with running_log(kafka_servers, kafka_topics.replies, bus, max_bytes=100_000) as log:
        target = on_partition(chat_request(model="m", stream=True), 0)
        await bus.publish(kafka_topics.replies, marker_of(target), partition=0)
        await publish_markers(bus, kafka_topics.replies, 300, pad=1_000)  # about 400 KB

        recorded = await log.lookup(target)

        assert recorded is not None and recorded.stream_started.request_id == target.request_id
        assert log.index.bytes <= 100_000
        again = await log.lookup(target)  # its records were dropped: read again
        assert again is not None and again.stream_started.request_id == target.request_id


async def test_what_another_partition_pushed_out_of_the_index_is_read_again(
    kafka_servers, kafka_topics, bus
) -> None:
    async with running_log(kafka_servers, kafka_topics.replies, bus, max_bytes=100_000) as log:
        first, second = (on_partition(chat_request(model="m", stream=True), 0) for _ in "ab")
        for request in (first, second):
            await bus.publish(kafka_topics.replies, marker_of(request), partition=0)
        assert (await log.lookup(first)) is not None  # partition 0 read, `second` kept

        await publish_markers(bus, kafka_topics.replies, 300, pad=1_000, partition=1)
        # Partition 1's records push partition 0's out of the index.
        await log.lookup(on_partition(chat_request(model="m"), 1))

        recorded = await log.lookup(second)

        assert recorded is not None and recorded.stream_started.request_id == second.request_id
