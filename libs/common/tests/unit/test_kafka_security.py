"""Every Kafka client of a service connects as its settings say: TLS, SASL (PLAIN, SCRAM)
or both, as managed Kafka requires. Without them no client could reach Confluent Cloud,
Amazon MSK or Aiven, and whoever reached a broker could publish events every service
trusts, with no way to turn authentication on."""

from __future__ import annotations

import ssl

import pytest

from switchyard.common import kafka_security as security
from switchyard.common.bus.kafka import KafkaBus
from switchyard.common.kafka_security import KafkaSecurity
from switchyard.common.settings import ConfigurationError, ServiceSettings, kafka_security


@pytest.fixture(autouse=True)
def _plaintext_after():
    yield
    security.use(KafkaSecurity())


def test_plaintext_adds_nothing():
    assert KafkaSecurity().options() == {}


def test_sasl_ssl_gives_every_option_aiokafka_takes():
    options = KafkaSecurity(
        protocol="SASL_SSL", mechanism="SCRAM-SHA-512", username="svc", password="s3cret"
    ).options()
    assert options["security_protocol"] == "SASL_SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert (
        options["sasl_mechanism"],
        options["sasl_plain_username"],
        options["sasl_plain_password"],
    ) == ("SCRAM-SHA-512", "svc", "s3cret")
    assert "s3cret" not in repr(KafkaSecurity(protocol="SASL_SSL", username="u", password="s3cret"))


def test_sasl_without_credentials_or_a_certificate_without_its_key_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="SASL username and password"):
        KafkaSecurity(protocol="SASL_PLAINTEXT", username="u")
    with pytest.raises(ValueError, match="KEYFILE"):
        KafkaSecurity(protocol="SSL", certfile="client.pem")
    monkeypatch.setenv("SWITCHYARD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigurationError, match="SWITCHYARD_KAFKA_SASL_USERNAME"):
        kafka_security(ServiceSettings())


def test_a_ca_file_that_cannot_be_read_stops_start_up_not_the_first_connection(tmp_path):
    with pytest.raises((OSError, ssl.SSLError)):
        security.use(KafkaSecurity(protocol="SSL", cafile=str(tmp_path / "missing.pem")))


async def test_every_client_of_the_bus_connects_with_the_settings_security(monkeypatch):
    monkeypatch.setenv("SWITCHYARD_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("SWITCHYARD_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("SWITCHYARD_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("SWITCHYARD_KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("SWITCHYARD_BUS", "kafka")
    from switchyard.common.bus import create_bus

    bus = create_bus(ServiceSettings(), client_id="unit")
    assert isinstance(bus, KafkaBus)
    producer = bus._new_producer()
    consumer = bus._consumer("t", group=None)
    for client in (producer.client, consumer._client):
        assert client._security_protocol == "SASL_PLAINTEXT"
        assert client._sasl_mechanism == "SCRAM-SHA-256"
        assert client._sasl_plain_username == "svc"
    await producer.stop()
    await consumer.stop()
