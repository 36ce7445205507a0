"""Reading request history: a caller's requests newest first (with filters), one request
by id, their jobs, and usage aggregated in SQL.

Every query is scoped to the caller's tenant, so another tenant's request is simply not
found. An ordinary user sees only their own requests; the `admin` role sees the whole
tenant. A request appears once its `chat.requested` event is stored (a row that so far
only holds a reply that overtook its request is not shown yet), or, for a request refused
at admission (which never had one), once its refusal is (`models.shown`).

Pagination is keyset-based on (created_at, request_id), newest first, with an opaque
cursor, so pages stay stable while new requests arrive; every filter has an index that
keeps it an index scan in that order (migration 0002). A page also ends before its stored
documents pass `PAGE_BYTES` (at least one request per page): a request may hold tens of
megabytes, and a hundred of them read at once would hold gigabytes in memory. Those
documents are read as JSON text and decoded here, in a worker thread when they come to
more than `OFF_LOOP_BYTES` (`offloop`), rather than by the database driver on the event
loop that answers every other request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    Column,
    ColumnCollection,
    ColumnElement,
    Label,
    LargeBinary,
    Row,
    Select,
    Text,
    and_,
    cast,
    func,
    or_,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common import exactjson
from switchyard.common.events import ClientAPI
from switchyard.common.offloop import OFF_LOOP_BYTES
from switchyard.history import rollup
from switchyard.history.models import (
    RequestStatus,
    requests_table,
    shown,
    usage_dirty_table,
    webhooks_table,
)

ADMIN_ROLE = "admin"
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# About how many bytes of stored documents (request, response, input items, error: their
# JSON text) one page of requests or jobs reads; a page ends before passing it.
PAGE_BYTES = 16 * 1024 * 1024
# The columns whose size `PAGE_BYTES` bounds.
_DOCUMENTS = ("request_body", "response", "input_items", "error")
# A request row's columns as the readers select them: the documents as their JSON text,
# under their own names, for `_decoded` to decode.
_ROW_COLUMNS = tuple(
    cast(column, Text).label(column.name) if column.name in _DOCUMENTS else column
    for column in requests_table.columns
)
# A SELECT whose row shape the caller does not fix (columns chosen at run time).
AnySelect = Select[*tuple[Any, ...]]
# The columns of a table (`table.c`): requests or one of the usage rollups.
Columns = ColumnCollection[str, Column[Any]]

STATUSES = tuple(status.value for status in RequestStatus)
BATCH_PRIORITY = "batch"
# Usage report dimensions: time buckets and the columns a report can be grouped by.
TIME_BUCKETS = ("day", "hour")
DIMENSIONS = {
    "model": "model",
    "user": "user_id",
    "api_key": "api_key_id",
    "team": "team_id",
    "tenant": "tenant",
}
# Filters of a usage report: UsageQuery attributes, each the request column of that name.
USAGE_FILTERS = ("user_id", "model", "api_key_id", "team_id")


@dataclass(frozen=True)
class Caller:
    """The identity the gateway verified and passed on; `api_key_id`, when set, narrows it
    to the requests that API key made (a key without `history:read` reading back its own
    jobs and responses)."""

    tenant: str
    user_id: str
    role: str
    api_key_id: str | None = None

    @property
    def sees_whole_tenant(self) -> bool:
        """Whether the caller is a tenant admin, who sees every user's requests of the tenant."""
        return self.role == ADMIN_ROLE


class InvalidCursorError(ValueError):
    """A pagination cursor this service did not issue (or one that was altered)."""


@dataclass(frozen=True)
class Page:
    """A page of `requests` rows (as mappings) and the cursor of the next one (None on the last)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def _within_page_bytes(sizes: Sequence[int | None]) -> int:
    """How many of the rows of these `sizes` (bytes, in page order) a page takes: as many
    as stay within `PAGE_BYTES` together, one at least when there is one."""
    taken, total = 0, 0
    for size in sizes:
        total += int(size or 0)
        if taken and total > PAGE_BYTES:
            break
        taken += 1
    return taken


def _decode_documents(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        for name in _DOCUMENTS:
            text = row.get(name)
            if isinstance(text, str):
                row[name] = exactjson.loads(text)
    return rows


async def _decoded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` (request rows read with `_ROW_COLUMNS`) with their documents' JSON text
    decoded in place (`exactjson`), in a worker thread when the texts come to more than
    `OFF_LOOP_BYTES` characters in all. Raises ValueError for text that is not JSON."""
    size = sum(
        len(text) for row in rows for name in _DOCUMENTS if isinstance(text := row.get(name), str)
    )
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(_decode_documents, rows)
    return _decode_documents(rows)


def _job_status_is(status: str) -> ColumnElement[bool]:
    """The condition for a request row to show the job status `status` (`jobs.job_status`)."""
    c = requests_table.c
    if status == "queued":
        return and_(c.status == RequestStatus.PENDING.value, c.started_at.is_(None))
    if status == "in_progress":
        return and_(c.status == RequestStatus.PENDING.value, c.started_at.is_not(None))
    return c.status == status


def encode_cursor(created_at: datetime, request_id: str) -> str:
    """An opaque page cursor (unpadded URL-safe base64 of JSON) after the row with these keys."""
    raw = json.dumps([created_at.isoformat(), request_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The `(created_at, request_id)` keys a cursor from `encode_cursor` points after.

    Raises:
        InvalidCursorError: the cursor was not made by `encode_cursor` (one whose id
            holds a NUL character included).
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at_text, request_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        created_at = datetime.fromisoformat(created_at_text)
        # Converted here, not when the query binds it: an aware time at the edge of the
        # calendar (0001-01-01T00:00+14:00) has no UTC equivalent (OverflowError).
        utc = created_at.astimezone(UTC) if created_at.tzinfo is not None else None
    except (
        binascii.Error,
        ValueError,
        TypeError,
        UnicodeDecodeError,
        RecursionError,
        OverflowError,
    ) as exc:
        # RecursionError: a forged cursor of deeply nested JSON.
        raise InvalidCursorError("cursor is not one returned by this API") from exc
    # A NUL: no id holds one (PostgreSQL cannot bind it), so no cursor of ours does.
    if utc is None or not isinstance(request_id, str) or "\x00" in request_id:
        raise InvalidCursorError("cursor is not one returned by this API")
    return utc, request_id


@dataclass(frozen=True)
class HistoryFilters:
    """Optional filters of the history list (all combined with AND)."""

    since: datetime | None = None
    until: datetime | None = None
    model: str | None = None
    statuses: tuple[str, ...] = ()
    api_key_id: str | None = None
    user_id: str | None = None
    team_id: str | None = None


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
    team_id: str | None = None


@dataclass
class UsageRow:
    """One bucket and group of a usage report: request counts by outcome, tokens, cost (USD) and
    response cache hits and savings (USD)."""

    bucket: datetime | None
    groups: dict[str, str | None] = field(default_factory=dict)
    requests: int = 0
    completed: int = 0
    errors: int = 0
    cancelled: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    cache_hits: int = 0
    cache_saved_usd: float = 0.0


class HistoryQueries:
    """Read-only queries over the `requests` projection, scoped to the caller: history pages,
    jobs and usage reports."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name

    def _visible_to(self, caller: Caller, *columns: Any) -> AnySelect:
        query = select(*(columns or _ROW_COLUMNS)).where(
            requests_table.c.tenant == caller.tenant,
            shown(),
        )
        if not caller.sees_whole_tenant:
            query = query.where(requests_table.c.user_id == caller.user_id)
        if caller.api_key_id is not None:
            query = query.where(requests_table.c.api_key_id == caller.api_key_id)
        return query

    def _documents_size(self, names: Sequence[str] = _DOCUMENTS) -> ColumnElement[Any]:
        """The bytes of a request row's stored documents `names` as JSON text (0 for a
        null one). On PostgreSQL this is the text of the JSONB value, not its compressed
        storage, which a repetitive document shrinks a thousandfold."""
        r = requests_table.c
        sizes: list[ColumnElement[Any]] = []
        for name in names:
            if self._dialect == "postgresql":
                size = func.octet_length(cast(r[name], Text))
            else:  # SQLite keeps JSON as text; a BLOB's length is in bytes
                size = func.length(cast(r[name], LargeBinary))
            sizes.append(func.coalesce(size, 0))
        return sum(sizes[1:], sizes[0])

    async def _page(self, query: AnySelect, limit: int, cursor: str | None) -> Page:
        """Up to `limit` rows of `query`, newest first, after `cursor`, ending before their
        stored documents pass `PAGE_BYTES` (one row at least); `next_cursor` when more
        follow. The rows' keys and sizes are read first, then the rows of those keys; rows
        deleted in between (a purge, a deleted response) shorten the page, and a page they
        emptied is read again further on, so an empty page always ends the list. The bound
        is the sizes read first: a row answered in between is read at its new size."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        r = requests_table.c
        order_key = tuple_(r.created_at, r.request_id)
        # A plain tuple on the right takes the column types (UTC handling on SQLite).
        after = decode_cursor(cursor) if cursor is not None else None
        query = query.order_by(r.created_at.desc(), r.request_id.desc())
        async with self._engine.connect() as connection:
            while True:
                here = query if after is None else query.where(order_key < after)
                # One extra row tells whether there is a next page without a count query.
                sized = here.with_only_columns(
                    r.created_at, r.request_id, self._documents_size().label("size")
                ).limit(limit + 1)
                keys = (await connection.execute(sized)).all()
                taken = _within_page_bytes([size for _, _, size in keys[:limit]])
                if not taken:
                    return Page(items=[], next_cursor=None)
                last = (keys[taken - 1][0], keys[taken - 1][1])
                # Exactly the rows sized: a row recorded in between is not let in, where it
                # would push one of them off the page (and, on the last page, out of the
                # list); it is newer than the cursor, as with any keyset page.
                sized_keys = [(created_at, request_id) for created_at, request_id, _ in keys]
                page_query = here.where(order_key.in_(sized_keys[:taken]))
                page = [dict(row) for row in (await connection.execute(page_query)).mappings()]
                page = await _decoded(page)
                more = len(keys) > taken
                if page or not more:
                    break
                after = last
        next_cursor = (
            encode_cursor(page[-1]["created_at"], page[-1]["request_id"]) if more and page else None
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
        """The caller's recorded request as a mapping of its columns, or None if it cannot see
        one."""
        query = self._visible_to(caller).where(requests_table.c.request_id == request_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).mappings().first()
        return (await _decoded([dict(row)]))[0] if row is not None else None

    async def recorded(self, request_id: str) -> bool:
        """Whether a request `request_id` is recorded, whoever may see it (only for telling
        the gateway not to wait for it: never shown to a caller). A row holding only a
        reply or usage that overtook its request does not count: its `chat.requested`,
        which says whose it is, is still on its way."""
        query = select(requests_table.c.request_id).where(
            requests_table.c.request_id == request_id, shown()
        )
        async with self._engine.connect() as connection:
            return (await connection.execute(query)).first() is not None

    async def recent_response_outputs(
        self, caller: Caller, *, limit: int, before: tuple[datetime, str] | None = None
    ) -> list[dict[str, Any]]:
        """The caller's `limit` most recent completed Responses API requests whose content
        is stored (not `store: false`, deleted or metadata only: their input items are
        kept), newest first, before `before` (a `(created_at, request_id)` key) when given:
        each row's `request_id`, `created_at` and `response`. Fewer (one at least) when
        their responses would pass `PAGE_BYTES`: the sizes are read first, as for a page."""
        r = requests_table.c
        response = cast(r.response, Text).label("response")
        query = self._visible_to(caller, r.request_id, r.created_at, response).where(
            r.api == ClientAPI.OPENAI_RESPONSES.value,
            r.status == RequestStatus.COMPLETED.value,
            r.response_deleted_at.is_(None),
            r.input_items.is_not(None),
        )
        order_key = tuple_(r.created_at, r.request_id)
        if before is not None:
            query = query.where(order_key < before)
        query = query.order_by(r.created_at.desc(), r.request_id.desc())
        sized = query.with_only_columns(
            r.created_at, r.request_id, self._documents_size(("response",)).label("size")
        ).limit(limit)
        async with self._engine.connect() as connection:
            keys = (await connection.execute(sized)).all()
            taken = _within_page_bytes([size for _, _, size in keys])
            if not taken:
                return []
            chosen = [(created_at, request_id) for created_at, request_id, _ in keys[:taken]]
            rows = await connection.execute(query.where(order_key.in_(chosen)))
            return await _decoded([dict(row) for row in rows.mappings()])

    # -- jobs ----------------------------------------------------------------------------

    def _jobs_visible_to(self, caller: Caller) -> AnySelect:
        webhooks = webhooks_table.c
        return (
            self._visible_to(
                caller,
                *_ROW_COLUMNS,
                webhooks.url.label("webhook_url"),
                webhooks.status.label("webhook_status"),
                webhooks.attempts.label("webhook_attempts"),
                webhooks.delivered_at.label("webhook_delivered_at"),
                webhooks.last_error.label("webhook_last_error"),
            )
            .select_from(
                # A webhook row naming another tenant is not the job's (webhooks.py).
                requests_table.outerjoin(
                    webhooks_table,
                    and_(
                        webhooks.request_id == requests_table.c.request_id,
                        webhooks.tenant == requests_table.c.tenant,
                    ),
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
        """A page of the caller's jobs (batch-lane requests), newest first, optionally only those
        with the given job statuses (`jobs.JOB_STATUSES`: `queued` and `in_progress` are a
        pending request before and after `started_at`, the rest request statuses).

        Raises:
            ValueError: `limit` outside 1 to `MAX_PAGE_SIZE`.
            InvalidCursorError: a cursor not made by this API.
        """
        query = self._jobs_visible_to(caller)
        if statuses:
            query = query.where(or_(*(_job_status_is(status) for status in statuses)))
        return await self._page(query, limit, cursor)

    async def get_job(self, caller: Caller, job_id: str) -> dict[str, Any] | None:
        """The caller's job (a batch-lane request with its webhook columns), or None."""
        query = self._jobs_visible_to(caller).where(requests_table.c.request_id == job_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).mappings().first()
        return (await _decoded([dict(row)]))[0] if row is not None else None

    # -- usage ---------------------------------------------------------------------------

    async def usage(self, report: UsageQuery) -> list[UsageRow]:
        """Requests, errors, tokens and cost per bucket and group over the range
        [since, until) of creation times, ordered by bucket, then groups.

        Whole hours come from the rollup (rollup.py) unless they are dirty; dirty hours
        and the partial hours at both ends are aggregated from the requests; both read in
        one snapshot, so no change is counted twice or missed."""
        d = usage_dirty_table.c
        async with self._engine.connect() as connection:
            if self._dialect == "postgresql":
                connection = await connection.execution_options(isolation_level="REPEATABLE READ")
            async with connection.begin():
                dirty = (
                    select(d.hour)
                    .distinct()
                    .where(
                        d.hour >= rollup.ceil_hour(report.since),
                        d.hour < rollup.hour_of(report.until),
                    )
                )
                if report.tenant is not None:
                    dirty = dirty.where(d.tenant == report.tenant)
                dirty_hours = list((await connection.execute(dirty)).scalars())
                first, end, ranges = rollup.live_ranges(report.since, report.until, dirty_hours)
                rows: list[Any] = []
                if first < end:
                    rows += (await connection.execute(self._rollup_usage(report, first, end))).all()
                if ranges:
                    rows += (await connection.execute(self._live_usage(report, ranges))).all()
        return _merged_usage(rows, report)

    def _usage_filters(self, columns: Columns, report: UsageQuery) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        if report.tenant is not None:
            conditions.append(columns.tenant == report.tenant)
        for name in USAGE_FILTERS:
            value = getattr(report, name)
            if value is not None:
                conditions.append(columns[name] == value)
        return conditions

    def _dimension(self, columns: Columns, name: str, *, rollup_table: bool) -> Label[Any]:
        column = columns[DIMENSIONS[name]]
        if rollup_table and DIMENSIONS[name] in rollup.ROLLUP_DIMENSIONS:
            return func.nullif(column, "").label(name)
        return column.label(name)

    def _rollup_usage(self, report: UsageQuery, first: datetime, end: datetime) -> AnySelect:
        filtered = [name for name in USAGE_FILTERS if getattr(report, name) is not None]
        table = rollup.grain_for([DIMENSIONS[name] for name in report.dimensions], filtered)
        h = table.c
        keys = [self._dimension(h, name, rollup_table=True) for name in report.dimensions]
        if report.bucket is not None:
            keys.insert(0, self._bucket_expression(report.bucket, h.hour).label("bucket"))
        query = select(*keys, *rollup.rollup_sums(table)).where(
            h.hour >= first,
            h.hour < end,
            rollup.not_dirty(table, report.tenant),
            *self._usage_filters(h, report),
        )
        return query.group_by(*keys) if keys else query

    def _live_usage(
        self, report: UsageQuery, ranges: Sequence[tuple[datetime, datetime]]
    ) -> AnySelect:
        r = requests_table.c
        keys = [self._dimension(r, name, rollup_table=False) for name in report.dimensions]
        if report.bucket is not None:
            keys.insert(0, self._bucket_expression(report.bucket, r.created_at).label("bucket"))
        query = select(*keys, *rollup.request_aggregates()).where(
            shown(r),
            rollup.in_ranges(r.created_at, ranges),
            *self._usage_filters(r, report),
        )
        return query.group_by(*keys) if keys else query

    def _bucket_expression(self, bucket: str, column: ColumnElement[Any]) -> ColumnElement[Any]:
        if self._dialect == "postgresql":
            return func.date_trunc(bucket, func.timezone("UTC", column))
        # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC: the bucket is a prefix of it.
        return func.substr(column, 1, 10 if bucket == "day" else 13)


def _merged_usage(rows: Sequence[Row[*tuple[Any, ...]]], report: UsageQuery) -> list[UsageRow]:
    """Rows of the rollup and of the live part added up per bucket and group."""
    totals: dict[tuple[Any, ...], UsageRow] = {}
    for row in rows:
        values = row._mapping
        if not values["requests"]:
            continue
        bucket = _as_bucket(values["bucket"]) if report.bucket is not None else None
        groups = {name: values[name] for name in report.dimensions}
        key = (bucket, *groups.values())
        total = totals.get(key)
        if total is None:
            total = totals[key] = UsageRow(bucket=bucket, groups=groups)
        total.requests += int(values["requests"])
        total.completed += int(values["completed"] or 0)
        total.errors += int(values["errors"] or 0)
        total.cancelled += int(values["cancelled"] or 0)
        for name in rollup.TOKEN_SUMS:
            setattr(total, name, getattr(total, name) + int(values[name] or 0))
        total.cost_usd += float(values["cost_usd"] or 0.0)
        total.cache_hits += int(values["cache_hits"] or 0)
        total.cache_saved_usd += float(values["cache_saved_usd"] or 0.0)

    def order(key: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple((value is None, value if value is not None else "") for value in key)

    return [totals[key] for key in sorted(totals, key=order)]


def _filtered(query: AnySelect, filters: HistoryFilters) -> AnySelect:
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
    if filters.team_id is not None:
        query = query.where(r.team_id == filters.team_id)
    return query


def _as_bucket(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    text = str(value)
    if len(text) == 10:
        text += " 00"
    return datetime.fromisoformat(text + ":00:00").replace(tzinfo=UTC)
