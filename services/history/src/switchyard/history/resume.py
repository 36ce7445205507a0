"""Embedded mode: the batch-lane requests (jobs, background Responses, replays) an earlier
run of the process accepted and never finished, published again when it starts.

Embedded mode's bus is the process's memory. A request waiting in the batch lane, or
running, when the process stops is gone from it, while history still holds the request
as `pending`: a job would stay `queued` until its deadline expired it, a day later by
default. At start-up, history publishes the stored `chat.requested` event of each such
request again (the same event, with its ids and deadline), oldest first, and inference
runs it as it would have: a job accepted is a job answered, across restarts.

Taken: requests made before this start (later ones are this run's own), still `pending`,
in the batch lane, with a deadline not yet passed (the sweeper expires the others).
Passed over: a request whose stored event no longer carries its body (a metadata-only
tenant's), which cannot run again and expires.

A request that ran to its end while its outcome was lost with the process (killed, not
stopped) runs again: such a request is handled at least once, not exactly once. Kafka
mode does not use this: the broker keeps unfinished requests and delivers them again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

import structlog
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common import exactjson
from switchyard.common.events import ChatRequested, EventDecodeError, decode_event
from switchyard.history.models import RequestStatus, events_table, requests_table
from switchyard.history.privacy import REDACTED_MARKER
from switchyard.history.queries import BATCH_PRIORITY

log = structlog.get_logger("switchyard.history.resume")

Publish = Callable[[ChatRequested], Awaitable[None]]


async def resume_unfinished(
    engine: AsyncEngine,
    publish: Publish,
    *,
    made_before: datetime,
    now: datetime,
    page: int = 200,
) -> int:
    """Publish (`publish`) the `chat.requested` event of every unfinished batch-lane
    request made before `made_before` whose deadline is after `now` (both aware UTC),
    oldest first, reading `page` requests at a time. Returns how many were published.
    Raises what the database or `publish` raise (those already published stay so)."""
    r, e = requests_table.c, events_table.c
    query = (
        select(r.created_at, r.request_id, e.payload)
        .join_from(requests_table, events_table, e.request_id == r.request_id)
        .where(
            e.type == "chat.requested",
            e.tenant == r.tenant,
            r.status == RequestStatus.PENDING.value,
            r.priority == BATCH_PRIORITY,
            r.deadline > now,
            r.created_at < made_before,
        )
        .order_by(r.created_at, r.request_id)
        .limit(page)
    )
    published = unreadable = 0
    after: tuple[datetime, str] | None = None
    while True:
        paged = query
        if after is not None:
            paged = query.where(
                or_(
                    r.created_at > after[0], and_(r.created_at == after[0], r.request_id > after[1])
                )
            )
        async with engine.connect() as connection:
            rows = (await connection.execute(paged)).all()
        for row in rows:
            event = _runnable(row.payload)
            if event is None:
                unreadable += 1
                continue
            await publish(event)
            published += 1
        if len(rows) < page:
            break
        after = (rows[-1].created_at, rows[-1].request_id)
    if published or unreadable:
        log.warning(
            "batch-lane requests left unfinished by the last run published again",
            published=published,
            not_runnable=unreadable,
        )
    return published


def _runnable(payload: object) -> ChatRequested | None:
    """The stored event as it was published, or None if it cannot run again (not
    readable, or its body was not stored)."""
    try:
        event = decode_event(exactjson.dumps(payload))
    except EventDecodeError:
        return None
    if not isinstance(event, ChatRequested):
        return None
    body = event.data.body
    if not isinstance(body, dict) or body.get(REDACTED_MARKER):
        return None
    return event
