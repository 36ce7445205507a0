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
   `INSERT ... SELECT generate_series`, 10 tenants of 100 users each, over 30 days;
   `--tenants 1` puts them all in one tenant, the worst case for a tenant's usage):
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

import structlog
from benchkit import write_results

from switchyard.common.db import upgrade
from switchyard.common.events import (
    ChatCompleted,
    ChatCompletedData,
    ChatRequestData,
    ChatRequested,
    ClientAPI,
    TerminalStatus,
    TokenUsage,
    UsageData,
    UsageRecorded,
    new_id,
)
from switchyard.common.testing.infra import temporary_database, unique_prefix
from switchyard.history import rollup
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
            api=ClientAPI.OPENAI_CHAT_COMPLETIONS,
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
            api=ClientAPI.OPENAI_CHAT_COMPLETIONS,
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


def interleaved(requests: int, batch: int, *, spread: bool = False) -> list:
    """Events as a consumer of three topics sees them. Together: a batch holds the
    requests, replies and usage records of the same requests (each request's row is
    written once per batch). Spread: a request's reply and usage arrive one and two
    batches after it (three writes of its row), as when replies lag behind requests."""
    now = datetime.now(UTC)
    per_request = [request_events(i, now + timedelta(milliseconds=i)) for i in range(requests)]
    step = max(1, batch // 3)
    windows = [per_request[start : start + step] for start in range(0, requests, step)]
    stream: list = []
    for index in range(len(windows) + (2 if spread else 0)):
        for position in range(3):
            source = index - position if spread else index
            if 0 <= source < len(windows):
                stream += [events[position] for events in windows[source]]
    return stream


# -- 1. the recorder alone -------------------------------------------------------------


async def recorder_throughput(
    url: str, requests: int, batch: int, spread: bool = False
) -> tuple[float, float]:
    upgrade(MIGRATIONS_DIR, url, VERSION_TABLE)
    engine = history_engine(url)
    try:
        recorder = EventRecorder(engine)
        stream = interleaved(requests, batch, spread=spread)
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
        "| store | batch | a request's 3 events | events/s | CPU ms per request (3 events) |",
        "|---|---:|---|---:|---:|",
    ]
    for batch in batches:
        for spread in (False, True):
            arrival = "in 3 batches" if spread else "in one batch"
            with tempfile.TemporaryDirectory() as tmp:
                rate, cpu = asyncio.run(
                    recorder_throughput(
                        f"sqlite+aiosqlite:///{tmp}/history.db", requests, batch, spread
                    )
                )
            lines.append(f"| SQLite | {batch} | {arrival} | {rate:,.0f} | {cpu:.3f} |")
            print(lines[-1], flush=True)
            with temporary_database(database, prefix="sybenchrec") as url:
                rate, cpu = asyncio.run(recorder_throughput(url, requests, batch, spread))
            lines.append(f"| PostgreSQL | {batch} | {arrival} | {rate:,.0f} | {cpu:.3f} |")
            print(lines[-1], flush=True)
    return lines


# -- 2. the service consuming from Kafka -------------------------------------------------


async def kafka_catch_up(database: str, servers: str, requests: int) -> list[str]:
    from aiokafka import AIOKafkaProducer
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
        lags: list[int] = []
        cpu_started = time.process_time()
        started = time.perf_counter()
        first_at, first_count = None, 0
        try:
            async with app.router.lifespan_context(app):
                while True:
                    async with engine.connect() as connection:
                        stored = (
                            await connection.execute(select(func.count()).select_from(events_table))
                        ).scalar_one()
                    now = time.perf_counter()
                    if first_at is None and stored > 0:
                        first_at, first_count = now, stored
                    lags.append(await history_lag(servers, prefix, settings.group))
                    if stored >= total:
                        break
                    if now - started > 600:
                        raise RuntimeError(f"only {stored} of {total} events after 600 s")
                    await asyncio.sleep(0.25)
            elapsed = time.perf_counter() - started
            steady = (total - first_count) / (now - first_at) if first_at and now > first_at else 0
            cpu = time.process_time() - cpu_started
        finally:
            await engine.dispose()
            await delete_topics(servers, [name for name, _ in topics.all()])
    lines += [
        "| events | seconds (incl. start-up) | events/s sustained | history CPU ms/request | "
        "consumer lag samples (every 0.25 s) |",
        "|---:|---:|---:|---:|---|",
        f"| {total:,} | {elapsed:.1f} | {steady:,.0f} | {cpu / (total / 3) * 1000:.2f} | "
        f"{', '.join(f'{lag:,}' for lag in lags[:: max(1, len(lags) // 10)])} |",
    ]
    print(lines[-1], flush=True)
    return lines


async def history_lag(servers: str, topic_prefix: str, group: str = "history") -> int:
    """Events on the topics history consumes that its consumer group has not committed yet
    (its consumer lag). Usable during any benchmark of a running deployment."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.structs import TopicPartition

    from switchyard.common.kafka_admin import list_topics
    from switchyard.common.topics import Topics

    topics = Topics(topic_prefix)
    counts = await list_topics(servers, topic_prefix)
    partitions = [
        TopicPartition(name, p)
        for name in (
            topics.requests_interactive,
            topics.requests_batch,
            topics.replies,
            topics.usage,
            topics.auth_events,
        )
        for p in range(counts.get(name, 0))
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=servers)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
        await admin.close()
    return sum(
        end - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0)
        for tp, end in ends.items()
    )


# -- 3. queries over a million rows ------------------------------------------------------

GENERATE = """
INSERT INTO history_requests (request_id, tenant, user_id, api_key_id, model, api, priority,
    status, request_body, response, error, provider, deployment, input_tokens, output_tokens,
    cost_usd, latency_ms, created_at, completed_at, deadline)
SELECT md5(i::text),
       'tenant-' || (i % :tenants),
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
       created, created + interval '300 milliseconds', created + interval '120 seconds'
FROM generate_series(1, :rows) AS i,
     LATERAL (SELECT :now - (CAST(:span AS float8) * i / :rows) * interval '1 second') AS t(created)
"""


MARK_ALL_DIRTY = """
INSERT INTO history_usage_dirty (tenant, hour, marked_at)
SELECT DISTINCT tenant, date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       now() - interval '1 hour'
FROM history_requests
ON CONFLICT DO NOTHING
"""


async def bench_queries(database: str, rows: int, repeats: int, tenants: int = 10) -> list[str]:
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
                    text(GENERATE),
                    {"now": now, "span": span_s, "rows": rows, "tenants": tenants},
                )
            print(f"  generated {rows:,} rows in {time.perf_counter() - started:.1f} s", flush=True)
            async with engine.connect() as connection:
                connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text("VACUUM ANALYZE history_requests"))
            # Rows inserted behind the recorder's back: mark their hours as it would have,
            # and let the rollup compute them (what the service's sweeper does).
            async with engine.begin() as connection:
                await connection.execute(text(MARK_ALL_DIRTY))
            started = time.perf_counter()
            hours = await rollup.refresh(engine, settle=timedelta(0), max_hours=10**9)
            rollup_s = time.perf_counter() - started
            print(f"  rollup of {hours:,} tenant-hours computed in {rollup_s:.1f} s", flush=True)
            # Live traffic keeps the last two hours of every tenant dirty: read from requests.
            async with engine.begin() as connection:
                await rollup.mark_dirty(
                    connection,
                    "postgresql",
                    [
                        (f"tenant-{index}", now - timedelta(hours=back))
                        for index in range(tenants)
                        for back in (0, 1)
                    ],
                )
            async with engine.connect() as connection:
                connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text("VACUUM ANALYZE history_usage_hourly"))
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
                (
                    "list: admin (tenant), first page",
                    lambda: queries.list_requests(admin, limit=20),
                ),
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
                        UsageQuery(since=month, until=now, tenant="tenant-0", dimensions=("model",))
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
                f"{rows:,} rows in history_requests ({tenants} tenant(s), 1,000 users, 30 days); "
                f"median and worst of {repeats} runs. Usage rollup: {hours:,} tenant-hours "
                f"computed in {rollup_s:.1f} s; the last two hours of each tenant are dirty "
                "(read from the requests, as under live traffic).",
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
    parser.add_argument("--batches", type=int, nargs="+", default=[1000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--tenants", type=int, default=10, help="tenants sharing the rows (1: the worst case)"
    )
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
        sections += asyncio.run(bench_queries(database, args.rows, args.repeats, args.tenants)) + [
            ""
        ]
    write_results("history.md", "\n".join(sections))


if __name__ == "__main__":
    sys.exit(main())
