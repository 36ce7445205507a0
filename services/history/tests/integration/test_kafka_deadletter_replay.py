"""`switchyard deadletter list` and `replay` on real Kafka and PostgreSQL: an event history
gave up on (dead-lettered while its cause stood) is listed with its coordinates, replayed
once to the partition it came from, and stored; a second `replay --all` passes over it,
and naming it again is refused without `--again`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from aiokafka.structs import ConsumerRecord
from sqlalchemy import func, select

from switchyard.common.bus.base import serialise
from switchyard.common.bus.kafka import KafkaBus
from switchyard.common.db import upgrade
from switchyard.common.testing.infra import async_wait_until
from switchyard.history.app import create_app
from switchyard.history.bootstrap import history_engine
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE, Settings
from switchyard.history.models import requests_table

pytestmark = pytest.mark.integration


def _cli(servers: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": servers,
        "SWITCHYARD_TOPIC_PREFIX": prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "switchyard.common.cli", "deadletter", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def _rows_of(engine, request_id: str) -> int:
    async with engine.connect() as connection:
        query = select(func.count()).where(requests_table.c.request_id == request_id)
        return (await connection.execute(query)).scalar_one()


async def test_a_dead_letter_is_listed_replayed_once_and_stored(
    kafka_servers, kafka_topics, postgres_url, events
):
    upgrade(MIGRATIONS_DIR, postgres_url, VERSION_TABLE)
    engine = history_engine(postgres_url)
    bus = KafkaBus(kafka_servers, deadletter_topic=kafka_topics.deadletter)
    await bus.start()
    prefix = kafka_topics.prefix
    topic = kafka_topics.requests_interactive
    request = events.requested(at=datetime.now(UTC))
    # As the bus dead-letters a record a handler kept failing on: the record as it was
    # (never seen by history's group on the topic itself), with its coordinates.
    original = ConsumerRecord(
        topic,
        1,
        4242,
        0,
        0,
        request.request_id.encode(),
        serialise(request),
        None,
        -1,
        -1,
        (("type", b"chat.requested"), ("request_id", request.request_id.encode())),
    )
    group = f"{prefix}.history"
    await bus.dead_letter(original, group, "handler failed: OperationalError('disk full')")
    app = create_app(
        Settings(
            database_url=postgres_url,
            bus="kafka",
            kafka_bootstrap_servers=kafka_servers,
            topic_prefix=prefix,
        )
    )
    try:
        async with app.router.lifespan_context(app):
            listed = await asyncio.to_thread(_cli, kafka_servers, prefix, "list", "--json")
            assert listed.returncode == 0, listed.stderr
            [letter] = [json.loads(line) for line in listed.stdout.splitlines()]
            assert letter["topic"] == topic
            assert (letter["partition"], letter["offset"], letter["group"]) == (1, 4242, group)
            assert letter["request_id"] == request.request_id
            assert letter["reason"] == "handler failed: OperationalError('disk full')"
            assert letter["replays"] == []
            assert await _rows_of(engine, request.request_id) == 0

            replayed = await asyncio.to_thread(_cli, kafka_servers, prefix, "replay", "--all")
            assert replayed.returncode == 0, replayed.stderr
            assert f"{letter['id']}\treplayed to {topic}:1" in replayed.stdout
            await async_wait_until(
                lambda: _rows_of(engine, request.request_id),
                timeout=60,
                message="the replayed event stored",
            )

            after = await asyncio.to_thread(_cli, kafka_servers, prefix, "list", "--json")
            [letter_after] = [json.loads(line) for line in after.stdout.splitlines()]
            assert [replay["to"] for replay in letter_after["replays"]] == [f"{topic}:1"]
            again = await asyncio.to_thread(_cli, kafka_servers, prefix, "replay", "--all")
            assert again.returncode == 0 and "0 of 0 dead letter(s) replayed" in again.stderr
            named = await asyncio.to_thread(_cli, kafka_servers, prefix, "replay", letter["id"])
            assert named.returncode == 1 and "replayed already" in named.stderr
            assert await _rows_of(engine, request.request_id) == 1
    finally:
        await bus.stop()
        await engine.dispose()


async def test_reading_a_broker_that_is_not_there_fails_in_one_line(kafka_topics):
    result = await asyncio.to_thread(_cli, "127.0.0.1:1", kafka_topics.prefix, "list")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot read {kafka_topics.deadletter} on 127.0.0.1:1")
    assert "Traceback" not in result.stderr
