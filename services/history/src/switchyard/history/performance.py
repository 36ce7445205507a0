"""Latency and error rates: requests, errors, tokens, cost and the median and 95th
percentile latency, per time bucket (day, hour or minute) and any of model and
deployment. What the console's overview charts and its models page read
(`GET /v1/usage/performance`).

Percentiles cannot be added up the way the usage rollup adds counts, so this reads the
requests themselves (through the tenant/created_at index) over a bounded range: on
PostgreSQL with `percentile_cont` in one query; on SQLite (embedded mode) the latencies
are read and the percentiles computed here, with the same linear interpolation. Latency
is that of requests that completed (a refused or failed request's latency says little
about the deployment's speed); errors are failed and expired requests, as in usage, and
server errors those of them the client could not have avoided: failed with a 5xx status
(the provider's or Switchyard's failure, a timeout, an overload) or expired (no answer in
time), not a 4xx the request itself caused (invalid, refused by the provider's policy,
over a rate limit).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Label, and_, case, func, select, within_group
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.history.models import RequestStatus, requests_table
from switchyard.history.timeparse import isoformat_z

DEFAULT_RANGE = timedelta(days=1)
MAX_RANGE = timedelta(days=93)
# Minute buckets over a long range would be a huge answer; two days is plenty.
MAX_MINUTE_RANGE = timedelta(days=2)
BUCKETS = ("day", "hour", "minute")
_SQLITE_PREFIX = {"day": 10, "hour": 13, "minute": 16}
PERFORMANCE_DIMENSIONS = {"model": "model", "deployment": "deployment"}
PERCENTILES = (0.5, 0.95)
_ERRORS = (RequestStatus.FAILED.value, RequestStatus.EXPIRED.value)
# The lowest status of an error the client could not have avoided (5xx).
SERVER_ERROR_STATUS = 500


def is_server_error(status: str, error: Any) -> bool:
    """Whether a request of this `status` and stored `error` object (`ErrorInfo` as JSON)
    is a server error: expired, or failed with a 5xx status (or none recorded)."""
    if status == RequestStatus.EXPIRED.value:
        return True
    if status != RequestStatus.FAILED.value:
        return False
    code = error.get("status") if isinstance(error, dict) else None
    return not isinstance(code, int) or code >= SERVER_ERROR_STATUS


@dataclass(frozen=True)
class PerformanceQuery:
    """Requests created in [since, until) of one tenant (and user, if set)."""

    tenant: str
    since: datetime
    until: datetime
    bucket: Literal["day", "hour", "minute"] | None = None
    dimensions: tuple[str, ...] = ()
    user_id: str | None = None
    model: str | None = None
    api_key_id: str | None = None


@dataclass
class PerformanceRow:
    """One bucket and group of a performance report: request, error and server error counts
    (`is_server_error`), tokens, cost (USD) and the p50/p95 latency (milliseconds; None
    without completed requests)."""

    bucket: datetime | None
    groups: dict[str, str | None] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0
    server_errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None

    def as_dict(self, query: PerformanceQuery) -> dict[str, Any]:
        """The row as the report's JSON shows it (bucket in ISO 8601, `error_rate` a fraction)."""
        data: dict[str, Any] = {}
        if query.bucket is not None:
            data["bucket"] = isoformat_z(self.bucket) if self.bucket else None
        data.update(self.groups)
        data.update(
            requests=self.requests,
            errors=self.errors,
            error_rate=round(self.errors / self.requests, 6) if self.requests else 0.0,
            server_errors=self.server_errors,
            server_error_rate=(
                round(self.server_errors / self.requests, 6) if self.requests else 0.0
            ),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            total_tokens=self.input_tokens + self.output_tokens,
            cost_usd=round(self.cost_usd, 8),
            latency_ms_p50=_rounded(self.latency_ms_p50),
            latency_ms_p95=_rounded(self.latency_ms_p95),
        )
        return data


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """The `fraction` quantile of ascending values, interpolated linearly between the two
    nearest ranks (PostgreSQL's `percentile_cont`); None for no values."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    lower = int(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    weight = position - lower
    return sorted_values[lower] * (1 - weight) + sorted_values[upper] * weight


class PerformanceQueries:
    """Performance reports over the `requests` projection, with the latency percentiles computed
    by the database on PostgreSQL and in Python elsewhere."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name

    def _bucket(self, bucket: str) -> ColumnElement[Any]:
        column = requests_table.c.created_at
        if self._dialect == "postgresql":
            return func.date_trunc(bucket, func.timezone("UTC", column))
        # SQLite keeps UTC text 'YYYY-MM-DD HH:MM:SS...': the bucket is a prefix of it.
        return func.substr(column, 1, _SQLITE_PREFIX[bucket])

    def _keys(self, query: PerformanceQuery) -> list[Label[Any]]:
        r = requests_table.c
        keys = [r[PERFORMANCE_DIMENSIONS[name]].label(name) for name in query.dimensions]
        if query.bucket is not None:
            keys.insert(0, self._bucket(query.bucket).label("bucket"))
        return keys

    def _conditions(self, query: PerformanceQuery) -> list[ColumnElement[bool]]:
        r = requests_table.c
        conditions = [
            r.tenant == query.tenant,
            r.request_body.is_not(None),
            r.created_at >= query.since,
            r.created_at < query.until,
        ]
        for column, value in (
            (r.user_id, query.user_id),
            (r.model, query.model),
            (r.api_key_id, query.api_key_id),
        ):
            if value is not None:
                conditions.append(column == value)
        return conditions

    async def performance(self, query: PerformanceQuery) -> list[PerformanceRow]:
        """One row per bucket and group that had requests, ordered by bucket then groups."""
        if self._dialect == "postgresql":
            rows = await self._in_sql(query)
        else:
            rows = await self._in_python(query)

        def order(row: PerformanceRow) -> tuple[Any, ...]:
            key = (row.bucket, *row.groups.values())
            return tuple((value is None, value if value is not None else "") for value in key)

        return sorted(rows, key=order)

    async def _in_sql(self, query: PerformanceQuery) -> list[PerformanceRow]:
        r = requests_table.c
        keys = self._keys(query)
        completed_latency = case(
            (r.status == RequestStatus.COMPLETED.value, r.latency_ms), else_=None
        )
        statement = select(
            *keys,
            func.count().label("requests"),
            func.sum(case((r.status.in_(_ERRORS), 1), else_=0)).label("errors"),
            func.sum(
                case(
                    (r.status == RequestStatus.EXPIRED.value, 1),
                    (
                        and_(
                            r.status == RequestStatus.FAILED.value,
                            func.coalesce(r.error["status"].as_integer(), SERVER_ERROR_STATUS)
                            >= SERVER_ERROR_STATUS,
                        ),
                        1,
                    ),
                    else_=0,
                )
            ).label("server_errors"),
            func.coalesce(func.sum(r.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(r.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(r.cost_usd), 0.0).label("cost_usd"),
            *(
                within_group(func.percentile_cont(fraction), completed_latency).label(f"p{i}")
                for i, fraction in enumerate(PERCENTILES)
            ),
        ).where(*self._conditions(query))
        if keys:
            statement = statement.group_by(*keys)
        async with self._engine.connect() as connection:
            result = (await connection.execute(statement)).mappings().all()
        return [
            PerformanceRow(
                bucket=_as_bucket(row["bucket"]) if query.bucket is not None else None,
                groups={name: row[name] for name in query.dimensions},
                requests=int(row["requests"]),
                errors=int(row["errors"] or 0),
                server_errors=int(row["server_errors"] or 0),
                input_tokens=int(row["input_tokens"]),
                output_tokens=int(row["output_tokens"]),
                cost_usd=float(row["cost_usd"]),
                latency_ms_p50=row["p0"],
                latency_ms_p95=row["p1"],
            )
            for row in result
            if row["requests"]
        ]

    async def _in_python(self, query: PerformanceQuery) -> list[PerformanceRow]:
        r = requests_table.c
        keys = self._keys(query)
        statement = select(
            *keys, r.status, r.error, r.latency_ms, r.input_tokens, r.output_tokens, r.cost_usd
        ).where(*self._conditions(query))
        groups: dict[tuple[Any, ...], tuple[PerformanceRow, list[float]]] = {}
        async with self._engine.connect() as connection:
            result = await connection.stream(statement)
            async for row in result.mappings():
                bucket = _as_bucket(row["bucket"]) if query.bucket is not None else None
                names = {name: row[name] for name in query.dimensions}
                key = (bucket, *names.values())
                if key not in groups:
                    groups[key] = (PerformanceRow(bucket=bucket, groups=names), [])
                aggregate, latencies = groups[key]
                aggregate.requests += 1
                if row["status"] in _ERRORS:
                    aggregate.errors += 1
                    aggregate.server_errors += is_server_error(row["status"], row["error"])
                aggregate.input_tokens += row["input_tokens"] or 0
                aggregate.output_tokens += row["output_tokens"] or 0
                aggregate.cost_usd += row["cost_usd"] or 0.0
                if row["status"] == RequestStatus.COMPLETED.value and row["latency_ms"] is not None:
                    latencies.append(float(row["latency_ms"]))
        rows = []
        for aggregate, latencies in groups.values():
            latencies.sort()
            aggregate.latency_ms_p50 = percentile(latencies, PERCENTILES[0])
            aggregate.latency_ms_p95 = percentile(latencies, PERCENTILES[1])
            rows.append(aggregate)
        return rows


def report_json(rows: list[PerformanceRow], query: PerformanceQuery) -> dict[str, Any]:
    """The `usage.performance` JSON document: the query, its rows and their totals."""
    totals: dict[str, Any] = defaultdict(int)
    for row in rows:
        totals["requests"] += row.requests
        totals["errors"] += row.errors
        totals["server_errors"] += row.server_errors
        totals["input_tokens"] += row.input_tokens
        totals["output_tokens"] += row.output_tokens
        totals["cost_usd"] += row.cost_usd
    return {
        "object": "usage.performance",
        "since": isoformat_z(query.since),
        "until": isoformat_z(query.until),
        "group_by": ([query.bucket] if query.bucket else []) + list(query.dimensions),
        "data": [row.as_dict(query) for row in rows],
        "totals": {
            "requests": totals["requests"],
            "errors": totals["errors"],
            "server_errors": totals["server_errors"],
            "input_tokens": totals["input_tokens"],
            "output_tokens": totals["output_tokens"],
            "cost_usd": round(totals["cost_usd"], 8),
        },
    }


def _as_bucket(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    text = str(value)
    padding = {10: " 00:00:00", 13: ":00:00", 16: ":00"}.get(len(text), "")
    return datetime.fromisoformat(text + padding).replace(tzinfo=UTC)
