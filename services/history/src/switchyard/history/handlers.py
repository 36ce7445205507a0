"""Recording events: the history consumer's handler. Knows nothing of Kafka.

`EventRecorder.record` gets a batch of events and, in one transaction, stores each event
not seen before in `history_events` and merges exactly those into the request projection
(`projection.py`). Redelivered or replayed events are skipped by their event id, so a
batch can be retried any number of times and the tables end up the same. The bus commits
its offsets only after `record` returns, i.e. after the database commit.

One outcome per request: a request's terminal events (`chat.completed`, `chat.failed`)
are stored only while it has no outcome yet, so history never holds two. The request rows
are locked first, so the expiry sweeper and the consumer cannot both record one. History's
own expiry is provisional: it is stored only for a request still pending, and a real
outcome arriving later replaces it (the expiry event is deleted, the row takes the real
outcome), because a late reply is what the client got.

Throughput: a batch costs a handful of statements whatever its size. On PostgreSQL each
statement sends one array per column and the server unnests them
(`INSERT ... SELECT FROM unnest(...)`), so a batch of 500 events is one round trip for the
event store and one per projection round, with nothing parsed per row on the client.
Every event is serialised to JSON once (pydantic's serializer, or orjson for redacted
ones). SQLite (embedded mode) uses executemany, which is in-process and cheap there.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from sqlalchemy import Table, Text, bindparam, cast, column, delete, func, select
from sqlalchemy.dialects.postgresql import JSON as PG_JSON
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import JSON
from typing_extensions import override

from switchyard.common.db import dialect_insert
from switchyard.common.events import (
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRequested,
    EnvelopeFields,
    Event,
    UsageRecorded,
)
from switchyard.history import metrics
from switchyard.history.jobs import expiry_event, expiry_event_id, is_history_expiry
from switchyard.history.models import (
    RequestStatus,
    WebhookStatus,
    events_table,
    requests_table,
    tenant_settings_table,
    webhooks_table,
)
from switchyard.history.privacy import redact_payload
from switchyard.history.projection import contribution, merge, upsert_statement
from switchyard.history.rollup import mark_dirty

log = structlog.get_logger("switchyard.history")

PENDING = RequestStatus.PENDING.value


class EventRecorder:
    """Persists consumed events: the event store (each event once, by id) and the `requests`
    projection, the usage rollup's dirty hours and job webhooks they lead to."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._writer: _Writer = (
            _PostgresWriter()
            if self._dialect == "postgresql"
            else _ExecutemanyWriter(self._dialect)
        )

    async def record(self, events: list[Event]) -> None:
        """Persist a batch exactly once; safe to call again with the same events."""
        unique = _without_chunks_and_repeats(events)
        if not unique:
            return
        started = time.perf_counter()
        try:
            async with self._engine.begin() as connection:
                new_events = await self._record_in(connection, unique)
        except Exception:
            # Rolled back as a whole; the bus retries the same batch and commits no offset.
            metrics.PERSIST_FAILURES.inc()
            raise
        metrics.PERSIST_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCHES.inc()
        metrics.EVENTS_DUPLICATE.inc(len(unique) - len(new_events))
        for event_type, count in Counter(event.type for event in new_events).items():
            metrics.EVENTS_PERSISTED.labels(event_type).inc(count)
        log.debug("events recorded", received=len(events), new=len(new_events))

    async def expire_overdue(self, cutoff: datetime, *, limit: int = 500) -> int:
        """Record history's own expiry for up to `limit` requests still pending whose
        deadline is before `cutoff`; returns how many. Rows another transaction is writing
        (a reply being recorded) are skipped, and the check and the expiry happen in one
        transaction, so an expiry never lands on a request that got its reply meanwhile."""
        r = requests_table.c
        query = (
            select(r.request_id, r.tenant)
            .where(r.status == PENDING, r.deadline < cutoff, r.request_body.is_not(None))
            .order_by(r.deadline)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with self._engine.begin() as connection:
            overdue = (await connection.execute(query)).all()
            if not overdue:
                return 0
            events = [expiry_event(tenant, request_id) for request_id, tenant in overdue]
            new_events = await self._record_in(connection, list(events))
        return len(new_events)

    async def _record_in(
        self, connection: AsyncConnection, events: list[EnvelopeFields]
    ) -> list[EnvelopeFields]:
        metadata_only = await _metadata_only_tenants(connection, {e.tenant for e in events})
        events, expiries_replaced = await self._one_outcome_per_request(connection, events)
        if not events:
            return []
        recorded_at = datetime.now(UTC)
        # Sorted by key so concurrent consumers take row locks in the same order (no deadlock).
        ordered = sorted(events, key=lambda event: event.id)
        inserted = await self._writer.insert_events(
            connection,
            [_event_row(event, recorded_at, event.tenant in metadata_only) for event in ordered],
        )
        new_events = [event for event in events if event.id in inserted]
        touched = await self._project(connection, new_events, metadata_only)
        webhooks = [
            _webhook_row(event, recorded_at)
            for event in new_events
            if isinstance(event, ChatRequested) and event.data.webhook_url
        ]
        if webhooks:
            insert = dialect_insert(webhooks_table, self._dialect).on_conflict_do_nothing(
                index_elements=[webhooks_table.c.request_id]
            )
            await connection.execute(insert, webhooks)
        replaced = sorted(
            {
                expiry_event_id(event.request_id)
                for event in new_events
                if isinstance(event, ChatCompleted | ChatFailed)
                and event.request_id in expiries_replaced
            }
        )
        if replaced:
            await connection.execute(
                delete(events_table).where(events_table.c.event_id.in_(replaced))
            )
            metrics.OUTCOMES_SUPERSEDED.labels("expiry_replaced").inc(len(replaced))
            log.info("history's expiry replaced by the real outcome", requests=len(replaced))
        # Last, so the usage rollup's marks are locked only until the commit that follows.
        await mark_dirty(connection, self._dialect, touched)
        return new_events

    async def _one_outcome_per_request(
        self, connection: AsyncConnection, events: list[EnvelopeFields]
    ) -> tuple[list[EnvelopeFields], set[str]]:
        """The events to store, without the terminal events of requests that already have
        their outcome; and the requests whose provisional expiry a real outcome replaces.

        Locks the rows of every request the batch touches, in request id order (the
        order the upsert takes them in, so concurrent consumers cannot deadlock), so that no
        other transaction records an outcome for them until this one commits."""
        terminal = [e for e in events if isinstance(e, ChatCompleted | ChatFailed)]
        if not terminal:
            return events, set()
        r = requests_table.c
        touched = {
            e.request_id
            for e in events
            if isinstance(e, ChatRequested | ChatCompleted | ChatFailed | UsageRecorded)
        }
        query = (
            select(r.request_id, r.status, r.outcome_provisional)
            .where(r.request_id.in_(sorted(touched)))
            .order_by(r.request_id)
            .with_for_update()
        )
        # request id -> True: a real outcome; False: history's provisional expiry.
        known: dict[str, bool] = {
            row.request_id: not row.outcome_provisional
            for row in await connection.execute(query)
            if row.status != PENDING
        }
        pending_rows = {e.request_id for e in terminal} - set(known)
        replaced: set[str] = set()
        dropped: list[tuple[EnvelopeFields, str]] = []
        kept: list[EnvelopeFields] = []
        for event in events:  # in arrival order: the first outcome is the one the client got
            if not isinstance(event, ChatCompleted | ChatFailed):
                kept.append(event)
                continue
            request_id = event.request_id
            real = known.get(request_id)
            if is_history_expiry(event):
                # Only for a request that is still pending (it may have been answered since
                # the sweeper looked), and never for one this batch answers.
                if real is None and request_id in pending_rows:
                    known[request_id] = False
                    kept.append(event)
                else:
                    dropped.append((event, "replied"))
                continue
            if real:
                dropped.append((event, "outcome_known"))
                continue
            if real is False:
                replaced.add(request_id)
            known[request_id] = True
            kept.append(event)
        if dropped:
            await self._count_superseded(connection, dropped)
        return kept, replaced

    async def _count_superseded(
        self, connection: AsyncConnection, dropped: list[tuple[EnvelopeFields, str]]
    ) -> None:
        # A redelivered copy of the stored outcome is a duplicate, not a second outcome.
        ids = [event.id for event, _ in dropped]
        stored = set(
            (
                await connection.execute(
                    select(events_table.c.event_id).where(events_table.c.event_id.in_(ids))
                )
            ).scalars()
        )
        for event, reason in dropped:
            if event.id in stored:
                continue
            metrics.OUTCOMES_SUPERSEDED.labels(reason).inc()
            log.info(
                "second outcome of a request not recorded",
                request_id=event.request_id,
                event_id=event.id,
                event_type=event.type,
                source=event.source,
                reason=reason,
            )

    async def _project(
        self, connection: AsyncConnection, events: list[EnvelopeFields], metadata_only: set[str]
    ) -> list[tuple[str, datetime]]:
        """Merge the events into their requests' rows; returns the rows' (tenant, created_at)
        as written (a row's creation time is the request's, whichever event came first)."""
        merged: dict[str, dict[str, Any]] = {}
        for event in events:
            row = contribution(event, redact=event.tenant in metadata_only)
            if row is None:
                continue
            # A batch often holds a request with its reply and usage: folded in arrival
            # order with the upsert's own rules, the row is written once, not three times.
            previous = merged.get(event.request_id)
            merged[event.request_id] = row if previous is None else merge(previous, row)
        if not merged:
            return []
        rows = sorted(merged.values(), key=lambda row: row["request_id"])
        return await self._writer.upsert_requests(connection, rows)


async def _metadata_only_tenants(connection: AsyncConnection, tenants: set[str]) -> set[str]:
    """Tenants of this batch that asked for metadata only (read in the batch's transaction)."""
    settings = tenant_settings_table.c
    query = select(settings.tenant).where(
        settings.tenant.in_(sorted(tenants)), settings.store_content.is_(False)
    )
    return set((await connection.execute(query)).scalars())


def _without_chunks_and_repeats(events: list[Event]) -> list[EnvelopeFields]:
    """Stream chunks are transient (the reply holds the whole answer); a batch may also hold
    the same event twice after a redelivery."""
    seen: set[str] = set()
    kept: list[EnvelopeFields] = []
    for event in events:
        if isinstance(event, ChatChunk) or event.id in seen:
            continue
        seen.add(event.id)
        kept.append(event)
    return kept


def _event_row(event: EnvelopeFields, recorded_at: datetime, redact: bool) -> dict[str, Any]:
    if redact:
        payload = orjson.dumps(redact_payload(event.model_dump(mode="json"))).decode()
    else:
        payload = event.model_dump_json()
    return {
        "event_id": event.id,
        "type": event.type,
        "request_id": event.request_id,
        "tenant": event.tenant,
        "source": event.source,
        "time": event.time,
        "schema_version": event.schema_version,
        "payload": payload,
        "recorded_at": recorded_at,
    }


def _webhook_row(event: ChatRequested, now: datetime) -> dict[str, Any]:
    return {
        "request_id": event.request_id,
        "tenant": event.tenant,
        "url": event.data.webhook_url,
        "status": WebhookStatus.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


# What the projection upsert returns of each row it wrote: for the usage rollup's marks.
_WRITTEN = (requests_table.c.tenant, requests_table.c.created_at)


class _Writer:
    async def insert_events(
        self, connection: AsyncConnection, rows: list[dict[str, Any]]
    ) -> set[str]:
        """Insert rows not stored yet (payload is JSON text); return the new event ids."""
        raise NotImplementedError

    async def upsert_requests(
        self, connection: AsyncConnection, rows: list[dict[str, Any]]
    ) -> list[tuple[str, datetime]]:
        """Merge contributions (at most one per request) into the projection; return each
        written row's (tenant, created_at)."""
        raise NotImplementedError


class _ExecutemanyWriter(_Writer):
    """Any dialect with INSERT ... ON CONFLICT: one executemany per statement."""

    def __init__(self, dialect: str) -> None:
        events = events_table.c
        # The payload arrives serialised: bound as text, stored as the JSON it already is.
        self._insert_events = (
            dialect_insert(events_table, dialect)
            .values({events.payload: bindparam("payload", type_=Text())})
            .on_conflict_do_nothing(index_elements=[events.event_id])
            .returning(events.event_id)
        )
        self._upsert_requests = upsert_statement(dialect).returning(*_WRITTEN)

    @override
    async def insert_events(
        self, connection: AsyncConnection, rows: list[dict[str, Any]]
    ) -> set[str]:
        result = await connection.execute(self._insert_events, rows)
        return set(result.scalars().all())

    @override
    async def upsert_requests(
        self, connection: AsyncConnection, rows: list[dict[str, Any]]
    ) -> list[tuple[str, datetime]]:
        return [tuple(row) for row in await connection.execute(self._upsert_requests, rows)]


class _PostgresWriter(_Writer):
    """PostgreSQL: a whole batch is one parameter, a JSON array of rows serialised by orjson
    in one pass (event payloads embedded as the JSON they already are), turned back into
    rows by the server (`INSERT ... SELECT FROM json(b)_to_recordset(...)`). One round trip per
    statement, nothing escaped or parsed per row on the client."""

    def __init__(self) -> None:
        self._insert_events = (
            pg_insert(events_table)
            .from_select(*_recordset_select(events_table, PG_JSON))
            .on_conflict_do_nothing(index_elements=[events_table.c.event_id])
            .returning(events_table.c.event_id)
        )
        self._upsert_requests = upsert_statement(
            "postgresql",
            pg_insert(requests_table).from_select(*_recordset_select(requests_table, JSONB)),
        ).returning(*_WRITTEN)

    @override
    async def insert_events(
        self, connection: AsyncConnection, rows: list[dict[str, Any]]
    ) -> set[str]:
        for row in rows:
            row["payload"] = orjson.Fragment(row["payload"])
        result = await connection.execute(self._insert_events, {"rows": _json_rows(rows)})
        return set(result.scalars().all())

    @override
    async def upsert_requests(
        self, connection: AsyncConnection, rows: list[dict[str, Any]]
    ) -> list[tuple[str, datetime]]:
        result = await connection.execute(self._upsert_requests, {"rows": _json_rows(rows)})
        return [tuple(row) for row in result]


def _recordset_select(table: Table, json_type: type) -> tuple[list[str], Any]:
    """Column names and `SELECT ... FROM json(b)_to_recordset(CAST(:rows AS ...)) AS src(...)`
    with every column of `table` at its own type, JSON documents as `json_type` (what they
    are in that table on PostgreSQL).

    A table with jsonb columns (the projection) takes the document as jsonb: it is parsed
    once and each value taken out as jsonb as it is. The event store, whose payloads are
    json, takes it as json, cheaper still: only validated, never re-encoded."""
    columns = [
        column(c.name, json_type() if isinstance(c.type, JSON) else c.type) for c in table.columns
    ]
    to_recordset = func.jsonb_to_recordset if json_type is JSONB else func.json_to_recordset
    source = (
        to_recordset(cast(bindparam("rows", type_=Text()), json_type()))
        .table_valued(*columns)
        .render_derived(name="src", with_types=True)
    )
    return [c.name for c in table.columns], select(*[source.c[c.name] for c in table.columns])


def _json_rows(rows: list[dict[str, Any]]) -> str:
    text = orjson.dumps(rows).decode()
    if "\\u0000" in text:
        # PostgreSQL text and jsonb cannot hold NUL characters: store U+FFFD instead.
        text = text.replace("\\u0000", "\\ufffd")
    return text
