"""Jobs: requests of the batch lane (`priority = 'batch'`, no gateway waiting), as the
jobs API shows them, and the transitions history itself records — a cancellation asked
for through the API, and the expiry of a request nobody answered.

History records such a transition as an event of its own (`chat.failed` from source
`history`) through the same exactly-once recorder as everything else, with an id derived
from the request id, so two replicas (or a retry) record it once. A cancellation is final
(the client asked for it and was told so): "the first terminal status wins" decides any
race with inference's own reply. An expiry is provisional: a real outcome from inference
that arrives after it replaces it (projection.py, handlers.py), and a job's webhook then
delivers the real outcome as well (webhooks.py).
"""

from __future__ import annotations

import uuid
from typing import Any

from switchyard.common.events import ChatFailed, ChatFailedData, ErrorInfo, TerminalStatus
from switchyard.common.statuses import UNFINISHED_JOB_STATUSES
from switchyard.history.api.schemas import history_usage
from switchyard.history.models import RequestStatus
from switchyard.history.timeparse import isoformat_z

# Namespace of the ids of events history derives from a request id.
_HISTORY_EVENTS = uuid.UUID("1b1f3c5e-5d0e-4a8e-9a43-6c1e2b9b1f00")

# `queued` and `in_progress` are both a pending request: `in_progress` once inference said it
# began to run it (`chat.started`, recorded as `started_at`).


def history_event_id(kind: str, request_id: str) -> str:
    """A deterministic event id (hex UUIDv5) for the event of `kind` history derives for a request,
    so publishing it again is recorded once."""
    return uuid.uuid5(_HISTORY_EVENTS, f"{kind}:{request_id}").hex


def expiry_event_id(request_id: str) -> str:
    """The id of the `chat.failed` (expired) event history publishes for an overdue request."""
    return history_event_id("expired", request_id)


def job_status(row: dict[str, Any]) -> str:
    """The job status shown for a request row: a `pending` request is `queued` until inference
    began to run it (`started_at`), then `in_progress`; any other status is shown as it is."""
    if row["status"] != RequestStatus.PENDING.value:
        return str(row["status"])
    return "in_progress" if row.get("started_at") is not None else "queued"


def cancellation_event(tenant: str, request_id: str, *, by_owner: bool) -> ChatFailed:
    """The `chat.failed` event (status `cancelled`, HTTP 408 `job_cancelled`) recording that
    the request's owner (`by_owner`) or an administrator cancelled it. The message never
    names the administrator: the owner, and the job's webhook receiver, read it."""
    who = "its owner" if by_owner else "an administrator"
    return cancelled_event(
        tenant,
        request_id,
        ErrorInfo(
            status=408,
            type="request_cancelled",
            code="job_cancelled",
            message=f"The job was cancelled by {who} before it finished.",
        ),
    )


def cancelled_event(tenant: str, request_id: str, error: ErrorInfo) -> ChatFailed:
    """The `chat.failed` event (status `cancelled`) history records for a request it
    cancelled, with the `error` its caller sees. One id per request, whoever cancelled
    it, so a request is cancelled once."""
    return ChatFailed(
        id=history_event_id("cancelled", request_id),
        source="history",
        tenant=tenant,
        request_id=request_id,
        data=ChatFailedData(status=TerminalStatus.CANCELLED, error=error),
    )


HISTORY_SOURCE = "history"


def is_history_expiry(event: object) -> bool:
    """True for the expiry history records itself (`expiry_event`), which stands only until
    a real outcome arrives."""
    return (
        isinstance(event, ChatFailed)
        and event.source == HISTORY_SOURCE
        and event.data.status is TerminalStatus.EXPIRED
    )


def expiry_event(tenant: str, request_id: str) -> ChatFailed:
    """The `chat.failed` event (status `expired`, HTTP 504 `deadline_exceeded`) recording that the
    request got no reply before its deadline."""
    return ChatFailed(
        id=expiry_event_id(request_id),
        source=HISTORY_SOURCE,
        tenant=tenant,
        request_id=request_id,
        data=ChatFailedData(
            status=TerminalStatus.EXPIRED,
            error=ErrorInfo(
                status=504,
                type="timeout_error",
                code="deadline_exceeded",
                message="No reply was recorded before the request's deadline (plus grace "
                "period); history marked it expired.",
            ),
        ),
    )


def job_object(row: dict[str, Any]) -> dict[str, Any]:
    """The jobs API's view of a request row (with its webhook columns, if any)."""
    status = job_status(row)
    webhook = None
    if row.get("webhook_url"):
        delivered_at = row.get("webhook_delivered_at")
        webhook = {
            "url": row["webhook_url"],
            "status": row.get("webhook_status"),
            "attempts": row.get("webhook_attempts") or 0,
            "delivered_at": isoformat_z(delivered_at) if delivered_at else None,
            "last_error": row.get("webhook_last_error"),
        }
    completed_at = row.get("completed_at")
    started_at = row.get("started_at")
    return {
        "id": row["request_id"],
        "object": "job",
        "status": status,
        "api": row.get("api"),
        "model": row.get("model"),
        "created_at": isoformat_z(row["created_at"]),
        "started_at": isoformat_z(started_at) if started_at else None,
        "completed_at": isoformat_z(completed_at) if completed_at else None,
        "result": row.get("response") if status == "completed" else None,
        "error": row.get("error")
        if status not in (*UNFINISHED_JOB_STATUSES, "completed")
        else None,
        "usage": history_usage(row).model_dump(),
        "cost_usd": row.get("cost_usd"),
        "deployment": row.get("deployment"),
        "webhook": webhook,
    }
