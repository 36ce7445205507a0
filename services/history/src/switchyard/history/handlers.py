"""Recording events: the history consumer's handler. Knows nothing of Kafka.

`EventRecorder.record` gets a batch of events and, in one transaction, stores each event
not seen before in `history_events` and merges exactly those into the request projection
(`projection.py`). Redelivered or replayed events are skipped by their event id, so a
batch can be retried any number of times and the tables end up the same. The bus commits
its offsets only after `record` returns, i.e. after the database commit.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from switchyard.common.db import dialect_insert
from switchyard.common.events import ChatChunk, EnvelopeFields, Event
from switchyard.history import metrics
from switchyard.history.models import events_table
from switchyard.history.projection import contribution, upsert_statement

log = structlog.get_logger("switchyard.history")


class EventRecorder:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._insert_events = (
            dialect_insert(events_table, self._dialect)
            .on_conflict_do_nothing(index_elements=[events_table.c.event_id])
            .returning(events_table.c.event_id)
        )
        self._upsert_requests = upsert_statement(self._dialect)

    async def record(self, events: list[Event]) -> None:
        """Persist a batch exactly once; safe to call again with the same events."""
        unique = _without_chunks_and_repeats(events)
        if not unique:
            return
        started = time.perf_counter()
        try:
            async with self._engine.begin() as connection:
                new_events = await self._store_new_events(connection, unique)
                await self._project(connection, new_events)
        except Exception:
            # Rolled back as a whole; the bus retries the same batch and commits no offset.
            metrics.PERSIST_FAILURES.inc()
            raise
        metrics.PERSIST_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCHES.inc()
        metrics.EVENTS_DUPLICATE.inc(len(unique) - len(new_events))
        for event in new_events:
            metrics.EVENTS_PERSISTED.labels(event.type).inc()
        log.debug("events recorded", received=len(events), new=len(new_events))

    async def _store_new_events(
        self, connection: AsyncConnection, events: list[EnvelopeFields]
    ) -> list[EnvelopeFields]:
        recorded_at = datetime.now(UTC)
        # Sorted by key so concurrent consumers take row locks in the same order (no deadlock).
        rows = sorted(
            (_event_row(event, recorded_at) for event in events), key=lambda row: row["event_id"]
        )
        result = await connection.execute(self._insert_events, rows)
        inserted = set(result.scalars().all())
        return [event for event in events if event.id in inserted]

    async def _project(self, connection: AsyncConnection, events: list[EnvelopeFields]) -> None:
        by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in events:
            row = contribution(event)
            if row is not None:
                by_request[event.request_id].append(row)
        # One statement may touch a row only once, so a request's contributions go in
        # successive rounds (in arrival order): usually at most three (request, reply, usage).
        round_index = 0
        while True:
            rows = [rows[round_index] for rows in by_request.values() if len(rows) > round_index]
            if not rows:
                return
            rows.sort(key=lambda row: row["request_id"])
            await connection.execute(self._upsert_requests, rows)
            round_index += 1


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


def _event_row(event: EnvelopeFields, recorded_at: datetime) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "type": event.type,
        "request_id": event.request_id,
        "tenant": event.tenant,
        "source": event.source,
        "time": event.time,
        "schema_version": event.schema_version,
        "payload": event.model_dump(mode="json"),
        "recorded_at": recorded_at,
    }
