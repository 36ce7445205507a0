"""Recording events: the history consumer's handler. Knows nothing of Kafka.

`EventRecorder.record` gets a batch of events and, in one transaction, stores each event
not seen before in `history_events` and merges exactly those into the request projection
(`projection.py`). Redelivered or replayed events are skipped as copies of stored ones
(the same event id for the same tenant and request), so a batch can be retried any number
of times and the tables end up the same. Event ids are public, so an event whose id is
already stored for another tenant or request is not a copy: it is stored under an id
derived from its own (`collision_id`), counted in
`switchyard_history_event_id_collisions_total`. The bus commits its offsets only after
`record` returns, i.e. after the database commit.

A request arriving at a row another tenant's events made before it takes the row back
(`projection.reclaims`) with its own reply and usage stored meanwhile, which that row had
ignored (`EventRecorder._reclaimed`): an event naming another tenant never changes, nor
makes history drop, anything of a request.

One outcome per request: a request's terminal events (`chat.completed`, `chat.failed`)
are stored only while it has no outcome yet, so history never holds two. The request rows
are locked first, so the expiry sweeper and the consumer cannot both record one. History's
own expiry is provisional: it is stored only for a request still pending, and a real
outcome arriving later replaces it (the expiry event is deleted, the row takes the real
outcome), because a late reply is what the client got; a job's webhook then delivers the
real outcome too, even if it delivered the expiry already (`_write_webhooks`).

Throughput: a batch costs a handful of statements whatever its size. On PostgreSQL a
batch of new events is two statements between BEGIN and COMMIT, each one round trip:
the tenants' privacy settings read together with the locks on the requests' rows; then
the event store's insert, the projection's upsert and the usage rollup's marks of the
rows' hours, in one statement (data-modifying `WITH`s; the projection is written there
only if every event turned out new, otherwise in a statement of its own for the new
ones). The rows travel as one JSON document per statement that the
server turns back into rows (`json_to_recordset`), so nothing is escaped or parsed per row
on the client. Every event is serialised to JSON once (pydantic's serializer, or orjson
for redacted ones). SQLite (embedded mode) runs one statement per step with executemany,
which is in-process and cheap there.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import reduce
from typing import Any, NamedTuple

import orjson
import structlog
from sqlalchemy import (
    Boolean,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    column,
    delete,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import JSON as PG_JSON
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import JSON
from typing_extensions import override

from switchyard.common import exactjson
from switchyard.common.db import dialect_insert
from switchyard.common.events import (
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRequested,
    ChatStarted,
    EnvelopeFields,
    Event,
    EventDecodeError,
    UsageRecorded,
    decode_event_off_loop,
    new_id,
)
from switchyard.history import metrics
from switchyard.history.cache import link_hits
from switchyard.history.jobs import expiry_event, expiry_event_id, is_history_expiry
from switchyard.history.models import (
    RequestStatus,
    UTCDateTime,
    WebhookStatus,
    events_table,
    requests_table,
    tenant_settings_table,
    usage_dirty_table,
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
        # Copies within the batch count as well as those stored before it.
        repeats = sum(not isinstance(event, ChatChunk) for event in events) - len(unique)
        metrics.EVENTS_DUPLICATE.inc(repeats + len(unique) - len(new_events))
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
        terminal = any(isinstance(e, ChatCompleted | ChatFailed) for e in events)
        # A batch that may record an outcome locks its requests' rows (see below); a request
        # locks its row too, which exists before it only when its reply or usage came first
        # (or another tenant's events made it: see `_reclaimed`).
        lock = sorted(
            {
                e.request_id
                for e in events
                if isinstance(e, ChatRequested) or (terminal and _projected(e))
            }
        )
        metadata_only, stored_rows = await self._writer.read_state(
            connection, {e.tenant for e in events}, lock
        )
        events, expiries_replaced = await self._one_outcome_per_request(
            connection, events, stored_rows
        )
        if not events:
            return []
        own_stored, reclaimed_from = await self._reclaimed(connection, events, stored_rows)
        recorded_at = datetime.now(UTC)
        new_events, projected = await self._insert_new(
            connection,
            events,
            recorded_at,
            metadata_only,
            # What the projection becomes if every event is new (the usual case), for a
            # writer that writes it with the events, in the same statement.
            self._contributions(events, metadata_only, own_stored) if self._writer.combines else [],
        )
        if not projected:
            rows = self._contributions(new_events, metadata_only, own_stored)
            if rows:
                await self._writer.upsert_requests(connection, rows)
        if reclaimed_from and any(isinstance(e, ChatRequested) for e in new_events):
            # The other tenant's usage no longer counts the row it lost.
            await mark_dirty(connection, self._dialect, reclaimed_from)
        await self._settle_cache_hits(connection, new_events)
        replaced = sorted(
            {
                (event.tenant, event.request_id)
                for event in new_events
                if isinstance(event, ChatCompleted | ChatFailed)
                and event.request_id in expiries_replaced
            }
        )
        await self._write_webhooks(connection, new_events, replaced, recorded_at)
        if replaced:
            # The expiry under its id, or the one derived from it if that was taken.
            e = events_table.c
            expiries = [
                and_(e.tenant == tenant, e.request_id == request_id, e.event_id.in_(ids))
                for tenant, request_id in replaced
                for expiry in [expiry_event_id(request_id)]
                for ids in [
                    [
                        expiry,
                        collision_id(expiry, tenant, request_id),
                        collision_id(expiry, tenant, request_id, "chat.failed"),
                    ]
                ]
            ]
            await connection.execute(delete(events_table).where(or_(*expiries)))
            metrics.OUTCOMES_SUPERSEDED.labels("expiry_replaced").inc(len(replaced))
            log.info("history's expiry replaced by the real outcome", requests=len(replaced))
        return new_events

    async def _write_webhooks(
        self,
        connection: AsyncConnection,
        new_events: list[EnvelopeFields],
        replaced: list[tuple[str, str]],
        recorded_at: datetime,
    ) -> None:
        """Keep the job webhooks in step with the rows just written: register the webhook
        of each new request that asked for one, and deliver the real outcome of the jobs
        whose provisional expiry it replaced (`replaced`: (tenant, request id)).

        A request's webhook is registered whatever its row holds already: an outcome may be
        recorded before its request (a reply overtaking it, or a cancellation recorded
        first), and is then delivered as soon as the request is. It is registered only if
        the row is the request's own: a request naming another tenant than the row's
        leaves it unchanged (`projection.same_tenant`) and must not have the row's job
        POSTed to its address.

        A replaced expiry may have been delivered already (or be on its way: any attempt
        made), so the webhook starts again for the real outcome under a new revision: its
        delivery id differs from the expiry's, which a receiver deduplicating on ids would
        otherwise drop, and an attempt still carrying the expiry cannot settle it
        (`WebhookDispatcher._settle`). The update takes the webhook's row lock whether
        or not an attempt was made, so a delivery claimed meanwhile either sees the real
        outcome or counts as an attempt made."""
        requested = [
            event
            for event in new_events
            if isinstance(event, ChatRequested) and event.data.webhook_url
        ]
        if requested:
            r = requests_table.c
            owners = dict(
                (
                    await connection.execute(
                        select(r.request_id, r.tenant).where(
                            r.request_id.in_(sorted({e.request_id for e in requested}))
                        )
                    )
                ).all()
            )
            rows = [
                _webhook_row(event, recorded_at)
                for event in requested
                if owners.get(event.request_id) == event.tenant
            ]
            if len(rows) < len(requested):
                log.warning(
                    "webhook of a request naming another tenant than its row's not registered",
                    requests=len(requested) - len(rows),
                )
            if rows:
                insert = dialect_insert(webhooks_table, self._dialect).on_conflict_do_nothing(
                    index_elements=[webhooks_table.c.request_id]
                )
                await connection.execute(insert, rows)
        if replaced:
            w = webhooks_table.c
            await connection.execute(
                update(webhooks_table)
                .where(
                    or_(
                        *(
                            and_(w.tenant == tenant, w.request_id == request_id)
                            for tenant, request_id in replaced
                        )
                    )
                )
                .values(
                    revision=case((w.attempts > 0, w.revision + 1), else_=w.revision),
                    status=WebhookStatus.PENDING.value,
                    attempts=0,
                    next_attempt_at=recorded_at,
                    last_attempt_at=None,
                    last_status_code=None,
                    last_error=None,
                    delivered_at=None,
                )
            )

    async def _insert_new(
        self,
        connection: AsyncConnection,
        events: list[EnvelopeFields],
        recorded_at: datetime,
        metadata_only: set[str],
        contributions: list[dict[str, Any]],
    ) -> tuple[list[EnvelopeFields], bool]:
        """Store the events not stored yet; return the new ones (in arrival order) and
        whether the projection's `contributions` were written with them
        (`_Writer.insert_events`).

        An event is a copy of a stored one only if it is the same event: the same id for
        the same tenant, request and type. Event ids are public (every event is on the topics, and
        inference derives a reply's and a usage record's from their request's), so a
        producer can write an event under the id another tenant's event will come with;
        that event is then stored under an id derived from its id, tenant and request
        (`collision_id`; and its type, when the id's event is of its own tenant and
        request: a usage record under its reply's id), where a redelivered copy of it
        finds it again. Only ids that
        conflicted are looked up: a batch of new events costs nothing more."""
        ids = [event.id for event in events]
        rows = {
            index: _event_row(event, recorded_at, event.tenant in metadata_only)
            for index, event in enumerate(events)
        }
        # Events of a batch under one id (another tenant's or request's: copies are gone)
        # are stored one after another, as if they had come in batches of their own.
        first, later = _one_per_id(range(len(events)), ids)
        inserted, projected = await self._writer.insert_events(
            connection, [rows[index] for index in first], [] if later else contributions
        )
        new = {index for index in first if ids[index] in inserted}
        conflicted = [index for index in first if index not in new] + later
        taken_by: dict[int, tuple[str, str, str]] = {}
        for attempt in range(_COLLISION_ATTEMPTS):
            if not conflicted:
                break
            owners = await _owners(connection, sorted({ids[index] for index in conflicted}))
            retry: list[int] = []
            for index in conflicted:
                event, owner = events[index], owners.get(ids[index])
                if owner == (event.tenant, event.request_id, event.type):
                    continue  # a copy of a stored event: the usual redelivery
                if owner is not None:
                    taken_by.setdefault(index, owner)
                    # A chain of derived ids a producer has filled as well ends in a random
                    # one: the event is then stored again if redelivered, but never lost.
                    base = ids[index] if attempt < _COLLISION_ATTEMPTS - 1 else new_id()
                    ids[index] = collision_id(
                        base,
                        event.tenant,
                        event.request_id,
                        # Of the same request (another type of event): derived apart from
                        # what another tenant's or request's event under this id gets.
                        event.type if owner[:2] == (event.tenant, event.request_id) else None,
                    )
                retry.append(index)  # (an id whose event was deleted meanwhile is free again)
            retry, conflicted = _one_per_id(retry, ids)
            for index in retry:
                rows[index]["event_id"] = ids[index]
            if retry:
                inserted, _ = await self._writer.insert_events(
                    connection, [rows[index] for index in retry], []
                )
                new.update(index for index in retry if ids[index] in inserted)
                conflicted += [index for index in retry if ids[index] not in inserted]
        if conflicted:
            log.error("events not stored: their ids kept colliding", events=len(conflicted))
        for index in sorted(new):
            if ids[index] != events[index].id:
                _count_collision(events[index], ids[index], taken_by.get(index))
        return [events[index] for index in sorted(new)], projected

    async def _reclaimed(
        self,
        connection: AsyncConnection,
        events: list[EnvelopeFields],
        stored_rows: dict[str, StoredRow],
    ) -> tuple[dict[tuple[str, str], list[EnvelopeFields]], list[tuple[str, datetime]]]:
        """For each request of the batch that takes back a row another tenant's events made
        before it (`projection.reclaims`): the events of its own tenant already stored for
        it, which that row ignored (another tenant owned it) and which the request's row
        must now hold (its reply and usage may well come before it); and the (tenant,
        created_at) of the rows taken back, whose usage hours change. Read only for such
        rows, locked by `read_state` until the transaction ends, so no event of the
        request is recorded meanwhile by another consumer."""
        reclaiming = {
            (event.tenant, event.request_id)
            for event in events
            if isinstance(event, ChatRequested)
            and (row := stored_rows.get(event.request_id)) is not None
            and row.tenant is not None
            and row.tenant != event.tenant
            and not row.has_request
        }
        if not reclaiming:
            return {}, []
        e = events_table.c
        result = await connection.execute(
            select(e.tenant, e.request_id, e.payload)
            .where(
                e.request_id.in_(sorted({request_id for _, request_id in reclaiming})),
                e.tenant.in_(sorted({tenant for tenant, _ in reclaiming})),
            )
            .order_by(e.recorded_at, e.time, e.event_id)
        )
        own: dict[tuple[str, str], list[EnvelopeFields]] = {}
        for tenant, request_id, payload in result:
            if (tenant, request_id) not in reclaiming:
                continue
            try:
                event = await decode_event_off_loop(exactjson.dumps(payload))
            except EventDecodeError:
                log.warning("stored event not readable", request_id=request_id)
                continue
            own.setdefault((tenant, request_id), []).append(event)
        taken = []
        for _, request_id in sorted(reclaiming):
            row = stored_rows[request_id]
            if row.tenant is not None and row.created_at is not None:
                taken.append((row.tenant, row.created_at))
        log.info(
            "requests took back rows another tenant's events made",
            requests=len(reclaiming),
            own_events=sum(len(found) for found in own.values()),
        )
        return own, taken

    async def _settle_cache_hits(
        self, connection: AsyncConnection, new_events: list[EnvelopeFields]
    ) -> None:
        """Link the batch's cache hits to the requests they reused (a hit's saving is its
        source's cost, whichever is recorded first). Only batches holding hit replies run
        a statement; the hits' hours are marked again for the usage rollup by the sweeper
        once their source's cost is recorded (cache.py)."""
        await link_hits(connection, self._dialect, new_events)

    async def _one_outcome_per_request(
        self,
        connection: AsyncConnection,
        events: list[EnvelopeFields],
        outcomes: dict[str, StoredRow],
    ) -> tuple[list[EnvelopeFields], set[str]]:
        """The events to store, without the terminal events of requests that already have
        their outcome; and the requests whose provisional expiry a real outcome replaces.

        `outcomes`: the stored rows of the batch's requests (`StoredRow`), read by
        `_Writer.read_state` with their rows locked (in request id order, the order the
        upsert takes them in, so concurrent consumers cannot deadlock), so that no other
        transaction records an outcome for them until this one commits. Only the
        requests' own for a batch without terminal events (which returns at once). An outcome stored
        under another tenant is not this request's (only a producer writing under another
        tenant's request id makes one: `projection.same_tenant`), and never stands in for
        it: outcomes are told apart by (tenant, request id)."""
        terminal = [e for e in events if isinstance(e, ChatCompleted | ChatFailed)]
        if not terminal:
            return events, set()

        def key(event: EnvelopeFields) -> tuple[str | None, str]:
            return (event.tenant, event.request_id)

        # (tenant, request id) -> True: a real outcome; False: history's provisional expiry.
        known: dict[tuple[str | None, str], bool] = {
            (row.tenant, request_id): not row.outcome_provisional
            for request_id, row in outcomes.items()
            if row.status != PENDING
        }
        pending_rows = {key(e) for e in terminal} - set(known)
        replaced: set[str] = set()
        dropped: list[tuple[EnvelopeFields, str]] = []
        kept: list[EnvelopeFields] = []
        for event in events:  # in arrival order: the first outcome is the one the client got
            if not isinstance(event, ChatCompleted | ChatFailed):
                kept.append(event)
                continue
            request_id, owner = event.request_id, key(event)
            real = known.get(owner)
            if is_history_expiry(event):
                # Only for a request that is still pending (it may have been answered since
                # the sweeper looked), and never for one this batch answers.
                if real is None and owner in pending_rows:
                    known[owner] = False
                    kept.append(event)
                else:
                    dropped.append((event, "replied"))
                continue
            if real:
                dropped.append((event, "outcome_known"))
                continue
            if real is False:
                replaced.add(request_id)
            known[owner] = True
            kept.append(event)
        if dropped:
            await self._count_superseded(connection, dropped)
        return kept, replaced

    async def _count_superseded(
        self, connection: AsyncConnection, dropped: list[tuple[EnvelopeFields, str]]
    ) -> None:
        # A redelivered copy of the stored outcome is a duplicate, not a second outcome: the
        # same event, stored under its id or, if that was taken, the id derived from it.
        def ids_of(event: EnvelopeFields) -> tuple[str, str, str]:
            return (
                event.id,
                collision_id(event.id, event.tenant, event.request_id),
                collision_id(event.id, event.tenant, event.request_id, event.type),
            )

        owners = await _owners(
            connection, sorted({i for event, _ in dropped for i in ids_of(event)})
        )
        for event, reason in dropped:
            if any(
                owners.get(i) == (event.tenant, event.request_id, event.type) for i in ids_of(event)
            ):
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

    @staticmethod
    def _contributions(
        events: list[EnvelopeFields],
        metadata_only: set[str],
        own_stored: dict[tuple[str, str], list[EnvelopeFields]],
    ) -> list[dict[str, Any]]:
        """The events' contributions to their requests' rows, one per request (folded in
        arrival order), sorted by request id (the order the upsert locks them in). A
        request taking back its row (`_reclaimed`) brings its own events stored before it
        (`own_stored`): they came first."""
        merged: dict[str, dict[str, Any]] = {}
        for event in events:
            row = contribution(event, redact=event.tenant in metadata_only)
            if row is None:
                continue
            if isinstance(event, ChatRequested):
                earlier = (
                    contribution(stored, redact=event.tenant in metadata_only)
                    for stored in own_stored.get((event.tenant, event.request_id), [])
                )
                row = reduce(merge, [*(c for c in earlier if c is not None), row])
            # A batch often holds a request with its reply and usage: folded in arrival
            # order with the upsert's own rules, the row is written once, not three times.
            previous = merged.get(event.request_id)
            merged[event.request_id] = row if previous is None else merge(previous, row)
        return sorted(merged.values(), key=lambda row: row["request_id"])


def _projected(event: EnvelopeFields) -> bool:
    """Whether the event changes its request's row in the projection."""
    return isinstance(
        event, ChatRequested | ChatCompleted | ChatFailed | ChatStarted | UsageRecorded
    )


def _without_chunks_and_repeats(events: list[Event]) -> list[EnvelopeFields]:
    """Stream chunks are transient (the reply holds the whole answer); a batch may also hold
    the same event twice after a redelivery (the same id for the same tenant and request:
    another event under its id is not a copy of it)."""
    seen: set[tuple[str, str, str]] = set()
    kept: list[EnvelopeFields] = []
    for event in events:
        key = (event.id, event.tenant, event.request_id)
        if isinstance(event, ChatChunk) or key in seen:
            continue
        seen.add(key)
        kept.append(event)
    return kept


# How many derived ids an event whose id is taken tries (`EventRecorder._insert_new`).
_COLLISION_ATTEMPTS = 4


def collision_id(event_id: str, tenant: str, request_id: str, type: str | None = None) -> str:
    """The id an event of `tenant` and `request_id` is stored under when `event_id` is
    already taken by another tenant's or request's event, or (`type` given: the event's)
    by another type of event of the same request: deterministic, so a redelivered copy
    finds it, and within `history_events.event_id` (64 characters)."""
    key = f"{tenant}\0{request_id}\0{event_id}"
    if type is not None:
        key += f"\0{type}"
    digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return f"collision-{digest}"


def _one_per_id(indexes: Iterable[int], ids: list[str]) -> tuple[list[int], list[int]]:
    """`indexes` (of events whose ids are `ids`) split into the first of each id, sorted by
    id (the order concurrent consumers take row locks in: no deadlock), and the others."""
    first: dict[str, int] = {}
    others: list[int] = []
    for index in indexes:
        if ids[index] in first:
            others.append(index)
        else:
            first[ids[index]] = index
    return [first[event_id] for event_id in sorted(first)], others


def _count_collision(
    event: EnvelopeFields, stored_as: str, owner: tuple[str, str, str] | None
) -> None:
    """Count and log an event stored under a derived id (`owner`: whose event has its id,
    None for one of its own batch)."""
    metrics.EVENT_ID_COLLISIONS.labels(event.type).inc()
    log.warning(
        "event id already taken by another tenant's, request's or type's event; stored "
        "under an id derived from it",
        event_id=event.id,
        stored_as=stored_as,
        event_type=event.type,
        tenant=event.tenant,
        request_id=event.request_id,
        source=event.source,
        taken_by_tenant=owner[0] if owner else None,
        taken_by_request_id=owner[1] if owner else None,
        taken_by_type=owner[2] if owner else None,
    )


async def _owners(connection: AsyncConnection, ids: list[str]) -> dict[str, tuple[str, str, str]]:
    """The (tenant, request id, type) of the stored events among `ids`."""
    e = events_table.c
    result = await connection.execute(
        select(e.event_id, e.tenant, e.request_id, e.type).where(e.event_id.in_(ids))
    )
    return {event_id: (tenant, request_id, kind) for event_id, tenant, request_id, kind in result}


def _event_row(event: EnvelopeFields, recorded_at: datetime, redact: bool) -> dict[str, Any]:
    if redact:
        payload = exactjson.dumps(redact_payload(event.model_dump(mode="json"))).decode()
    else:
        payload = event.model_dump_json()
    return {
        # The event's id, unless that was taken (then `EventRecorder._insert_new` derives
        # another: `collision_id`); the payload keeps the id the event came with.
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


class StoredRow(NamedTuple):
    """What the recorder reads of a request's stored row before writing its events."""

    status: str
    outcome_provisional: bool | None
    tenant: str | None
    # Whether its `chat.requested` is there (a row a reply or usage record made has none).
    has_request: bool | None
    created_at: datetime | None


# What `StoredRow` reads, after the request id.
_STORED_ROW = (
    requests_table.c.request_id,
    requests_table.c.status,
    requests_table.c.outcome_provisional,
    requests_table.c.tenant,
    requests_table.c.request_body.is_not(None).label("has_request"),
    requests_table.c.created_at,
)


class _Writer:
    """The statements one batch runs, in one dialect's best form. This base runs one plain
    statement per step (any dialect with INSERT ... ON CONFLICT ... RETURNING)."""

    # Whether `insert_events` can write the projection's rows in the same statement.
    combines = False

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect
        r, settings = requests_table.c, tenant_settings_table.c
        self._metadata_only = select(settings.tenant).where(
            settings.tenant.in_(bindparam("tenants", expanding=True)),
            settings.store_content.is_(False),
        )
        self._lock_outcomes = (
            select(*_STORED_ROW)
            .where(r.request_id.in_(bindparam("lock", expanding=True)))
            .order_by(r.request_id)
            .with_for_update()
        )

    async def read_state(
        self, connection: AsyncConnection, tenants: set[str], lock: list[str]
    ) -> tuple[set[str], dict[str, StoredRow]]:
        """The tenants among `tenants` that asked for metadata only, and the stored
        rows of the requests in `lock` (sorted ids; may be empty), locked
        until the transaction ends. Both read in the batch's transaction, so a settings
        change committed before it is honoured by this batch."""
        metadata_only = set(
            (await connection.execute(self._metadata_only, {"tenants": sorted(tenants)})).scalars()
        )
        outcomes: dict[str, StoredRow] = {}
        if lock:
            rows = await connection.execute(self._lock_outcomes, {"lock": lock})
            outcomes = {request_id: StoredRow(*stored) for request_id, *stored in rows}
        return metadata_only, outcomes

    async def insert_events(
        self,
        connection: AsyncConnection,
        rows: list[dict[str, Any]],
        contributions: list[dict[str, Any]],
    ) -> tuple[set[str], bool]:
        """Insert rows not stored yet (payload is JSON text); return the new event ids and
        whether `contributions` (the projection's rows if every event is new, as
        `upsert_requests` takes them) were written too: a writer may do that when every
        event turns out to be new, and never otherwise."""
        raise NotImplementedError

    async def upsert_requests(
        self, connection: AsyncConnection, rows: list[dict[str, Any]]
    ) -> None:
        """Merge contributions (at most one per request, sorted by request id) into the
        projection and mark the usage rollup's (tenant, hour) of every row written."""
        raise NotImplementedError


class _ExecutemanyWriter(_Writer):
    """Any dialect with INSERT ... ON CONFLICT: one executemany per statement."""

    def __init__(self, dialect: str) -> None:
        super().__init__(dialect)
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
        self,
        connection: AsyncConnection,
        rows: list[dict[str, Any]],
        contributions: list[dict[str, Any]],
    ) -> tuple[set[str], bool]:
        result = await connection.execute(self._insert_events, rows)
        return set(result.scalars().all()), False

    @override
    async def upsert_requests(
        self, connection: AsyncConnection, rows: list[dict[str, Any]]
    ) -> None:
        written = [tuple(row) for row in await connection.execute(self._upsert_requests, rows)]
        await mark_dirty(connection, self._dialect, written)


class _PostgresWriter(_Writer):
    """PostgreSQL: one round trip per step. A whole batch is one parameter, a JSON array of
    rows serialised by orjson in one pass (event payloads embedded as the JSON they
    already are), turned back into rows by the server
    (`INSERT ... SELECT FROM json(b)_to_recordset(...)`): nothing escaped or parsed per row
    on the client. The settings and the row locks are one statement; the event store's
    insert, the projection's upsert and the rollup's marks are another."""

    combines = True

    def __init__(self) -> None:
        super().__init__("postgresql")
        r, settings = requests_table.c, tenant_settings_table.c
        # FOR UPDATE is not allowed on a UNION's branches, but is inside a subquery.
        locked = (
            select(*_STORED_ROW)
            .where(r.request_id == any_(bindparam("lock", type_=ARRAY(String()))))
            .order_by(r.request_id)
            .with_for_update()
            .subquery("locked")
        )
        self._read_state = union_all(
            select(
                literal("request").label("kind"),
                locked.c.request_id.label("key"),
                locked.c.status,
                locked.c.outcome_provisional,
                locked.c.tenant,
                locked.c.has_request,
                locked.c.created_at,
            ),
            select(
                literal("tenant"),
                settings.tenant,
                cast(null(), String()),
                cast(null(), Boolean()),
                cast(null(), String()),
                cast(null(), Boolean()),
                cast(null(), UTCDateTime()),
            ).where(
                settings.tenant == any_(bindparam("tenants", type_=ARRAY(String()))),
                settings.store_content.is_(False),
            ),
        )
        self._insert_events = (
            pg_insert(events_table)
            .from_select(*_recordset_select(events_table, PG_JSON, "events"))
            .on_conflict_do_nothing(index_elements=[events_table.c.event_id])
            .returning(events_table.c.event_id)
        )
        names, contributions = _recordset_select(requests_table, JSONB, "rows")
        written, marks = _upsert_and_mark(
            upsert_statement(
                "postgresql", pg_insert(requests_table).from_select(names, contributions)
            )
        )
        self._upsert_requests = select(func.count()).select_from(written).add_cte(marks)
        # Both in one: the projection is written only if every event was new (the event
        # store's insert runs to its end first: the upsert counts what it returned).
        inserted = self._insert_events.cte("inserted")
        all_new = select(func.count()).select_from(inserted).scalar_subquery() == bindparam(
            "expected"
        )
        written, marks = _upsert_and_mark(
            upsert_statement(
                "postgresql",
                pg_insert(requests_table).from_select(names, contributions.where(all_new)),
            )
        )
        self._insert_and_upsert = select(inserted.c.event_id).add_cte(marks)

    @override
    async def read_state(
        self, connection: AsyncConnection, tenants: set[str], lock: list[str]
    ) -> tuple[set[str], dict[str, StoredRow]]:
        result = await connection.execute(
            self._read_state, {"tenants": sorted(tenants), "lock": lock}
        )
        metadata_only: set[str] = set()
        outcomes: dict[str, StoredRow] = {}
        for kind, key, *stored in result:
            if kind == "tenant":
                metadata_only.add(key)
            else:
                outcomes[key] = StoredRow(*stored)
        return metadata_only, outcomes

    @override
    async def insert_events(
        self,
        connection: AsyncConnection,
        rows: list[dict[str, Any]],
        contributions: list[dict[str, Any]],
    ) -> tuple[set[str], bool]:
        for row in rows:
            if isinstance(row["payload"], str):  # (not yet, if retried under another id)
                row["payload"] = orjson.Fragment(row["payload"])
        if not contributions:
            result = await connection.execute(self._insert_events, {"events": _json_rows(rows)})
            return set(result.scalars().all()), False
        result = await connection.execute(
            self._insert_and_upsert,
            {
                "events": _json_rows(rows),
                "expected": len(rows),
                "rows": _json_rows(contributions),
                "marked_at": datetime.now(UTC),
            },
        )
        inserted = set(result.scalars().all())
        return inserted, len(inserted) == len(rows)

    @override
    async def upsert_requests(
        self, connection: AsyncConnection, rows: list[dict[str, Any]]
    ) -> None:
        await connection.execute(
            self._upsert_requests, {"rows": _json_rows(rows), "marked_at": datetime.now(UTC)}
        )


def _upsert_and_mark(upsert: Any) -> tuple[Any, Any]:
    """The CTEs `written AS (<upsert> RETURNING tenant, created_at)` and `marks AS (INSERT
    INTO history_usage_dirty SELECT DISTINCT tenant, <hour>, :marked_at FROM written ORDER
    BY tenant, hour ON CONFLICT DO UPDATE ...)`: the projection's rows and the usage
    rollup's marks for their (tenant, hour), as `rollup.mark_dirty` writes them, in one
    statement, the marks taken in key order (no deadlock). A statement runs both by
    adding `marks` (which reads `written`)."""
    written = upsert.returning(*_WRITTEN).cte("written")
    hour = func.date_trunc(
        literal_column("'hour'"),
        written.c.created_at,
        literal_column("'UTC'"),
        type_=UTCDateTime(),
    )
    marks = pg_insert(usage_dirty_table).from_select(
        ["tenant", "hour", "marked_at"],
        select(
            written.c.tenant.label("tenant"),
            hour.label("hour"),
            bindparam("marked_at", type_=UTCDateTime()).label("marked_at"),
        )
        .distinct()
        .order_by("tenant", "hour"),
    )
    marks = marks.on_conflict_do_update(
        index_elements=["tenant", "hour"], set_={"marked_at": marks.excluded.marked_at}
    )
    return written, marks.cte("marks")


def _recordset_select(table: Table, json_type: type, parameter: str) -> tuple[list[str], Any]:
    """Column names and `SELECT ... FROM json(b)_to_recordset(CAST(:<parameter> AS ...)) AS
    src(...)`
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
        to_recordset(cast(bindparam(parameter, type_=Text()), json_type()))
        .table_valued(*columns)
        .render_derived(name="src", with_types=True)
    )
    return [c.name for c in table.columns], select(*[source.c[c.name] for c in table.columns])


# A NUL character as JSON writes it (`\u0000`), not a backslash the text itself holds (`\\`)
# followed by `u0000`: the escape is preceded by an even number of backslashes.
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _json_rows(rows: list[dict[str, Any]]) -> str:
    """`rows` as one JSON array for PostgreSQL, whose text and jsonb cannot hold NUL
    characters: each is stored as U+FFFD; the six characters `\\u0000` a text holds stay.
    A document holding an integer beyond 64 bits (a reply's, which orjson cannot write) is
    written exactly by `exactjson` and embedded as it is."""
    try:
        text = orjson.dumps(rows).decode()
    except TypeError as exc:
        if "64-bit" not in str(exc):
            raise
        exact = [
            {
                name: orjson.Fragment(exactjson.dumps(value))
                if isinstance(value, dict | list)
                else value
                for name, value in row.items()
            }
            for row in rows
        ]
        text = orjson.dumps(exact).decode()
    if "\\u0000" in text:
        text = _NUL_ESCAPE.sub(r"\1\\ufffd", text)
    return text
