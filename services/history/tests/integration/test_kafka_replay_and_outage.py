"""The history service on real Kafka and PostgreSQL:

- replaying every topic from the beginning (a new consumer group) changes no row;
- PostgreSQL stopped for 30 seconds under steady load: the consumer retries with backoff,
  catches up when the database is back, and the tables hold every event of the topics
  exactly once (0 lost, 0 duplicated). The outage is simulated on a throwaway PostgreSQL
  server this test creates (initdb) on a free port, never on the shared one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text

from switchyard.common.bus.kafka import KafkaBus
from switchyard.common.db import upgrade
from switchyard.common.kafka_admin import list_topics
from switchyard.common.testing.infra import REQUIRE_INFRA, async_wait_until
from switchyard.common.testing.processes import free_port
from switchyard.history.app import create_app
from switchyard.history.bootstrap import history_engine
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE, Settings
from switchyard.history.models import events_table, requests_table

pytestmark = pytest.mark.integration


def _settings(url: str, servers: str, topics, group: str) -> Settings:
    return Settings(
        database_url=url,
        bus="kafka",
        kafka_bootstrap_servers=servers,
        topic_prefix=topics.prefix,
        group=group,
        max_batch=200,
    )


async def _publish_request(bus: KafkaBus, topics, events, *, failed: bool = False) -> int:
    request = events.requested(at=datetime.now(UTC))
    await bus.publish(topics.requests_interactive, request)
    reply = events.failed(request) if failed else events.completed(request)
    await bus.publish(topics.replies, reply)
    await bus.publish(topics.replies, events.chunk(request))  # never stored
    await bus.publish(topics.usage, events.usage(request))
    return 3


async def _snapshot(engine) -> tuple[dict, list]:
    async with engine.connect() as connection:
        rows = (await connection.execute(select(requests_table))).mappings().all()
        stored = (
            await connection.execute(
                select(events_table.c.event_id, events_table.c.recorded_at).order_by(
                    events_table.c.event_id
                )
            )
        ).all()
    return {row["request_id"]: dict(row) for row in rows}, [tuple(row) for row in stored]


async def _count(engine, table) -> int:
    async with engine.connect() as connection:
        return (await connection.execute(select(func.count()).select_from(table))).scalar_one()


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_replaying_the_topics_from_the_beginning_changes_no_row(
    kafka_servers, kafka_topics, postgres_url, events
):
    upgrade(MIGRATIONS_DIR, postgres_url, VERSION_TABLE)
    engine = history_engine(postgres_url)
    bus = KafkaBus(kafka_servers, deadletter_topic=kafka_topics.deadletter)
    await bus.start()
    try:
        stored_events = 0
        for index in range(40):
            stored_events += await _publish_request(
                bus, kafka_topics, events, failed=index % 5 == 0
            )
        first = create_app(_settings(postgres_url, kafka_servers, kafka_topics, "history-first"))
        async with first.router.lifespan_context(first):
            await async_wait_until(
                lambda: _has(engine, stored_events), timeout=60, message="every event stored"
            )
        before = await _snapshot(engine)

        # A new group reads every topic from its first offset: the whole history again.
        duplicates = _sample("switchyard_history_events_duplicate_total")
        replay = create_app(_settings(postgres_url, kafka_servers, kafka_topics, "history-replay"))
        async with replay.router.lifespan_context(replay):
            await async_wait_until(
                lambda: _async(
                    _sample("switchyard_history_events_duplicate_total") - duplicates
                    >= stored_events
                ),
                timeout=60,
                message="the replay to reach the end of the topics",
            )
        after = await _snapshot(engine)
    finally:
        await bus.stop()
        await engine.dispose()

    assert len(before[0]) == 40 and len(before[1]) == stored_events
    assert after == before  # not a row changed, not even recorded_at


async def _has(engine, expected: int) -> bool:
    return await _count(engine, events_table) >= expected


async def _async(value):
    return value


# -- PostgreSQL outage --------------------------------------------------------------------


class ThrowawayPostgres:
    """A PostgreSQL server of our own (initdb in a temporary directory, run as the
    `postgres` user), which the test may stop and start at will."""

    def __init__(self) -> None:
        self.bin = self._bin_dir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sy-outage-"))
        self.data = self.dir / "data"
        self.url = f"postgresql+psycopg://outage:outage@127.0.0.1:{self.port}/outage"

    @staticmethod
    def _bin_dir() -> Path:
        for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (candidate / "initdb").exists():
                return candidate
        found = shutil.which("initdb")
        if found is None:
            raise RuntimeError("initdb not found")
        return Path(found).parent

    def _as_postgres(self, *command: str) -> None:
        prefix = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def create(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"
        )
        self.start()
        self._as_postgres(
            str(self.bin / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-c",
            "CREATE ROLE outage LOGIN PASSWORD 'outage'",
            "-c",
            "CREATE DATABASE outage OWNER outage",
        )

    def start(self) -> None:
        self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
            "start",
        )

    def stop(self) -> None:
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
        )

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    try:
        server = ThrowawayPostgres()
        server.create()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        message = f"cannot create a throwaway PostgreSQL server: {exc!r}"
        if REQUIRE_INFRA:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield server
    finally:
        server.destroy()


async def _topic_size(servers: str, prefix: str, topics: list[str]) -> int:
    """Records on `topics` (end offsets; nothing was ever deleted from them)."""
    counts = await list_topics(servers, prefix)
    consumer = AIOKafkaConsumer(bootstrap_servers=servers)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in range(counts[topic])
        ]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


async def test_postgres_down_for_30_seconds_under_load_loses_and_duplicates_nothing(
    kafka_servers, kafka_topics, throwaway_postgres, events
):
    upgrade(MIGRATIONS_DIR, throwaway_postgres.url, VERSION_TABLE)
    engine = history_engine(throwaway_postgres.url)
    # The load's own producer: a slow acknowledgement on a busy machine is not the fault
    # under test (PostgreSQL's outage is), so it waits as long as it must.
    bus = KafkaBus(kafka_servers, deadletter_topic=kafka_topics.deadletter, publish_timeout_s=30)
    await bus.start()
    settings = _settings(throwaway_postgres.url, kafka_servers, kafka_topics, "history-outage")
    app = create_app(settings)
    rate_per_s, seconds = 20, 42  # requests (3 stored events each) per second, for this long
    published = {"requests": 0, "events": 0}
    failures_before = _sample("switchyard_history_persist_failures_total")

    async def steady_load() -> None:
        started = time.monotonic()
        for index in range(rate_per_s * seconds):
            await asyncio.sleep(max(0.0, started + index / rate_per_s - time.monotonic()))
            published["events"] += await _publish_request(bus, kafka_topics, events)
            published["requests"] += 1

    try:
        async with app.router.lifespan_context(app):
            load = asyncio.create_task(steady_load())
            await asyncio.sleep(5)
            stored_before_outage = await _count(engine, events_table)
            await asyncio.to_thread(throwaway_postgres.stop)
            outage_started = time.monotonic()
            await asyncio.sleep(30)
            await asyncio.to_thread(throwaway_postgres.start)
            outage_s = time.monotonic() - outage_started
            await load
            await async_wait_until(
                lambda: _has(engine, published["events"]),
                timeout=40,
                interval=0.5,
                message="history to catch up after the outage",
            )
            await asyncio.sleep(1)  # anything more arriving would be a duplicate
            stored = await _count(engine, events_table)
            rows = await _count(engine, requests_table)
            async with engine.connect() as connection:
                distinct = (
                    await connection.execute(
                        text("SELECT count(DISTINCT event_id) FROM history_events")
                    )
                ).scalar_one()
                completed = (
                    await connection.execute(
                        text("SELECT count(*) FROM history_requests WHERE status = 'completed'")
                    )
                ).scalar_one()
        on_topics = await _topic_size(
            kafka_servers,
            kafka_topics.prefix,
            [kafka_topics.requests_interactive, kafka_topics.replies, kafka_topics.usage],
        )
    finally:
        await bus.stop()
        await engine.dispose()

    chunks = published["requests"]  # one transient stream chunk per request, never stored
    assert stored_before_outage > 0
    assert outage_s >= 30
    assert _sample("switchyard_history_persist_failures_total") > failures_before
    assert published["requests"] == rate_per_s * seconds
    assert on_topics - chunks == published["events"] == stored == distinct  # 0 lost, 0 twice
    assert rows == completed == published["requests"]
