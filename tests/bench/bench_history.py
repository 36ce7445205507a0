"""History benchmark: how fast events are persisted, and how fast history and usage
queries answer over a million requests.

    uv run python tests/bench/bench_history.py [--rows 1000000] [--skip-kafka]

1. `EventRecorder.record` alone, on SQLite and PostgreSQL: events/s and CPU ms per request
   (a request is three events: requested, completed, usage), in batches as the consumer
   gets them from Kafka.
2. The history service consuming from Kafka into PostgreSQL (the real app, in this
   process): a backlog of events is produced first, then the consumer is started and the
   time until every event is in the database gives the sustained events/s; the consumer
   lag is sampled while it catches up.
3. Query latency with `--rows` requests in `history_requests` (generated server-side with
   `INSERT ... SELECT generate_series`, 10 tenants of 100 users each, over 30 days):
   history list pages (user, admin, each filter, a deep cursor page) and usage reports,
   through `HistoryQueries` (what the API runs), median and worst of several runs.

Needs `DATABASE_URL` (PostgreSQL) and, for part 2, `KAFKA_BOOTSTRAP_SERVERS`. Creates
and drops its own databases and topics. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from switchyard.common.db import upgrade
from switchyard.common.events import (
    ChatCompleted,
    ChatCompletedData,
    ChatRequestData,
    ChatRequested,
    TerminalStatus,
    TokenUsage,
    UsageData,
    UsageRecorded,
    new_id,
)
from switchyard.common.testing.infra import temporary_database, unique_prefix
from switchyard.history.bootstrap import history_engine
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE
from switchyard.history.handlers import EventRecorder
from switchyard.history.queries import Caller, HistoryFilters, HistoryQueries, UsageQuery

DEFAULT_DATABASE = "postgresql+psycopg://switchyard:switchyard@127.0.0.1:5432/switchyard"
PROMPT = "Summarise the following paragraph in one sentence, please. " * 3
ANSWER = "Here is a one-sentence summary of the paragraph you sent me. " * 4


def request_events(index: int, at: datetime) -> list:
    request_id = new_id()
    request = ChatRequested(
        source="gateway",
        tenant=f"tenant-{index % 10}",
        request_id=request_id,
        time=at,
        data=ChatRequestData(
            model="sim-small",
            body={"model": "sim-small", "messages": [{"role": "user", "content": PROMPT}]},
            user_id=f"user-{index % 1000}",
            api_key_id=f"key-{index % 2000}",
            deadline=at + timedelta(seconds=120),
        ),
    )
    completed = ChatCompleted(
        source="inference",
        tenant=request.tenant,
        request_id=request_id,
        time=at + timedelta(milliseconds=300),
        data=ChatCompletedData(
            response={
                "id": f"chatcmpl-{request_id}",
                "object": "chat.completion",
                "created": int(at.timestamp()),
                "model": "sim-small",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": ANSWER},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 30, "completion_tokens": 40, "total_tokens": 70},
            },
            provider="simulator",
            deployment="sim-small-1",
            usage=TokenUsage(input_tokens=30, output_tokens=40),
            latency_ms=300,
        ),
    )
    usage = UsageRecorded(
        source="inference",
        tenant=request.tenant,
        request_id=request_id,
        time=at + timedelta(milliseconds=301),
        data=UsageData(
            model="sim-small",
            provider="simulator",
            deployment="sim-small-1",
            user_id=request.data.user_id,
            api_key_id=request.data.api_key_id,
            status=TerminalStatus.COMPLETED,
            usage=TokenUsage(input_tokens=30, output_tokens=40),
            cost_usd=0.00007,
            latency_ms=301,
        ),
    )
    return [request, completed, usage]


def interleaved(requests: int, batch: int) -> list:
    """Events as a consumer of three topics sees them: a batch holds the requests, replies
    and usage records of roughly the same requests."""
    now = datetime.now(UTC)
    per_request = [request_events(i, now + timedelta(milliseconds=i)) for i in range(requests)]
    step = max(1, batch // 3)
    stream: list = []
    for start in range(0, requests, step):
        group = per_request[start : start + step]
        for position in range(3):
            stream += [events[position] for events in group]
    return stream


# -- 1. the recorder alone -------------------------------------------------------------


async def recorder_throughput(url: str, requests: int, batch: int) -> tuple[float, float]:
    upgrade(MIGRATIONS_DIR, url, VERSION_TABLE)
    engine = history_engine(url)
    try:
        recorder = EventRecorder(engine)
        stream = interleaved(requests, batch)
        await recorder.record(stream[:batch])  # warm up connections and statement caches
        stream = stream[batch:]
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(stream), batch):
            await recorder.record(stream[start : start + batch])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return len(stream) / wall, cpu / (len(stream) / 3) * 1000
    finally:
        await engine.dispose()


def bench_recorder(database: str, requests: int, batches: list[int]) -> list[str]:
    lines = [
        "| store | batch | events/s | CPU ms per request (3 events) |",
        "|---|---:|---:|---:|",
    ]
    for batch in batches:
        with tempfile.TemporaryDirectory() as tmp:
            rate, cpu = asyncio.run(
                recorder_throughput(f"sqlite+aiosqlite:///{tmp}/history.db", requests, batch)
            )
        lines.append(f"| SQLite | {batch} | {rate:,.0f} | {cpu:.3f} |")
        print(lines[-1], flush=True)
        with temporary_database(database, prefix="sybenchrec") as url:
            rate, cpu = asyncio.run(recorder_throughput(url, requests, batch))
        lines.append(f"| PostgreSQL | {batch} | {rate:,.0f} | {cpu:.3f} |")
        print(lines[-1], flush=True)
    return lines


# -- 2. the service consuming from Kafka -------------------------------------------------


async def kafka_catch_up(database: str, servers: str, requests: int) -> list[str]:
    import httpx
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.structs import TopicPartition
    from sqlalchemy import func, select

    from switchyard.common.events import encode_event
    from switchyard.common.kafka_admin import create_topics, delete_topics
    from switchyard.common.topics import Topics
    from switchyard.history.app import create_app
    from switchyard.history.config import Settings
    from switchyard.history.models import events_table

    prefix = unique_prefix("sybenchhist")
    topics = Topics(prefix)
    await create_topics(servers, topics)
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=20, acks=1)
    await producer.start()
    total = 0
    try:
        print(f"  producing {requests * 3:,} events ...", flush=True)
        for index in range(requests):
            for event, topic in zip(
                request_events(index, datetime.now(UTC)),
                (topics.requests_interactive, topics.replies, topics.usage),
                strict=True,
            ):
                await producer.send(topic, encode_event(event), key=event.request_id.encode())
                total += 1
        await producer.flush()
    finally:
        await producer.stop()

    lines: list[str] = []
    with temporary_database(database, prefix="sybenchkafka") as url:
        upgrade(MIGRATIONS_DIR, url, VERSION_TABLE)
        settings = Settings(
            database_url=url,
            bus="kafka",
            kafka_bootstrap_servers=servers,
            topic_prefix=prefix,
            group=f"history-bench-{prefix}",
        )
        app = create_app(settings)
        engine = history_engine(url)
        admin = AIOKafkaAdminClient(bootstrap_servers=servers)
        await admin.start()
        lags: list[int] = []
        cpu_started = time.process_time()
        started = time.perf_counter()
        try:
            async with app.router.lifespan_context(app):
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://history"
                ):
                    while True:
                        async with engine.connect() as connection:
                            stored = (
                                await connection.execute(
                                    select(func.count()).select_from(events_table)
                                )
                            ).scalar_one()
                        lags.append(await _lag(admin, settings.group, topics, TopicPartition))
                        if stored >= total:
                            break
                        if time.perf_counter() - started > 600:
                            raise RuntimeError(f"only {stored} of {total} events after 600 s")
                        await asyncio.sleep(0.5)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
        finally:
            await admin.close()
            await engine.dispose()
            await delete_topics(servers, [name for name, _ in topics.all()])
    lines += [
        "| events | seconds to persist all | events/s (sustained) | history CPU s | "
        "max consumer lag | lag samples (every 0.5 s) |",
        "|---:|---:|---:|---:|---:|---|",
        f"| {total:,} | {elapsed:.1f} | {total / elapsed:,.0f} | {cpu:.1f} | {max(lags):,} | "
        f"{', '.join(f'{lag:,}' for lag in lags[:: max(1, len(lags) // 8)])} |",
    ]
    print(lines[-1], flush=True)
    return lines


async def _lag(admin, group: str, topics, topic_partition) -> int:
    """Events on the consumed topics not yet committed by the history group."""
    from aiokafka import AIOKafkaConsumer

    offsets = await admin.list_consumer_group_offsets(group)
    names = [topics.requests_interactive, topics.replies, topics.usage]
    consumer = AIOKafkaConsumer(bootstrap_servers=admin._client._bootstrap_servers)
    await consumer.start()
    try:
        partitions = [
            topic_partition(name, p)
            for name in names
            for p in (consumer.partitions_for_topic(name) or await _partitions(consumer, name))
        ]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return sum(
        end - (offsets[tp].offset if tp in offsets and offsets[tp].offset >= 0 else 0)
        for tp, end in ends.items()
    )


async def _partitions(consumer, topic: str) -> set[int]:
    await consumer.topics()
    return consumer.partitions_for_topic(topic) or set()


# -- 3. queries over a million rows ------------------------------------------------------

GENERATE = """
INSERT INTO history_requests (request_id, tenant, user_id, api_key_id, model, api, priority,
    status, request_body, response, error, provider, deployment, input_tokens, output_tokens,
    cost_usd, latency_ms, created_at, completed_at, deadline)
SELECT md5(i::text),
       'tenant-' || (i % 10),
       'user-' || (i % 1000),
       'key-' || (i % 2000),
       (ARRAY['sim-small', 'sim-large', 'gpt-4o-mini', 'claude-haiku'])[1 + i % 4],
       'openai',
       CASE WHEN i % 50 = 0 THEN 'batch' ELSE 'interactive' END,
       CASE WHEN i % 97 = 0 THEN 'failed' WHEN i % 331 = 0 THEN 'expired'
            WHEN i % 1009 = 0 THEN 'cancelled' ELSE 'completed' END,
       jsonb_build_object('model', 'sim-small', 'messages',
            jsonb_build_array(jsonb_build_object('role', 'user', 'content', 'Hello ' || i))),
       jsonb_build_object('id', 'chatcmpl-' || i, 'object', 'chat.completion', 'choices',
            jsonb_build_array(jsonb_build_object('index', 0, 'finish_reason', 'stop',
                'message', jsonb_build_object('role', 'assistant', 'content', 'Hi ' || i)))),
       NULL, 'simulator', 'sim-1', 10 + i % 50, 20 + i % 100, 0.00001 * (i % 10), 50 + i % 200,
       :now - (CAST(:span AS float8) * i / :rows) * interval '1 second',
       :now - (CAST(:span AS float8) * i / :rows) * interval '1 second' + interval '300 milliseconds',
       :now - (CAST(:span AS float8) * i / :rows) * interval '1 second' + interval '120 seconds'
FROM generate_series(1, :rows) AS i
"""


async def bench_queries(database: str, rows: int, repeats: int) -> list[str]:
    from sqlalchemy import text

    lines: list[str] = []
    with temporary_database(database, prefix="sybenchq") as url:
        upgrade(MIGRATIONS_DIR, url, VERSION_TABLE)
        engine = history_engine(url)
        try:
            now = datetime.now(UTC)
            span_s = 30 * 86400
            started = time.perf_counter()
            async with engine.begin() as connection:
                await connection.execute(
                    text(GENERATE), {"now": now, "span": span_s, "rows": rows}
                )
            print(f"  generated {rows:,} rows in {time.perf_counter() - started:.1f} s", flush=True)
            async with engine.connect() as connection:
                connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text("VACUUM ANALYZE history_requests"))
            queries = HistoryQueries(engine)
            user = Caller("tenant-0", "user-50", "member")
            admin = Caller("tenant-0", "admin", "admin")
            page = await queries.list_requests(admin, limit=20)
            deep_cursor = page.next_cursor
            for _ in range(50):  # 1,000 rows down
                deep_cursor = (
                    await queries.list_requests(admin, limit=20, cursor=deep_cursor)
                ).next_cursor
            week = now - timedelta(days=7)
            month = now - timedelta(days=30)
            cases = [
                ("list: user, first page", lambda: queries.list_requests(user, limit=20)),
                ("list: admin (tenant), first page", lambda: queries.list_requests(admin, limit=20)),
                (
                    "list: admin, page after 1,000 rows",
                    lambda: queries.list_requests(admin, limit=20, cursor=deep_cursor),
                ),
                (
                    "list: admin, status=failed",
                    lambda: queries.list_requests(
                        admin, limit=20, filters=HistoryFilters(statuses=("failed",))
                    ),
                ),
                (
                    "list: admin, status=cancelled (rare)",
                    lambda: queries.list_requests(
                        admin, limit=20, filters=HistoryFilters(statuses=("cancelled",))
                    ),
                ),
                (
                    "list: admin, model + last 7 days",
                    lambda: queries.list_requests(
                        admin,
                        limit=20,
                        filters=HistoryFilters(model="sim-small", since=week),
                    ),
                ),
                (
                    "list: admin, api_key_id",
                    lambda: queries.list_requests(
                        admin, limit=20, filters=HistoryFilters(api_key_id="key-50")
                    ),
                ),
                (
                    "list: admin, model that matches nothing",
                    lambda: queries.list_requests(
                        admin, limit=20, filters=HistoryFilters(model="no-such-model")
                    ),
                ),
                ("jobs: user, first page", lambda: queries.list_jobs(user, limit=20)),
                (
                    "usage: user, by day, 30 days",
                    lambda: queries.usage(
                        UsageQuery(since=month, until=now, tenant="tenant-0", user_id="user-50")
                    ),
                ),
                (
                    "usage: tenant, by day, 30 days",
                    lambda: queries.usage(UsageQuery(since=month, until=now, tenant="tenant-0")),
                ),
                (
                    "usage: tenant, by day and model, 30 days",
                    lambda: queries.usage(
                        UsageQuery(
                            since=month, until=now, tenant="tenant-0", dimensions=("model",)
                        )
                    ),
                ),
                (
                    "usage: tenant, by hour, 7 days",
                    lambda: queries.usage(
                        UsageQuery(since=week, until=now, tenant="tenant-0", bucket="hour")
                    ),
                ),
                (
                    "usage: tenant, by user, 30 days",
                    lambda: queries.usage(
                        UsageQuery(
                            since=month,
                            until=now,
                            tenant="tenant-0",
                            bucket=None,
                            dimensions=("user",),
                        )
                    ),
                ),
                (
                    "usage: every tenant (CLI), by day and tenant, 30 days",
                    lambda: queries.usage(
                        UsageQuery(since=month, until=now, dimensions=("tenant",))
                    ),
                ),
            ]
            lines += [
                f"{rows:,} rows in history_requests (10 tenants x 100 users, 30 days); "
                f"median and worst of {repeats} runs.",
                "",
                "| query | median ms | worst ms | rows |",
                "|---|---:|---:|---:|",
            ]
            for name, run in cases:
                await run()  # warm
                timings = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    result = await run()
                    timings.append((time.perf_counter() - started) * 1000)
                count = len(result.items) if hasattr(result, "items") else len(result)
                lines.append(
                    f"| {name} | {statistics.median(timings):.1f} | {max(timings):.1f} | {count} |"
                )
                print(lines[-1], flush=True)
        finally:
            await engine.dispose()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows for the query bench")
    parser.add_argument("--requests", type=int, default=10_000, help="requests for throughput")
    parser.add_argument("--batches", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-recorder", action="store_true")
    parser.add_argument("--skip-kafka", action="store_true")
    parser.add_argument("--skip-queries", action="store_true")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    database = os.environ.get("DATABASE_URL", DEFAULT_DATABASE)
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")

    sections: list[str] = []
    if not args.skip_recorder:
        print("EventRecorder.record throughput", flush=True)
        sections += ["### Persisting events (EventRecorder.record)", ""]
        sections += bench_recorder(database, args.requests, args.batches) + [""]
    if not args.skip_kafka:
        print("history service consuming a Kafka backlog into PostgreSQL", flush=True)
        sections += ["### History service: Kafka backlog into PostgreSQL", ""]
        sections += asyncio.run(kafka_catch_up(database, servers, args.requests)) + [""]
    if not args.skip_queries:
        print(f"queries over {args.rows:,} rows", flush=True)
        sections += ["### History and usage queries (PostgreSQL)", ""]
        sections += asyncio.run(bench_queries(database, args.rows, args.repeats)) + [""]
    report = "\n".join(sections)
    results = Path(__file__).resolve().parents[2] / "bench-results"
    results.mkdir(exist_ok=True)
    (results / "history.md").write_text(report)
    print()
    print(report)


if __name__ == "__main__":
    sys.exit(main())
