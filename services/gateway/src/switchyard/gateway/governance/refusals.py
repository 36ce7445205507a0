"""Refused requests are recorded like any other: the gateway publishes their terminal
state itself, since nothing ran. A `chat.failed` with status `refused` (replies topic) and
a `usage.recorded` with status `refused` and zero usage (usage topic) reach history, which
shows the request, its status and the reason (the error's code and message name the level
and the limit).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import structlog

from switchyard.common.bus import BusUnavailableError
from switchyard.common.events import (
    ChatFailed,
    ChatFailedData,
    ClientAPI,
    ErrorInfo,
    TerminalStatus,
    TokenUsage,
    UsageData,
    UsageRecorded,
)
from switchyard.gateway.governance.admission import UNBILLED_APIS, Refused, Ticket

log = structlog.get_logger("switchyard.gateway.governance")


def refusal_events(
    principal: Any,
    request_id: str,
    model: str,
    refused: Refused,
    api: ClientAPI | None = None,
    team_id: str | None = None,
) -> list[tuple[str, Any]]:
    """(topic suffix, event) pairs recording one refusal."""
    error = ErrorInfo(
        status=refused.status,
        type=refused.type,
        code=refused.code,
        message=refused.message,
        retry_after_s=float(refused.headers["Retry-After"])
        if refused.headers and refused.headers.get("Retry-After")
        else None,
    )
    failed = ChatFailed(
        source="gateway",
        tenant=principal.tenant,
        request_id=request_id,
        data=ChatFailedData(status=TerminalStatus.REFUSED, error=error),
    )
    usage = UsageRecorded(
        source="gateway",
        tenant=principal.tenant,
        request_id=request_id,
        data=UsageData(
            api=api,
            model=model,
            user_id=principal.user_id,
            api_key_id=principal.api_key_id,
            team_id=team_id,
            status=TerminalStatus.REFUSED,
            usage=TokenUsage(),
            upstream_calls=0,
        ),
    )
    return [("replies", failed), ("usage", usage)]


async def record_refusal(
    gateway: Any,
    principal: Any,
    request_id: str,
    model: str,
    refused: Refused,
    api: ClientAPI | None = None,
) -> None:
    """Publish the refusal's events in the background (the client is answered at once)."""
    events = refusal_events(principal, request_id, model, refused, api, refused.team_id)
    topics = {"replies": gateway.topics.replies, "usage": gateway.topics.usage}

    async def publish() -> None:
        for suffix, event in events:
            try:
                await gateway.bus.publish(topics[suffix], event, key=request_id)
            except BusUnavailableError as exc:
                log.error("refusal not recorded", request_id=request_id, error=str(exc))

    task = asyncio.ensure_future(publish())
    gateway.background.add(task)
    task.add_done_callback(gateway.background.discard)


async def admit_or_refuse(
    gateway: Any,
    principal: Any,
    request_id: str,
    model: str,
    body: dict[str, Any],
    *,
    api: ClientAPI = ClientAPI.OPENAI_CHAT_COMPLETIONS,
    embeddings: bool = False,
) -> Ticket:
    """The request's ticket; a refusal is recorded, carries the rate-limit headers of
    `api`, and is raised (429)."""
    if gateway.admission is None:
        return Ticket()
    try:
        return cast(
            Ticket,
            await gateway.admission.admit(
                principal, model, body, embeddings=embeddings, billed=api not in UNBILLED_APIS
            ),
        )
    except Refused as refused:
        refused.headers = {**(refused.headers or {}), **refused.rate_headers(api)}
        await record_refusal(gateway, principal, request_id, model, refused, api)
        raise
