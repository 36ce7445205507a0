"""The bus and the operator's commands over SASL and TLS on a real broker. The local
broker (deploy/local/kafka.sh) has a listener for each: SASL/PLAIN over plain TCP
(`KAFKA_SASL_PORT`) and over TLS (`KAFKA_SASL_SSL_PORT`, what managed Kafka takes), both
for user `switchyard`, and TLS with a client certificate (`KAFKA_SSL_PORT`), with
certificates from a CA of its own (its state dir's `kafka/tls`). With the settings'
credentials every client connects and events go round; with a wrong password, a broker
certificate from a CA not trusted, or no client certificate where one is required, none
does."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from switchyard.common import kafka_security as security
from switchyard.common.bus import BusUnavailableError
from switchyard.common.bus.kafka import KafkaBus
from switchyard.common.kafka_admin import create_topics, delete_topics, list_topics
from switchyard.common.kafka_security import KafkaSecurity
from switchyard.common.testing.bus_contract import numbered_request
from switchyard.common.testing.infra import async_wait_until, local_broker_state_dir
from switchyard.common.topics import Topics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[4]
# The certificates of the broker these tests reach, which another checkout may have
# started (`make infra-up` reuses a broker already answering).
TLS_DIR = (
    local_broker_state_dir(
        int(os.environ.get("KAFKA_PORT") or 9092),
        Path(os.environ.get("SWITCHYARD_STATE_DIR") or REPO / ".infra") / "kafka",
    )
    / "tls"
)


def _listener(variable: str, default: int) -> str:
    return f"127.0.0.1:{os.environ.get(variable) or default}"


SASL_SERVERS = _listener("KAFKA_SASL_PORT", 9094)
SASL_SSL_SERVERS = _listener("KAFKA_SASL_SSL_PORT", 9095)
SSL_SERVERS = _listener("KAFKA_SSL_PORT", 9096)
PASSWORD = "switchyard-sasl"


def _sasl(password: str = PASSWORD) -> KafkaSecurity:
    return KafkaSecurity(
        protocol="SASL_PLAINTEXT", mechanism="PLAIN", username="switchyard", password=password
    )


def _sasl_ssl(cafile: str = str(TLS_DIR / "ca.pem")) -> KafkaSecurity:
    return KafkaSecurity(
        protocol="SASL_SSL",
        mechanism="PLAIN",
        username="switchyard",
        password=PASSWORD,
        cafile=cafile,
    )


def _mutual_tls(*, client_certificate: bool = True) -> KafkaSecurity:
    return KafkaSecurity(
        protocol="SSL",
        cafile=str(TLS_DIR / "ca.pem"),
        certfile=str(TLS_DIR / "client.pem") if client_certificate else "",
        keyfile=str(TLS_DIR / "client-key.pem") if client_certificate else "",
    )


@pytest.fixture
def using():
    """Set the process's Kafka security for one test; PLAINTEXT again afterwards."""
    yield security.use
    security.use(KafkaSecurity())


@pytest.mark.parametrize(
    ("servers", "make"),
    [(SASL_SERVERS, _sasl), (SASL_SSL_SERVERS, _sasl_ssl), (SSL_SERVERS, _mutual_tls)],
    ids=["SASL_PLAINTEXT", "SASL_SSL", "SSL with a client certificate"],
)
async def test_events_go_round(kafka_servers, topic_prefix, using, servers, make):
    del kafka_servers  # the real broker is up; its other listener is what is used
    using(make())
    topics = Topics(topic_prefix)
    await create_topics(servers, topics, partitions_override=1)
    bus = KafkaBus(servers, deadletter_topic=topics.deadletter)
    await bus.start()
    received = []

    async def handler(event):
        received.append(event)

    try:
        assert set(await list_topics(servers, topic_prefix)) >= {topics.usage}
        await bus.subscribe([topics.requests_interactive], "secured", handler)
        sent = [numbered_request(n) for n in range(5)]
        for event in sent:
            await bus.publish(topics.requests_interactive, event)
        await async_wait_until(lambda: asyncio.sleep(0, len(received) == 5), timeout=30)
        assert sorted(e.request_id for e in received) == sorted(e.request_id for e in sent)
    finally:
        await bus.stop()
        await delete_topics(servers, [name for name, _ in topics.all()])


@pytest.mark.parametrize(
    ("servers", "make"),
    [
        (SASL_SERVERS, lambda: _sasl("not-the-password")),
        # The broker's certificate is from the local CA, which the system does not trust.
        (SASL_SSL_SERVERS, lambda: _sasl_ssl(cafile="")),
        (SSL_SERVERS, lambda: _mutual_tls(client_certificate=False)),
    ],
    ids=["wrong password", "broker CA not trusted", "no client certificate"],
)
async def test_refused_credentials_connect_nothing(
    kafka_servers, topic_prefix, using, servers, make
):
    del kafka_servers
    using(make())
    topics = Topics(topic_prefix)
    bus = KafkaBus(servers, deadletter_topic=topics.deadletter, publish_timeout_s=2)
    try:
        await bus.start()
        with pytest.raises(BusUnavailableError):
            await bus.publish(topics.requests_interactive, numbered_request(1))
        assert not await bus.healthy()
    finally:
        await bus.stop()
