"""History features on a real PostgreSQL server: the batch writer (json_to_recordset)
against any batching, text PostgreSQL cannot hold, metadata-only storage, usage buckets
(date_trunc), the Idempotency-Key store and webhook claims with concurrent callers."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select, text

from switchyard.common import exactjson
from switchyard.common.db import upgrade
from switchyard.common.events import Priority
from switchyard.history.bootstrap import history_engine
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE
from switchyard.history.handlers import EventRecorder
from switchyard.history.idempotency import ClaimRequest, IdempotencyStore
from switchyard.history.jobs import cancellation_event
from switchyard.history.models import events_table, requests_table
from switchyard.history.queries import Caller, HistoryFilters, HistoryQueries, UsageQuery
from switchyard.history.tenants import TenantSettingsStore
from switchyard.history.usage import report_json
from switchyard.history.webhooks import WebhookDispatcher, WebhookPolicy

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(postgres_url):
    upgrade(MIGRATIONS_DIR, postgres_url, VERSION_TABLE)
    engine = history_engine(postgres_url)
    yield engine
    await engine.dispose()


async def _rows(engine) -> dict:
    async with engine.connect() as connection:
        rows = (await connection.execute(select(requests_table))).mappings().all()
    return {row["request_id"]: dict(row) for row in rows}


async def _reset(engine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("TRUNCATE history_requests, history_events"))


async def test_any_batching_gives_the_rows_of_one_event_at_a_time(engine, events):
    generator = random.Random(7)
    stream = []
    for index in range(30):
        request = events.requested(user_id=f"u{index % 4}")
        stream += [request, events.completed(request), events.usage(request)]
        if index % 3 == 0:
            stream.append(events.failed(request))
    generator.shuffle(stream)
    stream += generator.sample(stream, 15)
    recorder = EventRecorder(engine)

    for event in stream:
        await recorder.record([event])
    one_by_one = await _rows(engine)
    await _reset(engine)
    position = 0
    while position < len(stream):
        size = generator.randint(1, 40)
        await recorder.record(stream[position : position + size])
        position += size
    batched = await _rows(engine)

    assert batched == one_by_one
    assert len(batched) == 30


async def test_nul_characters_and_unicode_survive(engine, events):
    recorder = EventRecorder(engine)
    request = events.requested(
        prompt='zero\x00byte, emoji \U0001f680, quote " and \\ backslash, C:\\u0000dir'
    )
    await recorder.record([request, events.completed(request, answer="ok\x00")])

    row = (await _rows(engine))[request.request_id]
    content = row["request_body"]["messages"][0]["content"]
    assert content == 'zero\ufffdbyte, emoji \U0001f680, quote " and \\ backslash, C:\\u0000dir'
    assert row["response"]["choices"][0]["message"]["content"] == "ok\ufffd"


async def test_token_counts_beyond_32_bits_are_recorded(engine, events):
    """An upstream may report more tokens than a 32-bit column holds; the row's write
    failed on them, parking the outcome and usage and leaving the request to expire."""
    recorder = EventRecorder(engine)
    request = events.requested()
    huge = 3_000_000_000
    big = 2**63 - 1
    await recorder.record(
        [
            request,
            events.completed(request, input_tokens=huge, output_tokens=big),
            events.usage(request, input_tokens=huge, output_tokens=big, reasoning_tokens=huge),
        ]
    )

    row = (await _rows(engine))[request.request_id]
    assert row["status"] == "completed"
    assert (row["input_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
        huge,
        big,
        huge,
    )


async def test_metadata_only_on_postgres(engine, events):
    await TenantSettingsStore(engine).update("quiet", store_content=False)
    recorder = EventRecorder(engine)
    request = events.requested(tenant="quiet", prompt="top secret")
    await recorder.record([request, events.completed(request, answer="classified")])

    async with engine.connect() as connection:
        dump = str((await connection.execute(select(events_table.c.payload))).all())
        dump += str((await connection.execute(select(requests_table))).all())
    assert "top secret" not in dump and "classified" not in dump
    assert (await _rows(engine))[request.request_id]["status"] == "completed"


async def test_usage_buckets_and_filters_on_postgres(engine, events):
    recorder = EventRecorder(engine)
    batch = []
    for hour in (1, 2, 26):
        at = datetime(2025, 3, 1, tzinfo=UTC) + timedelta(hours=hour, minutes=30)
        request = events.requested(at=at, model="m-day" if hour < 24 else "m-next")
        batch += [request, events.completed(request), events.usage(request, cost_usd=0.25)]
    await recorder.record(batch)
    queries = HistoryQueries(engine)
    since, until = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 3, 3, tzinfo=UTC)

    by_day = await queries.usage(UsageQuery(since=since, until=until, tenant="acme"))
    by_hour = await queries.usage(
        UsageQuery(since=since, until=until, tenant="acme", bucket="hour", dimensions=("model",))
    )
    filtered = await queries.list_requests(
        Caller("acme", "alice", "user"),
        filters=HistoryFilters(since=since + timedelta(hours=2), model="m-day"),
    )

    assert [(row.bucket.day, row.requests, row.cost_usd) for row in by_day] == [
        (1, 2, 0.5),
        (2, 1, 0.25),
    ]
    assert [(row.bucket.hour, row.groups["model"]) for row in by_hour] == [
        (1, "m-day"),
        (2, "m-day"),
        (2, "m-next"),
    ]
    assert len(filtered.items) == 1


async def test_idempotency_claims_race_to_one_winner_on_postgres(engine):
    stores = [IdempotencyStore(engine) for _ in range(4)]
    claim = ClaimRequest(
        tenant="acme",
        key="same",
        user_id="alice",
        endpoint="/v1/chat/completions",
        fingerprint="a" * 64,
        lease_s=60,
    )
    results = await asyncio.gather(*(stores[i % 4].claim(claim) for i in range(20)))
    assert sorted(result.outcome for result in results) == ["claimed"] + ["in_progress"] * 19


async def test_two_dispatchers_claim_each_webhook_once(engine, events):
    recorder = EventRecorder(engine)
    batch = []
    for _ in range(10):
        job = events.requested(priority=Priority.BATCH, webhook_url="http://127.0.0.1:9/x")
        batch += [job, events.completed(job)]
    await recorder.record(batch)
    tenants = TenantSettingsStore(engine)
    # No per-tenant cap in the way: this checks that no webhook is claimed twice.
    policy = WebhookPolicy(max_attempts=5, lease_s=60, max_per_tenant=10)
    claimed = await asyncio.gather(
        WebhookDispatcher(engine, tenants, policy, batch=10)._claim(),
        WebhookDispatcher(engine, tenants, policy, batch=10)._claim(),
    )
    ids = [row["request_id"] for rows in claimed for row in rows]
    assert len(ids) == len(set(ids)) == 10
    async with engine.connect() as connection:
        attempts = (
            await connection.execute(text("SELECT sum(attempts) FROM history_webhooks"))
        ).scalar_one()
    assert attempts == 10


class _Receiver:
    """A webhook receiver answering 204, keeping (delivery id, event) of each delivery."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, str]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.deliveries.append(
            (request.headers["Switchyard-Webhook-Id"], request.headers["Switchyard-Event"])
        )
        return httpx.Response(204)


async def test_webhooks_follow_replaced_and_early_outcomes_on_postgres(engine, events):
    """The real outcome replacing a delivered expiry goes out under a new id; a job cancelled
    before its request was recorded gets its webhook; a request naming another tenant
    under a job's id gets none."""
    recorder, receiver = EventRecorder(engine), _Receiver()
    url = "https://hooks.example.com/x"
    expired = events.requested(priority=Priority.BATCH, webhook_url=url)
    cancelled = events.requested(priority=Priority.BATCH, webhook_url=url)
    await recorder.record(
        [expired, cancellation_event("acme", cancelled.request_id, by_owner=True)]
    )
    assert await recorder.expire_overdue(datetime.now(UTC)) == 1
    await recorder.record([cancelled])
    forged = events.requested(
        expired.request_id,
        tenant="intruder",
        priority=Priority.BATCH,
        webhook_url="https://x.example/",
    )
    await recorder.record([forged])
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver.handle)) as client:
        hooks = WebhookDispatcher(engine, TenantSettingsStore(engine), WebhookPolicy(), http=client)
        assert await hooks.deliver_due() == 2
        await recorder.record([events.completed(expired)])
        assert await hooks.deliver_due() == 1

    assert sorted(receiver.deliveries) == sorted(
        [
            (f"whd_{expired.request_id}", "job.expired"),
            (f"whd_{cancelled.request_id}", "job.cancelled"),
            (f"whd_{expired.request_id}.1", "job.completed"),
        ]
    )
    async with engine.connect() as connection:
        rows = (
            await connection.execute(text("SELECT tenant, status, revision FROM history_webhooks"))
        ).all()
    assert sorted(tuple(row) for row in rows) == [
        ("acme", "delivered", 0),
        ("acme", "delivered", 1),
    ]


async def test_a_replaced_expiry_holds_its_webhook_until_the_real_outcome_commits(engine, events):
    """While the transaction recording the real outcome is open, no dispatcher claims the
    job's webhook (it would read the expiry still committed, and deliver only that, though
    no attempt had been made): it is claimed afterwards, with the real outcome."""
    recorder = EventRecorder(engine)
    job = events.requested(priority=Priority.BATCH, webhook_url="https://hooks.example.com/x")
    await recorder.record([job])
    assert await recorder.expire_overdue(datetime.now(UTC)) == 1
    hooks = WebhookDispatcher(engine, TenantSettingsStore(engine), WebhookPolicy())

    async with engine.begin() as connection:
        assert await recorder._record_in(connection, [events.completed(job)])
        assert await hooks._claim() == []
    [claimed] = await hooks._claim()

    assert (claimed["status"], claimed["webhook_revision"]) == ("completed", 0)


async def test_a_thousand_requests_cost_few_statements(engine, events):
    recorder = EventRecorder(engine)
    batch = []
    for _ in range(1000):
        request = events.requested()
        batch += [request, events.completed(request), events.usage(request)]
    statements = []

    from sqlalchemy import event as sa_event

    def count(conn, cursor, statement, *args):
        statements.append(statement.split()[0])

    sa_event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        await recorder.record(batch)
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", count)

    # Tenant settings with the outcomes the requests already have (their rows locked); the
    # event store with the projection and the usage rollup's dirty hours (plus BEGIN/COMMIT
    # by the driver).
    assert statements == ["SELECT", "WITH"]
    async with engine.connect() as connection:
        assert (
            await connection.execute(select(func.count()).select_from(events_table))
        ).scalar_one() == 3000


async def test_usage_rollup_matches_the_requests_while_both_are_written(engine, events):
    """Recorders and rollup refreshes running at the same time: reports before and after
    every hour is recomputed are the same."""
    from switchyard.history import rollup

    recorder = EventRecorder(engine)
    queries = HistoryQueries(engine)
    generator = random.Random(3)
    start = datetime(2025, 3, 1, tzinfo=UTC)

    def some_requests(count: int) -> list:
        batch = []
        for _ in range(count):
            at = start + timedelta(minutes=generator.randint(0, 5 * 60))
            request = events.requested(
                at=at, user_id=generator.choice(["a", "b"]), model=generator.choice(["x", "y"])
            )
            batch += [request, events.completed(request), events.usage(request)]
        generator.shuffle(batch)
        return batch

    async def refresh_repeatedly() -> None:
        for _ in range(20):
            await rollup.refresh(engine, settle=timedelta(0))
            await asyncio.sleep(0.01)

    await asyncio.gather(
        refresh_repeatedly(),
        *(recorder.record(some_requests(40)) for _ in range(5)),
    )
    ranges = [
        (start, start + timedelta(days=1)),
        (start + timedelta(minutes=17), start + timedelta(hours=3, minutes=41)),
    ]
    reports = [
        UsageQuery(since=since, until=until, tenant="acme", bucket=bucket, dimensions=dims)
        for since, until in ranges
        for bucket, dims in (("hour", ()), ("day", ("model", "user")), (None, ("model",)))
    ]
    before = [await queries.usage(report) for report in reports]
    await rollup.refresh(engine, settle=timedelta(0))
    async with engine.connect() as connection:
        assert (
            await connection.execute(text("SELECT count(*) FROM history_usage_dirty"))
        ).scalar_one() == 0
    after = [await queries.usage(report) for report in reports]

    assert after == before
    assert sum(row.requests for row in before[0]) == 200


async def test_an_hour_that_cannot_be_rolled_up_holds_back_no_other(engine, events):
    """Two requests of the most tokens the contract allows in one hour overflow the
    rollup's sums: that hour failed every refresh, in the transaction of every other
    tenant's hours, which were never rolled up either. It is put off alone now."""
    from switchyard.history import rollup

    recorder = EventRecorder(engine)
    hour = datetime(2025, 4, 1, 10, tzinfo=UTC)
    big = 2**63 - 1
    batch = []
    for _ in range(2):
        request = events.requested(at=hour, tenant="overflowing")
        batch += [request, events.usage(request, input_tokens=big)]
    for minute in range(3):
        request = events.requested(at=hour + timedelta(minutes=minute), tenant="acme")
        batch += [request, events.completed(request), events.usage(request)]
    await recorder.record(batch)

    await rollup.refresh(engine, settle=timedelta(0))

    async with engine.connect() as connection:
        dirty = (await connection.execute(text("SELECT tenant FROM history_usage_dirty"))).scalars()
        assert list(dirty) == ["overflowing"]  # put off, to be tried again later
    queries = HistoryQueries(engine)
    report = UsageQuery(since=hour, until=hour + timedelta(hours=1), tenant="acme", bucket="hour")
    assert sum(row.requests for row in await queries.usage(report)) == 3
    # Its report, read live, sums beyond 64 bits: written exactly (the API answered 500,
    # orjson refusing the integer).
    overflowing = UsageQuery(since=hour, until=hour + timedelta(hours=1), tenant="overflowing")
    document = exactjson.loads(
        exactjson.dumps(report_json(await queries.usage(overflowing), overflowing))
    )
    assert document["totals"]["input_tokens"] == 2 * big


async def test_latency_percentiles_on_postgres_match_the_python_computation(engine, events):
    from switchyard.history.performance import PerformanceQueries, PerformanceQuery, percentile

    await _reset(engine)
    start = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    latencies = [3.0, 9.0, 27.0, 81.0, 243.0, 729.0]
    batch = []
    for index, latency in enumerate(latencies):
        request = events.requested(at=start + timedelta(minutes=index))
        completed = events.completed(request)
        completed = completed.model_copy(
            update={"data": completed.data.model_copy(update={"latency_ms": latency})}
        )
        batch += [request, completed]
    failed = events.requested(at=start + timedelta(minutes=30))
    batch += [failed, events.failed(failed)]  # a 502: a server error
    refused = events.requested(at=start + timedelta(minutes=31))
    invalid = events.failed(refused)
    invalid = invalid.model_copy(
        update={
            "data": invalid.data.model_copy(
                update={"error": invalid.data.error.model_copy(update={"status": 400})}
            )
        }
    )
    batch += [refused, invalid]  # a 400 the request caused: an error, not a server error
    await EventRecorder(engine).record(batch)
    rows = await PerformanceQueries(engine).performance(
        PerformanceQuery(
            tenant="acme",
            since=start - timedelta(hours=1),
            until=start + timedelta(hours=2),
            bucket="hour",
            dimensions=("model",),
        )
    )
    assert len(rows) == 1
    row = rows[0]
    assert row.bucket == start and row.groups == {"model": "sim-small"}
    assert (row.requests, row.errors, row.server_errors) == (8, 2, 1)
    assert row.latency_ms_p50 == pytest.approx(percentile(latencies, 0.5))
    assert row.latency_ms_p95 == pytest.approx(percentile(latencies, 0.95))


async def test_item_references_are_found_on_postgres(engine):
    from switchyard.common.events import (
        ChatCompleted,
        ChatCompletedData,
        ChatRequestData,
        ChatRequested,
        ClientAPI,
        TokenUsage,
        new_id,
    )
    from switchyard.common.responses import response_id
    from switchyard.history.responses import ResponseStore

    await _reset(engine)
    recorder = EventRecorder(engine)
    batch, outputs = [], []
    start = datetime.now(UTC) - timedelta(minutes=5)
    for turn in range(60):  # more than one page of the search
        at = start + timedelta(seconds=turn)
        request = ChatRequested(
            source="gateway",
            tenant="acme",
            request_id=new_id(),
            time=at,
            data=ChatRequestData(
                api=ClientAPI.OPENAI_RESPONSES,
                model="sim-small",
                body={"model": "sim-small", "input": f"turn {turn}"},
                user_id="alice",
                deadline=at + timedelta(minutes=5),
            ),
        )
        item = {
            "id": f"msg_out_{turn}",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": f"answer {turn}", "annotations": []}],
        }
        outputs.append(item)
        reply = ChatCompleted(
            source="inference",
            tenant="acme",
            request_id=request.request_id,
            data=ChatCompletedData(
                api=ClientAPI.OPENAI_RESPONSES,
                response={
                    "id": response_id(request.request_id, at),
                    "object": "response",
                    "status": "completed",
                    "output": [item],
                },
                provider="openai",
                deployment="simulator",
                usage=TokenUsage(input_tokens=2, output_tokens=2),
                latency_ms=1,
            ),
        )
        batch += [request, reply]
    await recorder.record(batch)
    store = ResponseStore(
        engine, HistoryQueries(engine), TenantSettingsStore(engine), recorder, None
    )

    found = await store.items(Caller("acme", "alice", "member"), ["msg_out_0", "msg_out_59"])
    assert found == {"msg_out_0": outputs[0], "msg_out_59": outputs[59]}
    assert await store.items(Caller("acme", "bob", "member"), ["msg_out_0"]) == {}


async def test_a_key_awaiting_its_requests_outcome_on_postgres(engine, events):
    # The claim row is locked (FOR UPDATE) while the request's row is read and the key
    # claimed anew or answered from it, as on SQLite.
    store = IdempotencyStore(engine)
    recorder = EventRecorder(engine)

    def claim(key: str) -> ClaimRequest:
        return ClaimRequest(
            tenant="acme",
            key=key,
            user_id="alice",
            endpoint="/v1/chat/completions",
            fingerprint="f" * 64,
            lease_s=60,
        )

    done, failed = events.requested(), events.requested()
    for key, request in (("done", done), ("failed", failed)):
        first = await store.claim(claim(key))
        assert await store.await_outcome(
            "acme", key, first.claim_token, request_id=request.request_id, lease_s=60
        )
    assert (await store.claim(claim("done"))).outcome == "in_progress"
    await recorder.record([done, events.completed(done), failed, events.failed(failed)])

    late = await store.claim(claim("done"))
    retries = await asyncio.gather(*(store.claim(claim("failed")) for _ in range(4)))

    assert (late.outcome, late.request_id) == ("answered_late", done.request_id)
    assert sorted(retry.outcome for retry in retries) == ["claimed"] + ["in_progress"] * 3
