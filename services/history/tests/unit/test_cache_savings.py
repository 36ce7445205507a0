"""What a response cache hit saved is the cost of the request whose answer it reused,
whatever order the hit's events and that request's usage are recorded in (before it, in
the same batch, in a later one, after a restart), counted once, in the usage report and
in the usage rollup alike; and a tenant switching to metadata-only storage keeps no
cached answer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select

from switchyard.common.events import (
    ChatCompleted,
    ChatCompletedData,
    ChatRequested,
    Event,
    TerminalStatus,
    TokenUsage,
    UsageData,
    UsageRecorded,
    new_id,
)
from switchyard.common.testing.infra import async_wait_until
from switchyard.history import rollup
from switchyard.history.cache import (
    HIT_DEPLOYMENT,
    HIT_PROVIDER,
    PENDING_MAX_AGE,
    CacheStore,
    resolve_pending_hits,
)
from switchyard.history.handlers import EventRecorder
from switchyard.history.models import cache_hit_pending_table, usage_dirty_table
from switchyard.history.queries import UsageQuery
from switchyard.history.tenants import TenantSettingsStore

KEY = "b" * 64
SOURCE_COST = 0.0021
DAY = UsageQuery(
    since=datetime(2025, 3, 1, tzinfo=UTC),
    until=datetime(2025, 3, 2, tzinfo=UTC),
    bucket="day",
    tenant="acme",
)


def hit_events(
    source: ChatRequested, reply: ChatCompleted, at: datetime, *, gateway_saved: float = 0.0
) -> list[Event]:
    """A hit's events as the gateway publishes them: its request, the stored reply
    (provider `switchyard`, deployment `response-cache`), and a usage record with no cost
    and the saving the gateway knew when it answered (0 if the source's cost was not
    recorded yet)."""
    hit_id = f"hit-{source.request_id}"
    request = source.model_copy(update={"id": new_id(), "request_id": hit_id, "time": at})
    envelope = {"source": "gateway", "tenant": source.tenant, "request_id": hit_id}
    completed = ChatCompleted(
        **envelope,
        time=at,
        data=ChatCompletedData(
            api=source.data.api,
            response=reply.data.response,
            provider=HIT_PROVIDER,
            deployment=HIT_DEPLOYMENT,
            usage=TokenUsage(),
            latency_ms=0,
        ),
    )
    usage = UsageRecorded(
        **envelope,
        time=at,
        data=UsageData(
            api=source.data.api,
            model=source.data.model,
            provider=HIT_PROVIDER,
            deployment=HIT_DEPLOYMENT,
            user_id=source.data.user_id,
            api_key_id=source.data.api_key_id,
            status=TerminalStatus.COMPLETED,
            usage=TokenUsage(),
            cost_usd=0,
            upstream_calls=0,
            cache_hit=True,
            saved_cost_usd=gateway_saved,
        ),
    )
    return [request, completed, usage]


async def store_answer(engine, source: ChatRequested, reply: ChatCompleted) -> None:
    """The gateway stores the miss's answer once it has been sent."""
    await CacheStore(engine).put(
        source.tenant,
        KEY,
        api=source.data.api.value,
        model=source.data.model,
        response=reply.data.response,
        stream_events=None,
        source_request_id=source.request_id,
        ttl_s=3600,
        now=datetime.now(UTC),
    )


async def sweep_rollup(engine) -> None:
    """The sweeper's rollup step (`Sweeper.sweep_once`), with no settle time: hits whose
    source's cost is now recorded get their hours marked, then dirty hours are recomputed."""
    await resolve_pending_hits(engine)
    await rollup.refresh(engine, settle=timedelta(0))


async def pending_hits(engine) -> list[str]:
    """The hit request ids waiting for their source's cost."""
    async with engine.connect() as connection:
        rows = await connection.execute(select(cache_hit_pending_table.c.hit_request_id))
    return sorted(rows.scalars())


# Each order: batches of (source request, source reply, source usage, hit's three events).
Order = Callable[[Any, Any, Any, list[Event]], list[list[Event]]]
ORDERS: dict[str, Order] = {
    "source usage first": lambda req, rep, use, hit: [[req, rep, use], hit],
    "hit before the source usage, in a later batch": lambda req, rep, use, hit: [
        [req, rep],
        hit,
        [use],
    ],
    "hit and source usage in one batch": lambda req, rep, use, hit: [[req, rep], [*hit, use]],
    "source usage between the hit's events": lambda req, rep, use, hit: [
        [req, rep],
        [hit[2]],
        [use],
        hit[:2],
    ],
    "hit before any event of its source": lambda req, rep, use, hit: [hit, [req, rep, use]],
    "hit usage alone, then everything else": lambda req, rep, use, hit: [
        [hit[2]],
        [req, rep],
        [use],
        hit[:2],
    ],
}


@pytest.mark.parametrize("order", ORDERS, ids=list(ORDERS))
async def test_a_hit_saves_its_source_cost_in_every_order(engine, recorder, queries, events, order):
    source = events.requested(prompt="Same question")
    reply = events.completed(source)
    usage = events.usage(source, cost_usd=SOURCE_COST)
    await store_answer(engine, source, reply)
    # In another hour than its source: the rollup must recompute the hit's hour.
    hit = hit_events(source, reply, source.time + timedelta(minutes=90))

    for batch in ORDERS[order](source, reply, usage, hit):
        await recorder.record(batch)
        # The rollup catches up after every batch, as the sweeper would.
        await sweep_rollup(engine)

    [row] = await queries.usage(DAY)
    assert (row.requests, row.cache_hits) == (2, 1)
    assert row.cache_saved_usd == pytest.approx(SOURCE_COST)
    assert row.cost_usd == pytest.approx(SOURCE_COST)  # the hit itself cost nothing
    async with engine.connect() as connection:
        dirty = (
            await connection.execute(select(func.count()).select_from(usage_dirty_table))
        ).scalar()
    assert dirty == 0  # the report above was read from the rollup alone


async def test_redelivery_and_a_restart_count_the_saving_once(engine, recorder, queries, events):
    source = events.requested(prompt="Same question")
    reply = events.completed(source)
    usage = events.usage(source, cost_usd=SOURCE_COST)
    await store_answer(engine, source, reply)
    hit = hit_events(source, reply, source.time + timedelta(seconds=1))
    second = hit_events(source, reply, source.time + timedelta(seconds=2))
    second = [event.model_copy(update={"id": new_id(), "request_id": "hit-2"}) for event in second]

    await recorder.record([source, reply])
    await recorder.record([*hit, *second])
    await recorder.record([*hit, *second])  # redelivered
    restarted = EventRecorder(engine)  # a new process: only the database remembers the hits
    await restarted.record([usage])
    await restarted.record([usage, *hit])
    await sweep_rollup(engine)

    [row] = await queries.usage(DAY)
    assert (row.requests, row.cache_hits) == (3, 2)
    assert row.cache_saved_usd == pytest.approx(2 * SOURCE_COST)


async def test_a_hit_whose_entry_is_gone_keeps_the_saving_the_gateway_reported(
    engine, recorder, queries, events
):
    source = events.requested(prompt="Same question")
    reply = events.completed(source)
    await store_answer(engine, source, reply)
    hit = hit_events(source, reply, source.time + timedelta(seconds=1), gateway_saved=0.5)
    await CacheStore(engine).purge(tenant="acme")  # purged before the hit was recorded

    await recorder.record([source, reply, events.usage(source, cost_usd=SOURCE_COST), *hit])

    [row] = await queries.usage(DAY)
    assert row.cache_hits == 1
    assert row.cache_saved_usd == pytest.approx(0.5)


async def test_a_batch_without_cache_hits_runs_no_cache_statement(
    engine, recorder, queries, events
):
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    source = events.requested(prompt="Same question")
    reply = events.completed(source)
    await store_answer(engine, source, reply)  # the cache is in use, just not by this batch
    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        await recorder.record([source, reply, events.usage(source, cost_usd=SOURCE_COST)])
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)

    assert statements  # the batch was recorded
    # No statement touches the cache's tables or looks for hits (the projection's upsert,
    # an INSERT naming every column of the row, is no such look-up): no link, no re-mark,
    # nothing pending.
    cache_work = [
        statement
        for statement in statements
        if "history_cache" in statement
        or (
            statement.lstrip().startswith(("SELECT", "UPDATE", "DELETE"))
            and "cache_source_request_id" in statement
        )
    ]
    assert cache_work == []
    assert await pending_hits(engine) == []
    [row] = await queries.usage(DAY)
    assert (row.requests, row.cost_usd) == (1, pytest.approx(SOURCE_COST))


async def test_a_hit_waits_for_its_source_cost_and_stale_waits_are_dropped(
    engine, recorder, queries, events
):
    answered = events.requested(prompt="Same question")
    lost = events.requested(prompt="Another question")
    answered_reply, lost_reply = events.completed(answered), events.completed(lost)
    await store_answer(engine, answered, answered_reply)
    await CacheStore(engine).put(
        "acme",
        "c" * 64,
        api=lost.data.api.value,
        model=lost.data.model,
        response=lost_reply.data.response,
        stream_events=None,
        source_request_id=lost.request_id,
        ttl_s=3600,
        now=datetime.now(UTC),
    )
    later = timedelta(minutes=90)
    first_hit = hit_events(answered, answered_reply, answered.time + later)
    second_hit = hit_events(lost, lost_reply, lost.time + later)
    # Both hits are recorded before their sources' usage: both wait.
    await recorder.record([answered, answered_reply, lost, lost_reply, *first_hit, *second_hit])
    assert await pending_hits(engine) == sorted([first_hit[0].request_id, second_hit[0].request_id])
    await sweep_rollup(engine)  # nothing to resolve yet: both still wait
    assert len(await pending_hits(engine)) == 2

    # One source's usage arrives; the other's never does.
    await recorder.record([events.usage(answered, cost_usd=SOURCE_COST)])
    await sweep_rollup(engine)
    assert await pending_hits(engine) == [second_hit[0].request_id]
    [row] = await queries.usage(DAY)
    assert row.cache_saved_usd == pytest.approx(SOURCE_COST)  # from the rollup, refreshed

    # Still waiting within the bound; dropped beyond it.
    soon = datetime.now(UTC) + PENDING_MAX_AGE - timedelta(minutes=1)
    assert await resolve_pending_hits(engine, now=soon) == 0
    assert await pending_hits(engine) == [second_hit[0].request_id]
    assert await resolve_pending_hits(engine, now=soon + timedelta(minutes=2)) == 0
    assert await pending_hits(engine) == []


async def test_usage_api_reports_a_saving_learnt_after_the_hit(service, events):
    source = events.requested(prompt="Same question")
    reply = events.completed(source)
    await service.publish(source, reply)
    await service.wait_for(source.request_id, "completed")
    stored = await service.client.put(
        f"/internal/v1/cache/entries/{KEY}",
        json={
            "api": source.data.api.value,
            "model": source.data.model,
            "response": reply.data.response,
            "source_request_id": source.request_id,
            "ttl_s": 600,
        },
        headers=service.headers(),
    )
    assert stored.json()["stored"] is True
    hit = hit_events(source, reply, source.time + timedelta(seconds=1))
    await service.publish(*hit)
    await service.wait_for(hit[0].request_id, "completed")

    async def report() -> dict:
        response = await service.client.get(
            "/v1/usage",
            params={"since": "2025-01-01", "until": "2026-01-01"},
            headers=service.headers(),
        )
        return response.json()["totals"]

    assert (await report())["cache_saved_usd"] == 0  # the source's cost is not known yet
    await service.publish(events.usage(source, cost_usd=SOURCE_COST))

    async def saved() -> dict | None:
        totals = await report()
        return totals if totals["cache_saved_usd"] else None

    totals = await async_wait_until(saved, timeout=10, message="the saving to be reported")
    assert totals is not None
    assert (totals["cache_hits"], totals["cache_saved_usd"]) == (1, SOURCE_COST)


# -- metadata-only tenants keep nothing cached --------------------------------------------


async def test_switching_to_metadata_only_deletes_the_tenants_cached_answers(engine, events):
    source = events.requested(prompt="Same question")
    reply = events.completed(source)
    await store_answer(engine, source, reply)
    await store_answer(engine, source.model_copy(update={"tenant": "globex"}), reply)
    store, tenants = CacheStore(engine), TenantSettingsStore(engine)

    await tenants.update("acme", cache_enabled=True)  # other settings: entries stay
    assert await store.get("acme", KEY) is not None
    await tenants.update("acme", store_content=False)

    assert await store.get("acme", KEY) is None
    assert await store.get("globex", KEY) is not None  # another tenant's are its own


async def test_the_settings_api_switch_leaves_nothing_to_serve(service, events):
    headers = service.headers()
    url = f"/internal/v1/cache/entries/{KEY}"
    entry = {
        "api": "openai.chat_completions",
        "model": "sim-small",
        "response": {"object": "chat.completion", "choices": []},
        "source_request_id": "r1",
        "ttl_s": 600,
    }
    assert (await service.client.put(url, json=entry, headers=headers)).json()["stored"] is True

    switched = await service.client.put(
        "/v1/history/settings",
        json={"store_content": False},
        headers=service.headers(role="admin"),
    )

    assert switched.status_code == 200
    missing = await service.client.get(url, headers=headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "cache_miss"
