"""The request projection: how each event changes its request's row in `history_requests`.

Events of one request arrive on different topics (requests, replies, usage), so they can
be stored in any order and by different consumers at the same time. Every event therefore
becomes a *contribution*: a full row where the columns the event does not know are NULL.
One upsert statement merges a contribution into the row, and its rules make the result
independent of the order contributions are applied in:

- request fields (tenant, user, model, body, deadline, created_at) come from
  `chat.requested`; a row a reply created first gets them when the request arrives;
- the status leaves 'pending' once, to the first terminal status applied; the reply,
  error and completion time travel with that status and are never overwritten;
- tokens, cost and latency come from `usage.recorded` when it is there, otherwise from
  the reply.

Because the rules live in the SQL statement, concurrent consumers writing the same row
are serialised by the database's row lock and each sees the other's result.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, func
from sqlalchemy.sql.dml import Insert

from switchyard.common.db import dialect_insert
from switchyard.common.events import (
    ChatCompleted,
    ChatFailed,
    ChatRequested,
    EnvelopeFields,
    UsageRecorded,
)
from switchyard.history.models import RequestStatus, requests_table

PENDING = RequestStatus.PENDING.value

_EMPTY_CONTRIBUTION: dict[str, Any] = {column.name: None for column in requests_table.columns}


def contribution(event: EnvelopeFields) -> dict[str, Any] | None:
    """The row `event` contributes to its request, or None if it does not touch the projection."""
    row = dict(_EMPTY_CONTRIBUTION)
    row.update(
        request_id=event.request_id,
        tenant=event.tenant,
        status=PENDING,
        # Only a placeholder unless the event is the request itself: a row needs an order key
        # even while its request is still on the way.
        created_at=event.time,
    )
    if isinstance(event, ChatRequested):
        data = event.data
        row.update(
            user_id=data.user_id,
            api_key_id=data.api_key_id,
            model=data.model,
            api=data.api,
            priority=data.priority.value,
            request_body=data.body,
            deadline=data.deadline,
        )
    elif isinstance(event, ChatCompleted):
        data = event.data
        row.update(
            status=RequestStatus.COMPLETED.value,
            response=data.response,
            provider=data.provider,
            deployment=data.deployment,
            input_tokens=data.usage.input_tokens,
            output_tokens=data.usage.output_tokens,
            latency_ms=data.latency_ms,
            completed_at=event.time,
        )
    elif isinstance(event, ChatFailed):
        data = event.data
        row.update(
            status=data.status.value,
            error=data.error.model_dump(mode="json"),
            provider=data.provider,
            deployment=data.deployment,
            latency_ms=data.latency_ms,
            completed_at=event.time,
        )
    elif isinstance(event, UsageRecorded):
        data = event.data
        row.update(
            user_id=data.user_id,
            api_key_id=data.api_key_id,
            model=data.model,
            provider=data.provider,
            deployment=data.deployment,
            input_tokens=data.usage.input_tokens,
            output_tokens=data.usage.output_tokens,
            cost_usd=data.cost_usd,
            latency_ms=data.latency_ms,
        )
    else:
        return None
    return row


def upsert_statement(dialect_name: str) -> Insert:
    """INSERT ... ON CONFLICT (request_id) DO UPDATE merging one contribution per row."""
    insert = dialect_insert(requests_table, dialect_name)
    existing = requests_table.c
    new = insert.excluded

    request_arrives = and_(existing.request_body.is_(None), new.request_body.is_not(None))
    terminal_arrives = and_(existing.status == PENDING, new.status != PENDING)
    # Every usage record carries a cost (0 when free); a reply never does.
    usage_arrives = and_(existing.cost_usd.is_(None), new.cost_usd.is_not(None))

    def prefer_new_when(condition, name: str):
        # Take the arriving value when it is the authoritative source, else keep what is there.
        return case(
            (condition, func.coalesce(new[name], existing[name])),
            else_=func.coalesce(existing[name], new[name]),
        )

    def replace_when(condition, name: str):
        return case((condition, new[name]), else_=existing[name])

    updates: dict[str, Any] = {
        name: prefer_new_when(request_arrives, name)
        for name in (
            "tenant",
            "user_id",
            "api_key_id",
            "model",
            "api",
            "priority",
            "request_body",
            "deadline",
        )
    }
    updates["created_at"] = replace_when(request_arrives, "created_at")
    # The first terminal status wins; everything describing the outcome comes with it.
    updates["status"] = case((existing.status == PENDING, new.status), else_=existing.status)
    for name in ("response", "error", "completed_at"):
        updates[name] = replace_when(terminal_arrives, name)
    for name in ("provider", "deployment"):
        updates[name] = prefer_new_when(terminal_arrives, name)
    for name in ("input_tokens", "output_tokens", "cost_usd", "latency_ms"):
        updates[name] = prefer_new_when(usage_arrives, name)

    return insert.on_conflict_do_update(index_elements=[existing.request_id], set_=updates)
