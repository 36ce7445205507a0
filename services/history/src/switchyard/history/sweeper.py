"""Background upkeep of the history store: expiring requests nobody answered, bringing
the usage rollup up to date, purging what is older than its retention, and forgetting
expired Idempotency-Keys and response cache entries.

Expiry: a request still `pending` after its deadline plus a grace period
(`SWITCHYARD_HISTORY_EXPIRY_GRACE_S`) will get no reply any more (inference publishes an
`expired` reply itself when it sees the deadline pass, so this only happens when no
inference replica handled the request at all). History records its own `chat.failed`
with status `expired` through the recorder — stored once, whatever the number of
replicas — and publishes nothing. That expiry is provisional: a reply that still arrives
replaces it (projection.py). And the sweeper only expires what it knows to be unanswered:
it runs only when the history consumer group has recorded every event published so far
(its lag, read from the bus, is 0), and only for requests whose deadline plus grace
passed before that was checked. While the consumer lags, or the bus cannot tell (Kafka
unreachable), nothing is expired.

Retention: requests (with their events and webhooks) created before the cutoff are
deleted in batches of a few thousand rows, per tenant for tenants with their own
`retention_days`, and for every other tenant with the service-wide
`SWITCHYARD_HISTORY_RETENTION_DAYS` (unset: kept forever).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import structlog
from prometheus_client import Counter
from sqlalchemy import ColumnElement, delete, exists, func, not_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.history import rollup
from switchyard.history.cache import CacheStore, resolve_pending_hits
from switchyard.history.handlers import EventRecorder
from switchyard.history.idempotency import IdempotencyStore
from switchyard.history.models import (
    cache_entries_table,
    events_table,
    requests_table,
    webhooks_table,
)
from switchyard.history.queries import AnySelect
from switchyard.history.revoked_work import CancelRequest, cancel_revoked_work
from switchyard.history.tenants import TenantSettingsStore

log = structlog.get_logger("switchyard.history.sweeper")

EXPIRED = Counter(
    "switchyard_history_requests_expired_total",
    "Requests history marked expired because no terminal event came before deadline + grace.",
)
PURGED = Counter(
    "switchyard_history_purged_total", "Rows deleted by the retention purge.", ["table"]
)
SWEEP_STEP_FAILURES = Counter(
    "switchyard_history_sweep_step_failures_total",
    "Steps of the background sweep that failed (the round's other steps still ran).",
    ["step"],
)
T = TypeVar("T")


@dataclass
class PurgeResult:
    """What a purge deleted (or, in a dry run, would delete): requests, events, webhooks,
    and the response cache's answers made before the cutoff."""

    requests: int = 0
    events: int = 0
    webhooks: int = 0
    cache_entries: int = 0

    def __iadd__(self, other: PurgeResult) -> PurgeResult:
        self.requests += other.requests
        self.events += other.events
        self.webhooks += other.webhooks
        self.cache_entries += other.cache_entries
        return self


async def expire_overdue(
    engine: AsyncEngine,
    recorder: EventRecorder,
    grace: timedelta,
    *,
    now: datetime | None = None,
    batch: int = 500,
    max_rounds: int = 20,
) -> int:
    """Mark requests pending past deadline + grace as expired; returns how many.
    `now`: the instant up to which every reply is known to be recorded."""
    cutoff = (now or datetime.now(UTC)) - grace
    total = 0
    for _ in range(max_rounds):
        expired = await recorder.expire_overdue(cutoff, limit=batch)
        if not expired:
            break
        total += expired
        EXPIRED.inc(expired)
        log.info("requests expired", count=expired)
        if expired < batch:
            break
    return total


async def purge(
    engine: AsyncEngine,
    cutoff: datetime,
    *,
    tenant: str | None = None,
    exclude_tenants: frozenset[str] = frozenset(),
    batch: int = 5000,
    dry_run: bool = False,
) -> PurgeResult:
    """Delete requests created before `cutoff` (their events and webhooks too), events
    older than it that belong to no request (e.g. auth events), and the response cache's
    answers stored before it (an answer is a request's content: a time to live longer
    than the retention must not keep it). A request's events are
    those of its id and its tenant: another tenant's events under the same id (history
    keeps them, see `EventRecorder`) are events of no request of theirs, and follow their
    own tenant's retention."""
    r, e, w = requests_table.c, events_table.c, webhooks_table.c

    def scoped(query: AnySelect, tenant_column: ColumnElement[str]) -> AnySelect:
        if tenant is not None:
            query = query.where(tenant_column == tenant)
        if exclude_tenants:
            query = query.where(tenant_column.not_in(sorted(exclude_tenants)))
        return query

    old_requests = scoped(select(r.request_id, r.tenant).where(r.created_at < cutoff), r.tenant)
    loose_events = scoped(
        select(e.event_id).where(
            e.time < cutoff,
            # Of no request of its own tenant: another tenant's row under the same id
            # does not keep it past its tenant's retention.
            not_(exists().where(r.request_id == e.request_id, r.tenant == e.tenant)),
        ),
        e.tenant,
    )
    cached = cache_entries_table.c
    stale_answers: list[ColumnElement[bool]] = [cached.created_at < cutoff]
    if tenant is not None:
        stale_answers.append(cached.tenant == tenant)
    if exclude_tenants:
        stale_answers.append(cached.tenant.not_in(sorted(exclude_tenants)))
    result = PurgeResult()
    if dry_run:
        async with engine.connect() as connection:
            result.cache_entries = (
                await connection.execute(
                    select(func.count()).select_from(cache_entries_table).where(*stale_answers)
                )
            ).scalar_one()
            result.requests = (
                await connection.execute(select(func.count()).select_from(old_requests.subquery()))
            ).scalar_one()
            old = old_requests.subquery()
            result.events = (
                await connection.execute(
                    select(func.count())
                    .select_from(events_table)
                    .where(
                        exists().where(old.c.request_id == e.request_id, old.c.tenant == e.tenant)
                    )
                )
            ).scalar_one() + (
                await connection.execute(select(func.count()).select_from(loose_events.subquery()))
            ).scalar_one()
        return result
    while True:
        async with engine.begin() as connection:
            rows = (await connection.execute(old_requests.limit(batch))).all()
            if not rows:
                break
            ids = [request_id for request_id, _ in rows]
            by_tenant: dict[str, list[str]] = {}
            for request_id, owner in rows:
                by_tenant.setdefault(owner, []).append(request_id)
            for owner, owned in by_tenant.items():
                result.events += (
                    await connection.execute(
                        delete(events_table).where(e.request_id.in_(owned), e.tenant == owner)
                    )
                ).rowcount or 0
            result.webhooks += (
                await connection.execute(delete(webhooks_table).where(w.request_id.in_(ids)))
            ).rowcount or 0
            result.requests += (
                await connection.execute(delete(requests_table).where(r.request_id.in_(ids)))
            ).rowcount or 0
    while True:
        async with engine.begin() as connection:
            ids = list((await connection.execute(loose_events.limit(batch))).scalars())
            if not ids:
                break
            result.events += (
                await connection.execute(delete(events_table).where(e.event_id.in_(ids)))
            ).rowcount or 0
    async with engine.begin() as connection:
        result.cache_entries = (
            await connection.execute(delete(cache_entries_table).where(*stale_answers))
        ).rowcount or 0
        await rollup.forget_before(
            connection,
            engine.dialect.name,
            cutoff,
            tenant=tenant,
            exclude_tenants=sorted(exclude_tenants),
        )
    PURGED.labels("history_requests").inc(result.requests)
    PURGED.labels("history_events").inc(result.events)
    PURGED.labels("history_cache_entries").inc(result.cache_entries)
    return result


async def purge_by_retention(
    engine: AsyncEngine,
    tenants: TenantSettingsStore,
    default_days: int | None,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
) -> PurgeResult:
    """Apply every tenant's retention (its own, else the default)."""
    now = now or datetime.now(UTC)
    result = PurgeResult()
    own = {s.tenant: s.retention_days for s in await tenants.all() if s.retention_days}
    for tenant, days in own.items():
        result += await purge(engine, now - timedelta(days=days), tenant=tenant, dry_run=dry_run)
    if default_days:
        result += await purge(
            engine,
            now - timedelta(days=default_days),
            exclude_tenants=frozenset(own),
            dry_run=dry_run,
        )
    return result


CaughtUp = Callable[[], Awaitable[bool]]


class Sweeper:
    """The periodic loop of the history service (one per replica; every step is safe to
    run concurrently on several).

    `caught_up()`: True once the history consumer group (all its members) has recorded
    every event published before the call, False if it lags; it raises when that cannot
    be known. None: there is no consumer to wait for."""

    def __init__(
        self,
        engine: AsyncEngine,
        recorder: EventRecorder,
        tenants: TenantSettingsStore,
        idempotency: IdempotencyStore,
        *,
        grace: timedelta,
        retention_days: int | None,
        purge_interval_s: float,
        rollup_settle: timedelta = timedelta(seconds=10),
        cache: CacheStore | None = None,
        caught_up: CaughtUp | None = None,
    ) -> None:
        self.cache = cache
        self.engine = engine
        self.recorder = recorder
        self.tenants = tenants
        self.idempotency = idempotency
        self.grace = grace
        self.retention_days = retention_days
        self.purge_interval_s = purge_interval_s
        self.rollup_settle = rollup_settle
        self.caught_up = caught_up
        # Tells inference to skip or stop a cancelled request (set once the bus runs).
        self.cancel_request: CancelRequest | None = None
        self._last_purge = float("-inf")

    async def recorded_up_to(self) -> datetime | None:
        """An instant before which every published event is recorded: now, once the
        consumer group has recorded what was published by now; None if it lags or its
        progress cannot be read."""
        checked_at = datetime.now(UTC)  # before asking: what is published by now
        if self.caught_up is None:
            return checked_at
        try:
            caught_up = await self.caught_up()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - unknown progress: expire nothing
            log.warning("expiry paused: the history consumer's lag is unknown", error=repr(exc))
            return None
        if not caught_up:
            log.info("expiry paused while the history consumer catches up")
            return None
        return checked_at

    async def sweep_once(self) -> None:
        """One round: expire overdue requests (once the consumer has caught up), mark the
        hours of cache hits whose source's cost is now recorded, recompute settled rollup
        hours, and every `purge_interval_s` seconds purge by retention and drop
        expired idempotency keys and cache entries."""
        recorded = await self.recorded_up_to()
        if recorded is not None:
            await self._step(
                "expiry", expire_overdue(self.engine, self.recorder, self.grace, now=recorded)
            )
        # Queued jobs of a key revoked, or a user disabled, since they were accepted.
        await self._step(
            "revoked credentials",
            cancel_revoked_work(self.engine, self.recorder, self.cancel_request),
        )
        # Cache hits whose source's cost is now recorded get their hours marked first, so
        # this round's refresh (or a later one, once the marks are quiet) counts it.
        await self._step("cache hits", resolve_pending_hits(self.engine))
        # Hours of the usage rollup that have been quiet for a while are recomputed (a
        # report reads the others from the requests meanwhile).
        await self._step("rollup", rollup.refresh(self.engine, settle=self.rollup_settle))
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_purge >= self.purge_interval_s:
            self._last_purge = loop.time()
            purged = await self._step(
                "retention purge",
                purge_by_retention(self.engine, self.tenants, self.retention_days),
            )
            keys = await self._step("idempotency keys", self.idempotency.purge_expired())
            answers = (
                await self._step("cache entries", self.cache.purge(expired_only=True))
                if self.cache
                else 0
            )
            if (purged and (purged.requests or purged.events)) or keys or answers:
                log.info(
                    "retention purge",
                    requests=purged.requests if purged else 0,
                    events=purged.events if purged else 0,
                    idempotency_keys=keys or 0,
                    cache_entries=answers or 0,
                )

    async def _step(self, name: str, work: Awaitable[T]) -> T | None:
        """Run one step of a round; a step that fails is logged and the round goes on
        (one bad row must not stop expiry, purges and the rollup of everything else).
        None when it failed; cancellation is raised."""
        try:
            return await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the database is down, or one bad row
            SWEEP_STEP_FAILURES.labels(name).inc()
            log.warning("history sweep step failed", step=name, error=repr(exc))
            return None

    async def run(self, interval_s: float) -> None:
        """Sweep every `interval_s` seconds until cancelled; a failed round is logged, not
        raised."""
        while True:
            # First wait: right after start-up the consumer has not caught up anyway.
            await asyncio.sleep(interval_s)
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. the database is down: next round
                log.warning("history sweep failed", error=repr(exc))
