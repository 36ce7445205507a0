"""The background upkeep (expiry of unanswered requests, retention purge) and the
Idempotency-Key store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from switchyard.common.bus import BusUnavailableError
from switchyard.common.events import TerminalStatus
from switchyard.history.handlers import EventRecorder
from switchyard.history.idempotency import ClaimRequest, IdempotencyStore
from switchyard.history.jobs import expiry_event
from switchyard.history.models import cache_entries_table, idempotency_table
from switchyard.history.sweeper import expire_overdue, purge, purge_by_retention
from switchyard.history.tenants import TenantSettingsStore

GRACE = timedelta(seconds=30)


async def test_a_request_past_deadline_and_grace_is_expired_once(recorder, tables, events, engine):
    overdue = events.requested(timeout_s=60)
    answered = events.requested(timeout_s=60)
    recent = events.requested(timeout_s=3600)
    await recorder.record([overdue, answered, events.completed(answered), recent])
    now = overdue.data.deadline + GRACE + timedelta(seconds=1)

    first = await expire_overdue(engine, recorder, GRACE, now=now)
    # Two replicas sweeping at once, or a later sweep: nothing more happens.
    again = await asyncio.gather(
        expire_overdue(engine, recorder, GRACE, now=now),
        expire_overdue(engine, EventRecorder(engine), GRACE, now=now),
    )

    assert first == 1 and again == [0, 0]
    row = await tables.request(overdue.request_id)
    assert row["status"] == "expired"
    assert row["error"]["code"] == "deadline_exceeded"
    assert (await tables.request(answered.request_id))["status"] == "completed"
    assert (await tables.request(recent.request_id))["status"] == "pending"
    assert await tables.event_count() == 5  # the expiry is recorded as an event, once


async def test_not_expired_before_the_grace_period_ends(recorder, tables, events, engine):
    request = events.requested(timeout_s=60)
    await recorder.record([request])

    expired = await expire_overdue(
        engine, recorder, GRACE, now=request.data.deadline + GRACE - timedelta(seconds=1)
    )

    assert expired == 0
    assert (await tables.request(request.request_id))["status"] == "pending"


async def test_a_reply_recorded_after_the_sweepers_expiry_replaces_it(
    recorder, tables, events, engine
):
    # The sweeper expired a request whose reply was still on its way to the database (the
    # client had its answer): the real outcome wins, and the entry holds only that one.
    request = events.requested(timeout_s=60)
    await recorder.record([request])
    await expire_overdue(engine, recorder, GRACE, now=request.data.deadline + GRACE * 2)
    expired = await tables.request(request.request_id)
    reply = events.completed(request, answer="what the client got")
    usage = events.usage(request)

    await recorder.record([reply, usage])

    row = await tables.request(request.request_id)
    assert expired["status"] == "expired"
    assert row["status"] == "completed"
    assert row["response"]["choices"][0]["message"]["content"] == "what the client got"
    assert (row["error"], row["completed_at"]) == (None, reply.time)
    assert row["output_tokens"] == 3
    assert sorted(await tables.event_ids()) == sorted([request.id, reply.id, usage.id])


async def test_an_expiry_never_lands_on_a_request_answered_meanwhile(
    recorder, tables, events, engine
):
    request = events.requested(timeout_s=60)
    await recorder.record([request])
    reply = events.completed(request)
    # The sweeper found the request pending, then its reply was recorded before the expiry.
    await recorder.record([reply])
    await recorder.record([expiry_event(request.tenant, request.request_id)])

    assert (await tables.request(request.request_id))["status"] == "completed"
    assert sorted(await tables.event_ids()) == sorted([request.id, reply.id])


async def test_inferences_own_expiry_is_a_real_outcome(recorder, tables, events, engine):
    request = events.requested(timeout_s=60)
    await recorder.record([request, events.failed(request, status=TerminalStatus.EXPIRED)])
    await recorder.record([events.completed(request)])

    assert (await tables.request(request.request_id))["status"] == "expired"
    assert await tables.event_count() == 2


async def test_the_sweeper_expires_nothing_while_the_consumer_lags_or_is_unreachable(
    service, recorder, events
):
    sweeper = service.components.sweeper
    sweeper.grace = timedelta(0)
    request = events.requested(timeout_s=0.001)
    await recorder.record([request])
    progress: dict[str, object] = {"caught_up": False}

    async def caught_up() -> bool:
        if isinstance(progress["caught_up"], Exception):
            raise progress["caught_up"]
        return bool(progress["caught_up"])

    sweeper.caught_up = caught_up
    await sweeper.sweep_once()  # replies not recorded yet: the request may have its answer
    while_lagging = await _status(service, request.request_id)
    progress["caught_up"] = BusUnavailableError("Kafka is not reachable")
    await sweeper.sweep_once()  # a consumer that cannot reach the broker is not caught up
    while_disconnected = await _status(service, request.request_id)
    progress["caught_up"] = True
    await sweeper.sweep_once()

    assert (while_lagging, while_disconnected) == ("pending", "pending")
    assert await _status(service, request.request_id) == "expired"


async def test_the_sweeper_waits_for_the_history_group_on_the_bus(service, events):
    sweeper = service.components.sweeper
    sweeper.grace = timedelta(0)
    request = events.requested(timeout_s=0.001)
    await service.publish(request)  # through the bus: recorded by the consumer
    await service.wait_for(request.request_id, "pending")
    await sweeper.sweep_once()
    assert await _status(service, request.request_id) == "expired"


async def _status(service, request_id: str) -> str:
    response = await service.client.get(f"/v1/history/{request_id}", headers=service.headers())
    return response.json()["status"]


async def test_purge_deletes_old_requests_with_their_events(recorder, tables, events, engine):
    old = events.requested(at=datetime(2024, 1, 1, tzinfo=UTC))
    new = events.requested(at=datetime(2025, 6, 1, tzinfo=UTC))
    await recorder.record([old, events.completed(old), new, events.completed(new)])
    cutoff = datetime(2025, 1, 1, tzinfo=UTC)

    counted = await purge(engine, cutoff, dry_run=True)
    deleted = await purge(engine, cutoff, batch=1)

    assert (counted.requests, counted.events) == (1, 2)
    assert (deleted.requests, deleted.events) == (1, 2)
    assert list(await tables.requests()) == [new.request_id]
    assert await tables.event_count() == 2


async def test_purge_deletes_cached_answers_older_than_the_retention(engine):
    # A cached answer is a request's content: a time to live longer than the tenant's
    # retention (up to 7 days against 1) kept it past the purge of its request.
    def entry(tenant: str, key: str, at: datetime) -> dict:
        return {
            "tenant": tenant,
            "key": key,
            "api": "openai.chat_completions",
            "model": "m",
            "response": {"id": "chatcmpl-1"},
            "stream_events": None,
            "source_request_id": f"r-{key}",
            "size_bytes": 10,
            "created_at": at,
            "expires_at": at + timedelta(days=7),
        }

    old, new = datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC)
    async with engine.begin() as connection:
        await connection.execute(
            cache_entries_table.insert(),
            [entry("short", "a", old), entry("short", "b", new), entry("long", "c", old)],
        )
    cutoff = datetime(2025, 1, 1, tzinfo=UTC)

    counted = await purge(engine, cutoff, tenant="short", dry_run=True)
    deleted = await purge(engine, cutoff, tenant="short")

    assert counted.cache_entries == deleted.cache_entries == 1
    async with engine.connect() as connection:
        left = (await connection.execute(select(cache_entries_table.c.key))).scalars().all()
    assert sorted(left) == ["b", "c"]


async def test_purging_a_tenants_request_keeps_another_tenants_events_under_its_id(
    recorder, tables, events, engine
):
    """Another tenant's events written under a request's id are theirs: purging the
    request (its tenant's retention) deletes its own events only, and theirs go with
    their own tenant's retention, as events of no request, whether or not the request is
    still kept."""
    old = events.requested(tenant="short", at=datetime(2024, 1, 1, tzinfo=UTC))
    other = events.completed(old).model_copy(
        update={"tenant": "long", "time": datetime(2024, 1, 1, tzinfo=UTC)}
    )
    await recorder.record([old, events.completed(old), other])
    assert await tables.event_count() == 3
    cutoff = datetime(2025, 1, 1, tzinfo=UTC)

    counted = await purge(engine, cutoff, tenant="short", dry_run=True)
    deleted = await purge(engine, cutoff, tenant="short")

    assert (counted.requests, counted.events) == (1, 2)
    assert (deleted.requests, deleted.events) == (1, 2)
    assert await tables.event_count() == 1  # the other tenant's, kept
    assert (await purge(engine, cutoff, tenant="long")).events == 1
    assert await tables.event_count() == 0

    # The other way round: the request's tenant keeps it longer than the other's events.
    kept = events.requested(tenant="long", at=datetime(2024, 1, 1, tzinfo=UTC))
    theirs = events.completed(kept).model_copy(
        update={"tenant": "short", "time": datetime(2024, 1, 1, tzinfo=UTC)}
    )
    await recorder.record([kept, theirs])
    assert (await purge(engine, cutoff, tenant="short")).events == 1
    assert await tables.event_count() == 1 and list(await tables.requests()) == [kept.request_id]


async def test_retention_per_tenant_and_by_default(recorder, tables, events, engine):
    now = datetime(2025, 6, 1, tzinfo=UTC)
    rows = {
        (tenant, age): events.requested(tenant=tenant, at=now - timedelta(days=age))
        for tenant in ("short", "default", "long")
        for age in (3, 20, 100)
    }
    await recorder.record(list(rows.values()))
    tenants = TenantSettingsStore(engine)
    await tenants.update("short", retention_days=7)
    await tenants.update("long", retention_days=365)

    await purge_by_retention(engine, tenants, default_days=30, now=now)

    kept = {
        (row["tenant"], (now - row["created_at"]).days)
        for row in (await tables.requests()).values()
    }
    assert kept == {
        ("short", 3),
        ("default", 3),
        ("default", 20),
        ("long", 3),
        ("long", 20),
        ("long", 100),
    }


def claim(key: str = "k1", fingerprint: str = "f" * 64, **overrides) -> ClaimRequest:
    values = dict(
        tenant="acme",
        key=key,
        user_id="alice",
        endpoint="/v1/chat/completions",
        fingerprint=fingerprint,
        lease_s=60,
    )
    values.update(overrides)
    return ClaimRequest(**values)


async def test_idempotency_claim_complete_and_replay(engine):
    store = IdempotencyStore(engine)
    first = await store.claim(claim())
    waiting = await store.claim(claim())
    stored = await store.complete(
        "acme",
        "k1",
        first.claim_token,
        request_id="req-1",
        status_code=200,
        content_type="application/json",
        body=b'{"a": 1}',
    )
    replay = await store.claim(claim())

    assert first.outcome == "claimed" and first.claim_token
    assert waiting.outcome == "in_progress"
    assert stored
    assert (replay.outcome, replay.body, replay.status_code, replay.request_id) == (
        "completed",
        b'{"a": 1}',
        200,
        "req-1",
    )


async def test_idempotency_mismatches_and_scoping(engine):
    store = IdempotencyStore(engine)
    await store.claim(claim())

    other_body = await store.claim(claim(fingerprint="0" * 64))
    other_endpoint = await store.claim(claim(endpoint="/v1/jobs"))
    other_user = await store.claim(claim(user_id="bob"))
    # Another caller learns that the key was used, never what for.
    other_user_elsewhere = await store.claim(claim(user_id="bob", endpoint="/v1/messages"))
    other_tenant = await store.claim(claim(tenant="globex"))

    assert other_body.outcome == "mismatch" and "different request body" in other_body.reason
    assert other_endpoint.outcome == "mismatch" and "/v1/chat/completions" in other_endpoint.reason
    assert other_user.outcome == "mismatch"
    assert other_user_elsewhere.outcome == "mismatch"
    assert "another caller" in other_user_elsewhere.reason
    assert "/v1/" not in other_user_elsewhere.reason
    assert other_tenant.outcome == "claimed"  # keys are per tenant


async def test_idempotency_concurrent_claims_have_one_winner(engine):
    store = IdempotencyStore(engine)
    results = await asyncio.gather(*(store.claim(claim()) for _ in range(20)))
    assert sorted(result.outcome for result in results) == ["claimed"] + ["in_progress"] * 19


async def test_idempotency_release_lease_and_expiry(engine):
    store = IdempotencyStore(engine)
    first = await store.claim(claim(lease_s=0.05))
    assert not await store.release("acme", "k1", "not-the-token")
    assert await store.release("acme", "k1", first.claim_token)
    second = await store.claim(claim(lease_s=0.05))
    assert second.outcome == "claimed"

    await asyncio.sleep(0.1)  # the owner died: its lease ran out
    takeover = await store.claim(claim())
    late = await store.complete(
        "acme",
        "k1",
        second.claim_token,
        request_id=None,
        status_code=200,
        content_type="application/json",
        body=b"{}",
    )
    assert takeover.outcome == "claimed" and takeover.claim_token != second.claim_token
    assert not late  # the old owner cannot overwrite the new owner's result

    expired_store = IdempotencyStore(engine, lifetime=timedelta(0))
    await expired_store.claim(claim("k2"))
    assert (await expired_store.claim(claim("k2", fingerprint="1" * 64))).outcome == "claimed"
    assert await store.purge_expired(datetime.now(UTC) + timedelta(days=2)) == 2


@pytest.mark.parametrize("status", [None])
async def test_expiry_skips_rows_without_their_request(recorder, tables, events, engine, status):
    request = events.requested(timeout_s=1)
    await recorder.record([events.usage(request)])  # the request itself is still on its way
    assert await expire_overdue(engine, recorder, GRACE, now=datetime(2030, 1, 1, tzinfo=UTC)) == 0


async def test_an_expiry_and_the_reply_in_one_batch_leave_only_the_reply(recorder, tables, events):
    request = events.requested(timeout_s=60)
    await recorder.record([request])
    reply = events.completed(request)

    await recorder.record([expiry_event(request.tenant, request.request_id), reply])

    row = await tables.request(request.request_id)
    assert (row["status"], row["outcome_provisional"], row["error"]) == ("completed", False, None)
    assert sorted(await tables.event_ids()) == sorted([request.id, reply.id])


async def test_a_failing_sweep_step_stops_none_of_the_others(
    service, recorder, events, monkeypatch
):
    from switchyard.history import rollup

    sweeper = service.components.sweeper
    sweeper.grace = timedelta(0)
    sweeper.purge_interval_s = 0  # purge every round

    async def caught_up() -> bool:
        return True

    sweeper.caught_up = caught_up
    purged = []

    async def broken_refresh(*_args, **_kwargs):
        raise OverflowError("date value out of range")

    async def counted_purge() -> int:
        purged.append(True)
        return 0

    monkeypatch.setattr(rollup, "refresh", broken_refresh)
    monkeypatch.setattr(sweeper.idempotency, "purge_expired", counted_purge)
    request = events.requested(timeout_s=0.001)
    await recorder.record([request])

    await sweeper.sweep_once()  # does not raise

    assert await _status(service, request.request_id) == "expired"
    assert purged == [True]


async def test_a_key_waits_for_the_outcome_of_a_request_its_replica_stopped_waiting_for(
    recorder, events, engine
):
    # The gateway answered 504 at the deadline of a request it had published (its reply
    # held up by the broker): the request may have run, so a retry must not run it again.
    store = IdempotencyStore(engine)
    request = events.requested(timeout_s=1)
    first = await store.claim(claim("late"))
    assert not await store.await_outcome(
        "acme", "late", "not-the-token", request_id=request.request_id, lease_s=60
    )
    assert await store.await_outcome(
        "acme", "late", first.claim_token, request_id=request.request_id, lease_s=60
    )

    unknown = await store.claim(claim("late"))  # not recorded yet
    await recorder.record([request])
    pending = await store.claim(claim("late"))
    await expire_overdue(engine, recorder, GRACE, now=datetime(2030, 1, 1, tzinfo=UTC))
    provisional = await store.claim(claim("late"))  # the sweeper's expiry may be replaced
    await recorder.record([events.completed(request)])
    late = await store.claim(claim("late"))

    assert [unknown.outcome, pending.outcome, provisional.outcome] == ["in_progress"] * 3
    assert pending.request_id == request.request_id
    assert (late.outcome, late.request_id) == ("answered_late", request.request_id)
    # Another tenant's key naming the request is not answered from it.
    other = await store.claim(claim("late", tenant="globex"))
    assert other.outcome == "claimed"


@pytest.mark.parametrize("status", [TerminalStatus.FAILED, TerminalStatus.CANCELLED])
async def test_a_key_whose_request_failed_is_claimed_anew(recorder, events, engine, status):
    store = IdempotencyStore(engine)
    request = events.requested()
    first = await store.claim(claim("failed"))
    await store.await_outcome(
        "acme", "failed", first.claim_token, request_id=request.request_id, lease_s=60
    )
    await recorder.record([request, events.failed(request, status=status)])

    again = await store.claim(claim("failed"))

    assert again.outcome == "claimed" and again.claim_token != first.claim_token


async def test_a_key_whose_request_never_arrives_is_freed_by_its_lease(engine):
    store = IdempotencyStore(engine)
    first = await store.claim(claim("lost"))
    handed_over = datetime.now(UTC)
    await store.await_outcome(
        "acme", "lost", first.claim_token, request_id="never-published", lease_s=600
    )
    assert (await store.claim(claim("lost"))).outcome == "in_progress"
    # The lease is held `lease_s` from the hand-over (not the claim's 60 s); its end is
    # moved into the past rather than waited for, so no database work races a short lease.
    this_key = (idempotency_table.c.tenant == "acme", idempotency_table.c.key == "lost")
    async with engine.begin() as connection:
        query = select(idempotency_table.c.locked_until).where(*this_key)
        assert (await connection.execute(query)).scalar_one() >= handed_over + timedelta(
            seconds=600
        )
        await connection.execute(
            update(idempotency_table)
            .where(*this_key)
            .values(locked_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert (await store.claim(claim("lost"))).outcome == "claimed"
