"""An operator's revocation reaches the gateways with no auth service running: `switchyard
keys revoke` on Kafka publishes the event it wrote to the auth events topic itself (a
gateway serving cached answers through an auth outage learns of revocations only there)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from switchyard.common.events import ApiKeyRevoked, decode_event
from switchyard.common.testing.processes import SWITCHYARD

pytestmark = pytest.mark.integration


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [*SWITCHYARD, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def _auth_events(servers: str, topic: str) -> list:
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    await consumer.start()
    try:
        # The fixture makes every topic with 3 partitions.
        partitions = [TopicPartition(topic, partition) for partition in range(3)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        events = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(*partitions, timeout_ms=1000)
            events += [decode_event(r.value) for rs in batches.values() for r in rs]
        return events
    finally:
        await consumer.stop()


async def test_a_key_revoked_by_the_cli_is_published_with_no_auth_service(
    kafka_servers, kafka_topics, topic_prefix, postgres_url
):
    env = {
        **os.environ,
        "DATABASE_URL": postgres_url,
        "SWITCHYARD_BUS": "kafka",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_servers,
        "SWITCHYARD_TOPIC_PREFIX": topic_prefix,
    }
    env.pop("SWITCHYARD_AUTH_DATABASE_URL", None)

    def operator() -> str:
        _cli(env, "db", "upgrade", "--service", "auth")
        _cli(
            env,
            "users",
            "create",
            "--email",
            "ops@example.com",
            "--tenant",
            "t1",
            "--password-stdin",
            stdin="a-long-password-1\n",
        )
        created = json.loads(_cli(env, "keys", "create", "--email", "ops@example.com", "--json"))
        _cli(env, "keys", "revoke", created["key_id"])
        return created["key_id"]

    key_id = await asyncio.to_thread(operator)

    events = await _auth_events(kafka_servers, kafka_topics.auth_events)
    revoked = [e for e in events if isinstance(e, ApiKeyRevoked)]
    assert [event.data.key_id for event in revoked] == [key_id]
