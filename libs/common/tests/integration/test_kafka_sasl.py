"""The bus and the operator's commands over SASL on a real broker: the local broker's
second listener takes SASL/PLAIN (deploy/local/kafka.sh, `KAFKA_SASL_PORT`, user
`switchyard`), as managed Kafka takes SASL_SSL. With the settings' credentials every
client connects and events go round; with a wrong password none does."""

from __future__ import annotations

import asyncio
import os

import pytest

from switchyard.common import kafka_security as security
from switchyard.common.bus import BusUnavailableError
from switchyard.common.bus.kafka import KafkaBus
from switchyard.common.kafka_admin import create_topics, delete_topics, list_topics
from switchyard.common.kafka_security import KafkaSecurity
from switchyard.common.testing.bus_contract import numbered_request
from switchyard.common.testing.infra import async_wait_until
from switchyard.common.topics import Topics

pytestmark = pytest.mark.integration

SASL_SERVERS = f"127.0.0.1:{os.environ.get('KAFKA_SASL_PORT') or 9094}"


def _sasl(password: str) -> KafkaSecurity:
    return KafkaSecurity(
        protocol="SASL_PLAINTEXT", mechanism="PLAIN", username="switchyard", password=password
    )


@pytest.fixture
def over_sasl():
    security.use(_sasl("switchyard-sasl"))
    yield
    security.use(KafkaSecurity())


async def test_events_go_round_over_sasl(kafka_servers, topic_prefix, over_sasl):
    del kafka_servers  # the real broker is up; its SASL listener is what is used
    topics = Topics(topic_prefix)
    await create_topics(SASL_SERVERS, topics, partitions_override=1)
    bus = KafkaBus(SASL_SERVERS, deadletter_topic=topics.deadletter)
    await bus.start()
    received = []

    async def handler(event):
        received.append(event)

    try:
        assert set(await list_topics(SASL_SERVERS, topic_prefix)) >= {topics.usage}
        await bus.subscribe([topics.requests_interactive], "sasl", handler)
        sent = [numbered_request(n) for n in range(5)]
        for event in sent:
            await bus.publish(topics.requests_interactive, event)
        await async_wait_until(lambda: asyncio.sleep(0, len(received) == 5), timeout=30)
        assert sorted(e.request_id for e in received) == sorted(e.request_id for e in sent)
    finally:
        await bus.stop()
        await delete_topics(SASL_SERVERS, [name for name, _ in topics.all()])


async def test_a_wrong_password_connects_nothing(kafka_servers, topic_prefix):
    del kafka_servers
    security.use(_sasl("not-the-password"))
    topics = Topics(topic_prefix)
    bus = KafkaBus(SASL_SERVERS, deadletter_topic=topics.deadletter, publish_timeout_s=2)
    try:
        await bus.start()
        with pytest.raises(BusUnavailableError):
            await bus.publish(topics.requests_interactive, numbered_request(1))
        assert not await bus.healthy()
    finally:
        await bus.stop()
        security.use(KafkaSecurity())
