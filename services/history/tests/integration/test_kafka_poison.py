"""One event the history consumer can never store (a poison event) on real Kafka and
PostgreSQL: it goes to the dead-letter topic with its coordinates, and every other event,
before and after it on the same partitions, is stored. (A database outage, by contrast,
only pauses the consumer: test_kafka_replay_and_outage.py.)"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import func, select, text

from switchyard.common.bus.kafka import KafkaBus
from switchyard.common.db import upgrade
from switchyard.common.events import ChatRequested
from switchyard.common.testing.infra import async_wait_until
from switchyard.history.app import create_app
from switchyard.history.bootstrap import history_engine
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE, Settings
from switchyard.history.models import events_table, requests_table

pytestmark = pytest.mark.integration


def poison_request(events) -> ChatRequested:
    """A valid event (it decodes) that the store can never write: the database refuses
    its request id (`REFUSE_POISON`), so PostgreSQL fails every batch that contains it.
    (An event the contract lets through and the schema cannot hold, such as an id longer
    than its column, is refused when it is read, before any store: `test_events`.)"""
    valid = events.requested(at=datetime.now(UTC))
    return valid.model_copy(update={"request_id": f"poison-{valid.request_id}"})


# A database that refuses one kind of event, as a constraint or a corrupt index would.
REFUSE_POISON = [
    """CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger AS $$
    BEGIN
        IF NEW.request_id LIKE 'poison-%' THEN
            RAISE EXCEPTION 'this store refuses poison events';
        END IF;
        RETURN NEW;
    END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS refuse_poison ON history_events",
    """CREATE TRIGGER refuse_poison BEFORE INSERT ON history_events
    FOR EACH ROW EXECUTE FUNCTION refuse_poison()""",
]


async def _refusing_poison(engine, refuse: bool) -> None:
    async with engine.begin() as connection:
        if refuse:
            for statement in REFUSE_POISON:
                await connection.execute(text(statement))
        else:
            await connection.execute(text("DROP TRIGGER IF EXISTS refuse_poison ON history_events"))


async def _dead_letters(servers: str, topic: str, expected: int, timeout: float = 60) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for items in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(items)
    finally:
        await consumer.stop()
    return records


async def _count(engine, table) -> int:
    async with engine.connect() as connection:
        return (await connection.execute(select(func.count()).select_from(table))).scalar_one()


async def test_a_poison_event_amid_traffic_is_dead_lettered_and_everything_else_is_stored(
    kafka_servers, kafka_topics, postgres_url, events
):
    upgrade(MIGRATIONS_DIR, postgres_url, VERSION_TABLE)
    engine = history_engine(postgres_url)
    await _refusing_poison(engine, True)
    bus = KafkaBus(kafka_servers, deadletter_topic=kafka_topics.deadletter)
    await bus.start()
    settings = Settings(
        database_url=postgres_url,
        bus="kafka",
        kafka_bootstrap_servers=kafka_servers,
        topic_prefix=kafka_topics.prefix,
        max_batch=200,
    )
    app = create_app(settings)
    topic = kafka_topics.requests_interactive
    stored_events = 0

    async def traffic(count: int) -> None:
        nonlocal stored_events
        for _ in range(count):
            request = events.requested(at=datetime.now(UTC))
            await bus.publish(topic, request, partition=0)
            await bus.publish(kafka_topics.replies, events.completed(request))
            await bus.publish(kafka_topics.usage, events.usage(request))
            stored_events += 3

    try:
        await traffic(30)
        poison = poison_request(events)
        await bus.publish(topic, poison, partition=0)  # amid the requests of partition 0
        await traffic(30)
        async with app.router.lifespan_context(app):
            [dead] = await _dead_letters(kafka_servers, kafka_topics.deadletter, 1)
            await async_wait_until(
                lambda: _has(engine, stored_events), timeout=60, message="every other event"
            )
            await asyncio.sleep(1)
            stored = await _count(engine, events_table)
            rows = await _count(engine, requests_table)
            poisoned_rows = await _rows_of(engine, poison.request_id)
            ready = await app.state.bus.healthy()
    finally:
        await bus.stop()
        await _refusing_poison(engine, False)
        await engine.dispose()

    headers = dict(dead.headers)
    assert headers["deadletter.topic"] == topic.encode()
    assert headers["deadletter.partition"] == b"0"
    assert headers["deadletter.offset"] == b"30"  # its place among the requests
    assert headers["deadletter.group"] == f"{kafka_topics.prefix}.history".encode()
    assert b"this store refuses poison events" in headers["deadletter.reason"]
    assert dead.key == poison.request_id.encode()
    assert stored == stored_events and rows == 60  # every other event, once
    assert poisoned_rows == 0
    assert ready


async def _has(engine, expected: int) -> bool:
    return await _count(engine, events_table) >= expected


async def _rows_of(engine, request_id: str) -> int:
    async with engine.connect() as connection:
        query = select(func.count()).where(requests_table.c.request_id == request_id)
        return (await connection.execute(query)).scalar_one()
