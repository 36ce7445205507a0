"""The usage rollup: requests aggregated per tenant and hour, at two grains — by user,
API key, team and model (`history_usage_hourly`), and by team and model only
(`history_usage_hourly_models`, what tenant-wide reports read: a few rows per hour however
many users and keys there are) — so a report over a month of a busy tenant reads
thousands of rollup rows instead of a million requests.

Exact, not approximate, whatever the order events arrive in:

- the recorder marks the (tenant, hour) of every request row it writes as dirty
  (`history_usage_dirty`), in the same transaction, with the row's actual creation time;
- the sweeper recomputes dirty hours from `history_requests` once they have been quiet
  for a moment, and clears the mark in the same transaction (the mark's row lock orders
  it against recorders writing that hour: a change the recomputation could not see
  leaves a fresh mark behind);
- a report reads, in one snapshot, the rollup for whole hours that are not dirty, and the
  requests themselves for dirty hours and for the partial hours at the ends of its range.

Only requests history shows count (`models.shown`, as in the history API): a reply that
overtook its request is counted when the request arrives; a request refused at admission
is counted (as an error) from its refusal.

A cache hit's saving is the cost of the request whose answer it reused, read from that
request's row when the hour is computed (`saved_cost`); the gateway's figure only stands
in while that cost is unknown. A hit linked before its source's cost was recorded is kept
pending, and the sweeper marks its hour again once that cost is committed
(`cache.resolve_pending_hits`, run right before `refresh`), so the rollup holds the
late-known saving too; the module docstring of cache.py says why no order of commits
escapes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import (
    ColumnElement,
    Label,
    Table,
    and_,
    case,
    delete,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from switchyard.common.db import dialect_insert
from switchyard.history.models import (
    RequestStatus,
    UTCDateTime,
    requests_table,
    shown,
    usage_dirty_table,
    usage_hourly_models_table,
    usage_hourly_table,
)

log = structlog.get_logger("switchyard.history.rollup")

HOUR = timedelta(hours=1)


def hour_end(hour: datetime) -> datetime:
    """The end of the hour starting at `hour`: `hour` + 1 h, or the last time there is
    for the last hour there is (a request dated 9999-12-31T23:xx by a bad producer must
    not stop the rollup of every other hour)."""
    try:
        return hour + HOUR
    except OverflowError:
        return datetime.max.replace(tzinfo=hour.tzinfo)


METRIC_COLUMNS = (
    "requests",
    "completed",
    "errors",
    "cancelled",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_1h_input_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cache_hits",
    "cache_saved_usd",
)
# Token columns summed as they are (NULL, on requests recorded before they existed, as 0).
TOKEN_SUMS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_1h_input_tokens",
    "reasoning_tokens",
)
# Dimensions as rollup columns; NULL is stored as '' (part of the primary key).
ROLLUP_DIMENSIONS = ("user_id", "api_key_id", "team_id", "model")


def hour_of(value: datetime) -> datetime:
    """The start of `value`'s hour, in UTC."""
    return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(value: datetime) -> datetime:
    """`value` if it is on the hour, else the start of the next hour (UTC)."""
    floor = hour_of(value)
    return floor if floor == value else hour_end(floor)


async def mark_dirty(
    connection: AsyncConnection, dialect: str, touched: Iterable[tuple[str, datetime]]
) -> None:
    """Mark the (tenant, hour) of written request rows for recomputation. Called last in
    the recorder's transaction, in key order, so the marks' row locks are held briefly
    and always taken in the same order."""
    now = datetime.now(UTC)
    rows = [
        {"tenant": tenant, "hour": hour, "marked_at": now}
        for tenant, hour in sorted({(tenant, hour_of(at)) for tenant, at in touched})
    ]
    if not rows:
        return
    insert = dialect_insert(usage_dirty_table, dialect)
    await connection.execute(
        insert.on_conflict_do_update(
            index_elements=["tenant", "hour"], set_={"marked_at": insert.excluded.marked_at}
        ),
        rows,
    )


def request_aggregates() -> list[Label[Any]]:
    """Requests, outcomes, tokens and cost of the request rows a query selects. Errors
    are failed, expired and refused requests (a refusal is an error the client sees)."""
    r = requests_table.c

    def counting(*statuses: str) -> ColumnElement[Any]:
        return func.sum(case((r.status.in_(statuses), 1), else_=0))

    return [
        func.count().label("requests"),
        counting(RequestStatus.COMPLETED.value).label("completed"),
        counting(
            RequestStatus.FAILED.value, RequestStatus.EXPIRED.value, RequestStatus.REFUSED.value
        ).label("errors"),
        counting(RequestStatus.CANCELLED.value).label("cancelled"),
        *[func.coalesce(func.sum(r[name]), 0).label(name) for name in TOKEN_SUMS],
        func.coalesce(func.sum(r.cost_usd), 0.0).label("cost_usd"),
        # Answered from the response cache, and what those answers had cost to make.
        func.sum(case((r.cache_hit.is_(True), 1), else_=0)).label("cache_hits"),
        func.coalesce(func.sum(saved_cost()), 0.0).label("cache_saved_usd"),
    ]


def saved_cost() -> ColumnElement[Any]:
    """What a request row saved: for a cache hit linked to the request it reused
    (`cache_source_request_id`), that request's cost once its usage is recorded, else the
    saving the gateway reported with the hit. One primary-key lookup per linked hit."""
    r = requests_table.c
    source = requests_table.alias("cache_source")
    source_cost = (
        select(source.c.cost_usd)
        .where(source.c.request_id == r.cache_source_request_id)
        .scalar_subquery()
    )
    return case(
        (r.cache_source_request_id.is_(None), r.saved_cost_usd),
        else_=func.coalesce(source_cost, r.saved_cost_usd),
    )


def rollup_sums(table: Table) -> list[Label[Any]]:
    """Each metric of `table` (a rollup grain) summed over the selected rows, 0 when none."""
    return [func.coalesce(func.sum(table.c[name]), 0).label(name) for name in METRIC_COLUMNS]


# Each grain: its table and the request columns it groups by (NULL stored as '').
GRAINS: tuple[tuple[Table, tuple[str, ...]], ...] = (
    (usage_hourly_table, ROLLUP_DIMENSIONS),
    (usage_hourly_models_table, ("team_id", "model")),
)


def grain_for(dimensions: Sequence[str], filtered: Sequence[str]) -> Table:
    """The coarsest rollup table that has every column a report groups or filters by."""
    needed = set(dimensions) | set(filtered)
    for table, columns in GRAINS[::-1]:
        if needed <= set(columns) | {"tenant"}:
            return table
    return usage_hourly_table


# How long an hour whose roll-up failed waits before it is tried again.
FAILED_HOUR_RETRY = timedelta(minutes=10)


async def _roll_up(connection: AsyncConnection, tenant: str, hour: datetime) -> None:
    """Replace `tenant`'s rows of `hour` in every grain by the sums of its requests."""
    r = requests_table.c
    for table, columns in GRAINS:
        await connection.execute(
            delete(table).where(table.c.tenant == tenant, table.c.hour == hour)
        )
        dimensions = [func.coalesce(r[name], "").label(name) for name in columns]
        aggregated = (
            select(
                literal(tenant).label("tenant"),
                literal(hour, UTCDateTime()).label("hour"),
                *dimensions,
                *request_aggregates(),
            )
            .where(
                r.tenant == tenant,
                r.created_at >= hour,
                r.created_at < hour_end(hour),
                shown(r),
            )
            .group_by(*[r[name] for name in columns])
        )
        await connection.execute(
            table.insert().from_select(["tenant", "hour", *columns, *METRIC_COLUMNS], aggregated)
        )


async def refresh(
    engine: AsyncEngine,
    *,
    settle: timedelta = timedelta(seconds=2),
    max_hours: int = 500,
    now: datetime | None = None,
) -> int:
    """Recompute dirty hours that have been quiet for `settle`; returns how many."""
    dialect = engine.dialect.name
    d = usage_dirty_table.c
    cutoff = (now or datetime.now(UTC)) - settle
    due = select(d.tenant, d.hour, d.marked_at).where(d.marked_at <= cutoff).order_by(d.hour)
    done = 0
    while done < max_hours:
        query = due.limit(min(50, max_hours - done))
        if dialect == "postgresql":
            # Replicas share the work; a mark a recorder is renewing right now waits a round.
            query = query.with_for_update(skip_locked=True)
        async with engine.begin() as connection:
            marks = (await connection.execute(query)).all()
            for tenant, hour, marked_at in marks:
                try:
                    # One hour that cannot be rolled up (sums beyond the columns' range,
                    # from token counts the contract allows) must not hold back the others.
                    async with connection.begin_nested():
                        await _roll_up(connection, tenant, hour)
                        await connection.execute(
                            delete(usage_dirty_table).where(
                                d.tenant == tenant, d.hour == hour, d.marked_at <= marked_at
                            )
                        )
                except DBAPIError as exc:
                    log.error(
                        "usage hour not rolled up; retried later",
                        tenant=tenant,
                        hour=hour.isoformat(),
                        error=repr(exc.orig)[:500],
                    )
                    later = (now or datetime.now(UTC)) + FAILED_HOUR_RETRY
                    await connection.execute(
                        update(usage_dirty_table)
                        .where(d.tenant == tenant, d.hour == hour)
                        .values(marked_at=later)
                    )
        done += len(marks)
        if not marks:
            break
    return done


async def forget_before(
    connection: AsyncConnection,
    dialect: str,
    cutoff: datetime,
    *,
    tenant: str | None,
    exclude_tenants: Sequence[str] = (),
) -> None:
    """After a retention purge: drop rollup hours wholly before `cutoff` and recompute the
    hour it falls in."""
    marks: set[str] = set()
    for table, _ in GRAINS:
        scope = []
        if tenant is not None:
            scope.append(table.c.tenant == tenant)
        if exclude_tenants:
            scope.append(table.c.tenant.not_in(list(exclude_tenants)))
        await connection.execute(delete(table).where(table.c.hour < hour_of(cutoff), *scope))
        marks.update(
            (
                await connection.execute(
                    select(table.c.tenant).distinct().where(table.c.hour == hour_of(cutoff), *scope)
                )
            ).scalars()
        )
    await mark_dirty(connection, dialect, [(name, cutoff) for name in marks])


def live_ranges(
    since: datetime, until: datetime, dirty_hours: Sequence[datetime]
) -> tuple[datetime, datetime, list[tuple[datetime, datetime]]]:
    """Whole hours [first, end) the rollup may answer, and the ranges to read from the
    requests instead: the partial hours at both ends and every dirty hour (merged)."""
    first, end = ceil_hour(since), hour_of(until)
    if first >= end:
        return first, first, [(since, until)]
    ranges: list[tuple[datetime, datetime]] = []
    if since < first:
        ranges.append((since, first))
    for hour in sorted(dirty_hours):
        if ranges and ranges[-1][1] == hour:
            ranges[-1] = (ranges[-1][0], hour_end(hour))
        else:
            ranges.append((hour, hour_end(hour)))
    if end < until:
        if ranges and ranges[-1][1] == end:
            ranges[-1] = (ranges[-1][0], until)
        else:
            ranges.append((end, until))
    return first, end, ranges


def in_ranges(
    column: ColumnElement[Any], ranges: Sequence[tuple[datetime, datetime]]
) -> ColumnElement[bool]:
    """`column` inside one of the half-open `[start, stop)` ranges."""
    return or_(*[and_(column >= start, column < stop) for start, stop in ranges])


def not_dirty(table: Table, tenant: str | None) -> ColumnElement[bool]:
    """Rollup rows whose hour is not dirty (for the tenant, or for any tenant when the
    report spans every tenant, matching how the live part is read)."""
    d = usage_dirty_table.c
    condition = d.hour == table.c.hour
    if tenant is not None:
        condition = and_(condition, d.tenant == table.c.tenant)
    return not_(exists().where(condition))
