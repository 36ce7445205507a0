"""Model requests as large as the model APIs take (Anthropic's Messages accept 32 MB) go
through the Kafka bus on a real broker, to a consumer group and to a listener; an event
larger than the bus carries is refused at once as too large, not as an outage."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from switchyard.common.bus import EventTooLargeError, Publication
from switchyard.common.bus.kafka import KafkaBus
from switchyard.common.events import ChatRequestData, ChatRequested, ClientAPI
from switchyard.common.testing.infra import async_wait_until

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def large_request(request_id: str, size: int) -> ChatRequested:
    return ChatRequested(
        source="test",
        tenant="acme",
        request_id=request_id,
        data=ChatRequestData(
            api=ClientAPI.ANTHROPIC_MESSAGES,
            model="sim-claude",
            body={
                "model": "sim-claude",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "x" * size}],
            },
            user_id="u",
            deadline=datetime.now(UTC) + timedelta(seconds=60),
        ),
    )


async def test_a_32_mib_request_reaches_a_consumer_group_and_a_listener(
    kafka_servers, kafka_topics
):
    bus = KafkaBus(kafka_servers, deadletter_topic=kafka_topics.deadletter)
    await bus.start()
    grouped: list = []
    heard: list = []

    async def on_group(event):
        grouped.append(event)

    async def on_listen(event):
        heard.append(event)

    try:
        await bus.subscribe([kafka_topics.requests_interactive], "large", on_group)
        await bus.listen(kafka_topics.requests_interactive, on_listen)
        await asyncio.sleep(1)  # the listener starts at the end of the topic
        request = large_request("large-1", 32 * MIB)
        started = time.monotonic()
        await bus.publish(kafka_topics.requests_interactive, request)
        await async_wait_until(
            lambda: asyncio.sleep(0, len(grouped) == 1 and len(heard) == 1),
            timeout=60,
            message="the large request at the group consumer and the listener",
        )
    finally:
        await bus.stop()
    assert time.monotonic() - started < 60
    for received in (grouped[0], heard[0]):
        assert received.data.body == request.data.body


async def test_an_event_over_the_limit_is_refused_as_too_large(kafka_servers, kafka_topics):
    bus = KafkaBus(kafka_servers, deadletter_topic=kafka_topics.deadletter, max_message_bytes=MIB)
    await bus.start()
    try:
        started = time.monotonic()
        with pytest.raises(EventTooLargeError):
            await bus.publish(kafka_topics.requests_interactive, large_request("big", 2 * MIB))
        assert time.monotonic() - started < 10  # refused at once, not after the producer's retries
    finally:
        await bus.stop()


async def test_events_published_in_order_are_written_unless_one_before_is_refused(
    kafka_servers, kafka_topics
):
    """`publish_in_order` writes every event; one refused before sending (too large)
    raises, and the events after it are never written."""
    bus = KafkaBus(kafka_servers, deadletter_topic=kafka_topics.deadletter, max_message_bytes=MIB)
    await bus.start()
    heard: dict[str, list[str]] = {kafka_topics.replies: [], kafka_topics.usage: []}

    def on(topic: str):
        async def handler(event) -> None:
            heard[topic].append(event.request_id)

        return handler

    try:
        for topic in heard:
            await bus.listen(topic, on(topic))
        await asyncio.sleep(1)  # listeners start at the end of their topics
        # One partition per topic: Kafka orders records within a partition only, and the
        # last event read proves the ones before it in its partition were read (or never
        # written).
        await bus.publish_in_order(
            [
                Publication(kafka_topics.replies, large_request("first", 10), partition=0),
                Publication(kafka_topics.usage, large_request("second", 10), partition=0),
            ]
        )
        with pytest.raises(EventTooLargeError):
            await bus.publish_in_order(
                [
                    Publication(
                        kafka_topics.replies, large_request("refused", 2 * MIB), partition=0
                    ),
                    Publication(
                        kafka_topics.usage, large_request("after-refused", 10), partition=0
                    ),
                ]
            )
        await bus.publish(kafka_topics.usage, large_request("last", 10), partition=0)
        await async_wait_until(
            lambda: asyncio.sleep(0, "last" in heard[kafka_topics.usage]),
            timeout=30,
            message="the last event at its listener",
        )
    finally:
        await bus.stop()
    assert heard == {kafka_topics.replies: ["first"], kafka_topics.usage: ["second", "last"]}


async def test_in_order_waits_for_a_large_record_the_broker_may_refuse(kafka_servers):
    """A topic whose `max.message.bytes` is below the producer's limit refuses a large
    record only after taking it: the event after it is never written."""
    prefix = f"sytest-alone-{uuid.uuid4().hex[:8]}"
    replies, usage = f"{prefix}.replies", f"{prefix}.usage"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_servers)
    await admin.start()
    await admin.create_topics(
        [
            NewTopic(replies, 1, 1, topic_configs={"max.message.bytes": "100000"}),
            NewTopic(usage, 1, 1),
        ]
    )
    bus = KafkaBus(kafka_servers, deadletter_topic=f"{prefix}.deadletter", max_message_bytes=MIB)
    await bus.start()
    try:
        with pytest.raises(EventTooLargeError):
            await bus.publish_in_order(
                [
                    Publication(replies, large_request("refused", 200_000)),
                    Publication(usage, large_request("after-refused", 10)),
                ]
            )
        await bus.publish(usage, large_request("last", 10))
        consumer = AIOKafkaConsumer(
            usage, bootstrap_servers=kafka_servers, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            written = [
                record.key.decode()
                for records in (await consumer.getmany(timeout_ms=5000)).values()
                for record in records
            ]
        finally:
            await consumer.stop()
    finally:
        await bus.stop()
        await admin.delete_topics([replies, usage])
        await admin.close()
    assert written == ["last"]
