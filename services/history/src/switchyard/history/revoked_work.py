"""Unfinished work of a revoked credential is cancelled.

The gateway refuses a revoked API key or a disabled user within a second, but jobs and
background responses it accepted before wait on the batch lane (up to their timeout, a day
by default) and inference runs them as they come: a leaked key's queued work would go on
spending and delivering its results after the key was revoked. Each sweep reads the
credential changes of the last `WINDOW` (the `auth.api_key_revoked`, `auth.user_disabled`
and `auth.user_enabled` events history recorded, through a partial index), and cancels
every batch-lane request still pending of a revoked key or of a user whose last change
disabled them: history records the cancellation (`chat.failed`, status `cancelled`, code
`credentials_revoked` or `user_disabled`; its webhook says so) and `cancel` tells
inference to skip the request, or stop it if it runs. Reading the store rather than the
events as they pass keeps it right across restarts, and for a job recorded after its
key's revocation (the two come on different topics).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common.events import (
    ChatFailed,
    ErrorInfo,
    Event,
)
from switchyard.history.handlers import EventRecorder
from switchyard.history.jobs import cancelled_event
from switchyard.history.models import (
    CREDENTIAL_CHANGE_TYPES,
    RequestStatus,
    events_table,
    requests_table,
)
from switchyard.history.queries import BATCH_PRIORITY

log = structlog.get_logger("switchyard.history.revoked_work")

# How far back credential changes are read: the longest a batch-lane request may wait
# (the gateway takes job timeouts of up to 7 days).
WINDOW = timedelta(days=7)

# Tells inference to skip or stop a request: (tenant, request id).
CancelRequest = Callable[[str, str], Awaitable[None]]


async def _revoked(
    engine: AsyncEngine, since: datetime
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(tenant, key id) of every key revoked since `since`, and (tenant, user id) of every
    user whose last change since then disabled them."""
    e = events_table.c
    query = (
        select(e.tenant, e.type, e.payload)
        .where(e.type.in_(CREDENTIAL_CHANGE_TYPES), e.time >= since)
        .order_by(e.time)
    )
    keys: set[tuple[str, str]] = set()
    users: dict[tuple[str, str], bool] = {}
    async with engine.connect() as connection:
        for tenant, kind, payload in await connection.execute(query):
            data: Any = payload.get("data") if isinstance(payload, dict) else None
            if not isinstance(data, dict):
                continue
            if kind == "auth.api_key_revoked" and isinstance(data.get("key_id"), str):
                keys.add((tenant, data["key_id"]))
            elif isinstance(data.get("user_id"), str):
                users[(tenant, data["user_id"])] = kind == "auth.user_disabled"
    return keys, {user for user, disabled in users.items() if disabled}


async def cancel_revoked_work(
    engine: AsyncEngine,
    recorder: EventRecorder,
    cancel: CancelRequest | None,
    *,
    now: datetime | None = None,
) -> int:
    """Cancel the pending batch-lane requests of credentials revoked in the last `WINDOW`
    before `now`; returns how many. Raises what the database raises (the sweep logs it
    and goes on)."""
    keys, users = await _revoked(engine, (now or datetime.now(UTC)) - WINDOW)
    if not keys and not users:
        return 0
    r = requests_table.c
    # Only the rows of those keys and users are read (each by its tenant's index).
    owners = [
        and_(r.tenant == tenant, r.api_key_id.in_(sorted(k for t, k in keys if t == tenant)))
        for tenant in sorted({tenant for tenant, _ in keys})
    ] + [
        and_(r.tenant == tenant, r.user_id.in_(sorted(u for t, u in users if t == tenant)))
        for tenant in sorted({tenant for tenant, _ in users})
    ]
    query = select(r.request_id, r.tenant, r.user_id, r.api_key_id).where(
        r.status == RequestStatus.PENDING.value,
        r.priority == BATCH_PRIORITY,
        or_(*owners),
    )
    async with engine.connect() as connection:
        pending = (await connection.execute(query)).all()
    cancelled: list[ChatFailed] = []
    for request_id, tenant, user_id, api_key_id in pending:
        if api_key_id is not None and (tenant, api_key_id) in keys:
            why = ("credentials_revoked", "The API key that created it was revoked.")
        elif user_id is not None and (tenant, user_id) in users:
            why = ("user_disabled", "The user who created it was disabled.")
        else:
            continue
        message = f"The job was cancelled before it finished: {why[1]}"
        error = ErrorInfo(status=403, type="permission_error", code=why[0], message=message)
        cancelled.append(cancelled_event(tenant, request_id, error))
    if not cancelled:
        return 0
    await recorder.record(list[Event](cancelled))
    for event in cancelled:
        if cancel is not None:
            await cancel(event.tenant, event.request_id)
    log.info("work of revoked credentials cancelled", count=len(cancelled))
    return len(cancelled)
