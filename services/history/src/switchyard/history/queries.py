"""Reading request history: a caller's requests newest first (with filters), one request
by id, their jobs, and usage aggregated in SQL.

Every query is scoped to the caller's tenant, so another tenant's request is simply not
found. An ordinary user sees only their own requests; the `admin` role sees the whole
tenant. A request appears once its `chat.requested` event is stored (a row that so far
only holds a reply that overtook its request is not shown yet).

Pagination is keyset-based on (created_at, request_id), newest first, with an opaque
cursor, so pages stay stable while new requests arrive; every filter has an index that
keeps it an index scan in that order (migration 0002).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Select, case, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.history.models import RequestStatus, requests_table, webhooks_table

ADMIN_ROLE = "admin"
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
STATUSES = tuple(status.value for status in RequestStatus)
BATCH_PRIORITY = "batch"
# Usage report dimensions: time buckets and the columns a report can be grouped by.
TIME_BUCKETS = ("day", "hour")
DIMENSIONS = {"model": "model", "user": "user_id", "api_key": "api_key_id", "tenant": "tenant"}


@dataclass(frozen=True)
class Caller:
    """The identity the gateway verified and passed on."""

    tenant: str
    user_id: str
    role: str

    @property
    def sees_whole_tenant(self) -> bool:
        return self.role == ADMIN_ROLE


class InvalidCursorError(ValueError):
    """A pagination cursor this service did not issue (or one that was altered)."""


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(created_at: datetime, request_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), request_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at_text, request_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        created_at = datetime.fromisoformat(created_at_text)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidCursorError("cursor is not one returned by this API") from exc
    if created_at.tzinfo is None or not isinstance(request_id, str):
        raise InvalidCursorError("cursor is not one returned by this API")
    return created_at, request_id


@dataclass(frozen=True)
class HistoryFilters:
    """Optional filters of the history list (all combined with AND)."""

    since: datetime | None = None
    until: datetime | None = None
    model: str | None = None
    statuses: tuple[str, ...] = ()
    api_key_id: str | None = None
    user_id: str | None = None


@dataclass(frozen=True)
class UsageQuery:
    """A usage report: one row per time bucket (if any) and combination of dimensions."""

    since: datetime
    until: datetime
    bucket: Literal["day", "hour"] | None = "day"
    dimensions: tuple[str, ...] = ()
    tenant: str | None = None  # None only for operators (the CLI): every tenant
    user_id: str | None = None
    model: str | None = None
    api_key_id: str | None = None


@dataclass
class UsageRow:
    bucket: datetime | None
    groups: dict[str, str | None] = field(default_factory=dict)
    requests: int = 0
    completed: int = 0
    errors: int = 0
    cancelled: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class HistoryQueries:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name

    def _visible_to(self, caller: Caller, *columns) -> Select:
        query = select(*(columns or (requests_table,))).where(
            requests_table.c.tenant == caller.tenant,
            requests_table.c.request_body.is_not(None),
        )
        if not caller.sees_whole_tenant:
            query = query.where(requests_table.c.user_id == caller.user_id)
        return query

    async def _page(self, query: Select, limit: int, cursor: str | None) -> Page:
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        order_key = tuple_(requests_table.c.created_at, requests_table.c.request_id)
        if cursor is not None:
            # A plain tuple on the right takes the column types (UTC handling on SQLite).
            query = query.where(order_key < decode_cursor(cursor))
        # One extra row tells whether there is a next page without a count query.
        query = query.order_by(
            requests_table.c.created_at.desc(), requests_table.c.request_id.desc()
        ).limit(limit + 1)
        async with self._engine.connect() as connection:
            rows = [dict(row) for row in (await connection.execute(query)).mappings()]
        page, more = rows[:limit], len(rows) > limit
        next_cursor = (
            encode_cursor(page[-1]["created_at"], page[-1]["request_id"]) if more else None
        )
        return Page(items=page, next_cursor=next_cursor)

    async def list_requests(
        self,
        caller: Caller,
        *,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        filters: HistoryFilters | None = None,
    ) -> Page:
        """The caller's requests, newest first. Raises InvalidCursorError for a bad cursor."""
        query = self._visible_to(caller)
        if filters is not None:
            query = _filtered(query, filters)
        return await self._page(query, limit, cursor)

    async def get_request(self, caller: Caller, request_id: str) -> dict[str, Any] | None:
        query = self._visible_to(caller).where(requests_table.c.request_id == request_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).mappings().first()
        return dict(row) if row is not None else None

    # -- jobs ----------------------------------------------------------------------------

    def _jobs_visible_to(self, caller: Caller) -> Select:
        webhooks = webhooks_table.c
        return (
            self._visible_to(
                caller,
                requests_table,
                webhooks.url.label("webhook_url"),
                webhooks.status.label("webhook_status"),
                webhooks.attempts.label("webhook_attempts"),
                webhooks.delivered_at.label("webhook_delivered_at"),
                webhooks.last_error.label("webhook_last_error"),
            )
            .select_from(
                requests_table.outerjoin(
                    webhooks_table, webhooks.request_id == requests_table.c.request_id
                )
            )
            .where(requests_table.c.priority == BATCH_PRIORITY)
        )

    async def list_jobs(
        self,
        caller: Caller,
        *,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        statuses: Sequence[str] = (),
    ) -> Page:
        query = self._jobs_visible_to(caller)
        if statuses:
            query = query.where(requests_table.c.status.in_(list(statuses)))
        return await self._page(query, limit, cursor)

    async def get_job(self, caller: Caller, job_id: str) -> dict[str, Any] | None:
        query = self._jobs_visible_to(caller).where(requests_table.c.request_id == job_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).mappings().first()
        return dict(row) if row is not None else None

    # -- usage ---------------------------------------------------------------------------

    async def usage(self, report: UsageQuery) -> list[UsageRow]:
        """Requests, errors, tokens and cost per bucket and group, aggregated in SQL over
        the range [since, until) of creation times; ordered by bucket, then groups."""
        r = requests_table.c
        group_columns = [r[DIMENSIONS[name]].label(name) for name in report.dimensions]
        selected = list(group_columns)
        bucket = None
        if report.bucket is not None:
            bucket = self._bucket_expression(report.bucket).label("bucket")
            selected.insert(0, bucket)
        is_status = lambda *names: case((r.status.in_(names), 1), else_=0)  # noqa: E731
        query = select(
            *selected,
            func.count().label("requests"),
            func.sum(is_status(RequestStatus.COMPLETED.value)).label("completed"),
            func.sum(is_status(RequestStatus.FAILED.value, RequestStatus.EXPIRED.value)).label(
                "errors"
            ),
            func.sum(is_status(RequestStatus.CANCELLED.value)).label("cancelled"),
            func.coalesce(func.sum(r.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(r.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(r.cost_usd), 0.0).label("cost_usd"),
        ).where(r.created_at >= report.since, r.created_at < report.until)
        if report.tenant is not None:
            query = query.where(r.tenant == report.tenant)
        for column_name, value in (
            ("user_id", report.user_id),
            ("model", report.model),
            ("api_key_id", report.api_key_id),
        ):
            if value is not None:
                query = query.where(r[column_name] == value)
        keys = ([bucket] if bucket is not None else []) + group_columns
        if keys:
            query = query.group_by(*keys).order_by(*keys)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [
            UsageRow(
                bucket=_as_bucket(row["bucket"]) if bucket is not None else None,
                groups={name: row[name] for name in report.dimensions},
                requests=int(row["requests"] or 0),
                completed=int(row["completed"] or 0),
                errors=int(row["errors"] or 0),
                cancelled=int(row["cancelled"] or 0),
                input_tokens=int(row["input_tokens"] or 0),
                output_tokens=int(row["output_tokens"] or 0),
                cost_usd=float(row["cost_usd"] or 0.0),
            )
            for row in rows
            if row["requests"]
        ]

    def _bucket_expression(self, bucket: str):
        created_at = requests_table.c.created_at
        if self._dialect == "postgresql":
            return func.date_trunc(bucket, func.timezone("UTC", created_at))
        # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC: the bucket is a prefix of it.
        return func.substr(created_at, 1, 10 if bucket == "day" else 13)


def _filtered(query: Select, filters: HistoryFilters) -> Select:
    r = requests_table.c
    if filters.since is not None:
        query = query.where(r.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(r.created_at < filters.until)
    if filters.model is not None:
        query = query.where(r.model == filters.model)
    if filters.statuses:
        query = query.where(r.status.in_(list(filters.statuses)))
    if filters.api_key_id is not None:
        query = query.where(r.api_key_id == filters.api_key_id)
    if filters.user_id is not None:
        query = query.where(r.user_id == filters.user_id)
    return query


def _as_bucket(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    text = str(value)
    if len(text) == 10:
        text += " 00"
    return datetime.fromisoformat(text + ":00:00").replace(tzinfo=UTC)
