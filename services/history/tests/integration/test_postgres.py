"""The history store on a real PostgreSQL server: migrations both ways (version 1 rows
carried over to event contract version 2, requests given their teams, and the schema
they build equal to the models'), exactly-once
recording under redelivery, any batching and concurrent consumers, the queries' SQL
(time buckets, filters), the Idempotency-Key store and webhook claims under concurrency."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import func, inspect, select

from switchyard.common.db import downgrade, sync_url, upgrade
from switchyard.history.bootstrap import history_engine
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE
from switchyard.history.handlers import EventRecorder
from switchyard.history.models import events_table, requests_table
from switchyard.history.queries import Caller, HistoryQueries

pytestmark = pytest.mark.integration


def _tables(url: str) -> set[str]:
    engine = create_sync_engine(sync_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_create_and_drop_the_tables(postgres_url):
    upgrade(MIGRATIONS_DIR, postgres_url, VERSION_TABLE)
    engine = create_sync_engine(sync_url(postgres_url))
    try:
        inspector = inspect(engine)
        assert {"history_events", "history_requests", VERSION_TABLE} <= set(
            inspector.get_table_names()
        )
        payload_type = {c["name"]: c["type"] for c in inspector.get_columns("history_events")}[
            "payload"
        ]
        assert payload_type.__class__.__name__ == "JSON"  # kept as received (0002)
        index_names = {index["name"] for index in inspector.get_indexes("history_requests")}
        assert {
            "ix_history_requests_tenant_user_created",
            "ix_history_requests_tenant_created",
            "ix_history_requests_tenant_status_created",
            "ix_history_requests_pending_deadline",
            "ix_history_requests_created_brin",
        } <= index_names
        assert {
            "history_webhooks",
            "history_tenant_settings",
            "history_idempotency_keys",
        } <= set(inspector.get_table_names())
    finally:
        engine.dispose()

    downgrade(MIGRATIONS_DIR, postgres_url, VERSION_TABLE, "0001")
    assert "history_webhooks" not in _tables(postgres_url)
    upgrade(MIGRATIONS_DIR, postgres_url, VERSION_TABLE)
    downgrade(MIGRATIONS_DIR, postgres_url, VERSION_TABLE, "base")

    assert not {"history_events", "history_requests"} & _tables(postgres_url)


async def test_version_1_rows_migrate_to_contract_version_2_and_back(
    postgres_url, events, v1_migration_check
):
    await v1_migration_check(postgres_url, events)


async def test_requests_recorded_before_teams_get_their_team_from_the_stored_events(
    postgres_url, events, teams_migration_check
):
    await teams_migration_check(postgres_url, events)


def test_the_migrations_build_exactly_the_schema_of_the_models(postgres_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from switchyard.history.models import Base

    upgrade(MIGRATIONS_DIR, postgres_url, VERSION_TABLE)
    engine = create_sync_engine(sync_url(postgres_url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    # Indexes only the migrations create (BRIN, for the purge) are not in the models.
    differences = [
        difference
        for difference in differences
        if not (difference[0] == "remove_index" and difference[1].name.endswith("_brin"))
    ]
    assert differences == []


@pytest.fixture
async def engine(postgres_url):
    upgrade(MIGRATIONS_DIR, postgres_url, VERSION_TABLE)
    engine = history_engine(postgres_url)
    yield engine
    await engine.dispose()


async def _snapshot(engine) -> tuple[dict, int]:
    async with engine.connect() as connection:
        rows = (await connection.execute(select(requests_table))).mappings().all()
        count = (
            await connection.execute(select(func.count()).select_from(events_table))
        ).scalar_one()
    return {row["request_id"]: dict(row) for row in rows}, count


async def test_replaying_everything_twice_changes_nothing(engine, events):
    recorder = EventRecorder(engine)
    done, failed = events.requested(), events.requested(user_id="bob")
    history = [
        events.completed(done),
        done,
        events.usage(done),
        failed,
        events.failed(failed),
        events.chunk(done),
    ]
    await recorder.record(history)
    rows, count = await _snapshot(engine)

    await recorder.record(history)
    await recorder.record(list(reversed(history)) + history)

    assert await _snapshot(engine) == (rows, count)
    assert count == 5  # the stream chunk is not stored
    assert rows[done.request_id]["status"] == "completed"
    assert rows[done.request_id]["cost_usd"] == pytest.approx(0.0021)
    assert rows[done.request_id]["request_body"] == done.data.body
    assert rows[failed.request_id]["status"] == "failed"


async def test_concurrent_consumers_agree_on_one_terminal_state(engine, events):
    # Two history replicas consume different topics; request, reply and a late failure of
    # the same requests reach the database at the same time.
    requests = [events.requested(f"req-{index:03d}") for index in range(50)]
    replies = [events.completed(request) for request in requests]
    failures = [events.failed(request) for request in requests]
    recorders = [EventRecorder(engine) for _ in range(3)]

    await asyncio.gather(
        recorders[0].record(requests), recorders[1].record(replies), recorders[2].record(failures)
    )

    rows, count = await _snapshot(engine)
    # Every request and its first outcome are stored; a failure recorded after its request's
    # completion committed is not (one outcome per request), one that raced it may be: how
    # many depends on how the three transactions overlapped.
    assert 100 <= count <= 150
    assert len(rows) == 50
    assert all(row["request_body"] is not None for row in rows.values())
    for row in rows.values():
        # Whichever terminal event committed first wins, with its own details only.
        assert row["status"] in {"completed", "failed"}
        assert (row["response"] is not None) == (row["status"] == "completed")
        assert (row["error"] is not None) == (row["status"] == "failed")


async def _pages(engine, limit: int) -> list[list[str]]:
    """Alice's requests, page after page, as request ids."""
    queries = HistoryQueries(engine)
    caller = Caller(tenant="acme", user_id="alice", role="user")
    pages, cursor = [], None
    while True:
        page = await queries.list_requests(caller, limit=limit, cursor=cursor)
        pages.append([row["request_id"] for row in page.items])
        if (cursor := page.next_cursor) is None:
            return pages


async def test_pagination_on_postgres_neither_skips_nor_repeats(engine, events):
    shared_instant = events.tick()
    requests = [events.requested(f"req-{index:02d}") for index in range(7)]
    requests += [events.requested(f"same-{index}", at=shared_instant) for index in range(4)]
    await EventRecorder(engine).record(requests)
    seen = [item for page in await _pages(engine, limit=3) for item in page]

    expected = sorted(
        requests, key=lambda request: (request.time, request.request_id), reverse=True
    )
    assert seen == [request.request_id for request in expected]


async def test_a_page_on_postgres_ends_before_its_documents_pass_the_byte_bound(
    engine, events, monkeypatch
):
    """The bound counts a document's JSON text, not its compressed storage: a repetitive
    prompt that PostgreSQL compresses a hundredfold still counts at its full size."""
    from switchyard.history import queries as history_queries

    monkeypatch.setattr(history_queries, "PAGE_BYTES", 100_000)
    requests = [events.requested(f"rep-{index}", prompt="a" * 40_000) for index in range(5)]
    await EventRecorder(engine).record(requests)
    assert await _pages(engine, limit=100) == [["rep-4", "rep-3"], ["rep-2", "rep-1"], ["rep-0"]]


async def test_the_purge_on_postgres_keeps_another_tenants_events_under_a_requests_id(
    engine, events
):
    from datetime import UTC, datetime

    from switchyard.history.sweeper import purge

    async def stored() -> list[str]:
        async with engine.connect() as connection:
            rows = await connection.execute(select(events_table.c.tenant))
            return sorted(tenant for (tenant,) in rows)

    long_ago = datetime(2024, 1, 1, tzinfo=UTC)
    old = events.requested(tenant="short", at=long_ago)
    theirs = events.usage(old).model_copy(update={"tenant": "long", "time": long_ago})
    await EventRecorder(engine).record([old, events.completed(old), theirs])
    cutoff = datetime(2025, 1, 1, tzinfo=UTC)

    assert (await purge(engine, cutoff, tenant="short", dry_run=True)).events == 2
    assert (await purge(engine, cutoff, tenant="short")).events == 2
    assert await stored() == ["long"]


async def test_documents_read_from_postgres_come_back_exactly_as_stored(engine, events):
    """History reads a request's documents as the text of their JSONB values and decodes
    them itself (a large one in a worker thread): integers beyond 64 bits, floats,
    escapes and characters outside the BMP come back as stored."""
    from switchyard.common.offloop import OFF_LOOP_BYTES

    request = events.requested("exact-pg", prompt="\u00e9\U0001f680 " + "x" * OFF_LOOP_BYTES)
    body = {**request.data.body, "seed": 2**70, "temperature": 0.1, "stop": ['a\\"b', "\n"]}
    request = request.model_copy(update={"data": request.data.model_copy(update={"body": body})})
    await EventRecorder(engine).record([request, events.completed(request)])
    queries = HistoryQueries(engine)
    caller = Caller(tenant="acme", user_id="alice", role="user")

    row = await queries.get_request(caller, "exact-pg")
    assert row is not None and row["request_body"] == body
    assert row["response"]["choices"][0]["message"]["content"] == "Hi there!"
    assert row["input_items"] is None and row["error"] is None
    [listed] = (await queries.list_requests(caller, limit=5)).items
    assert listed["request_body"] == body
