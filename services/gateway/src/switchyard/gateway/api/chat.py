"""`POST /v1/chat/completions`: publish the request, wait for its reply on this replica's
replies partition, and answer in OpenAI's shape (JSON, or Server-Sent Events when
`stream` is true)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import orjson
import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import Counter, Gauge, Histogram

from switchyard.common.bus import BusUnavailableError
from switchyard.common.errors import APIError, error_body
from switchyard.common.events import (
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRequestData,
    ChatRequested,
    ReplyAddress,
    new_id,
    utcnow,
)
from switchyard.common.logging import bind_request_id
from switchyard.gateway.api.body import openapi_body, validate_body
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep
from switchyard.gateway.auth import Principal
from switchyard.gateway.bootstrap import Gateway
from switchyard.gateway.replies import Reply
from switchyard.gateway.schemas import ChatCompletionRequest

log = structlog.get_logger("switchyard.gateway.chat")
router = APIRouter(prefix="/v1", tags=["chat"])

REQUEST_SECONDS = Histogram(
    "switchyard_gateway_chat_request_duration_seconds",
    "Time from receiving a chat request to its reply (first byte when streaming).",
    ["model", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
IN_FLIGHT = Gauge("switchyard_gateway_requests_in_flight", "Chat requests waiting for their reply.")
REJECTED = Counter(
    "switchyard_gateway_requests_rejected_total", "Requests refused before publishing.", ["reason"]
)


@router.post(
    "/chat/completions",
    summary="Create a chat completion (OpenAI-compatible)",
    openapi_extra=openapi_body(ChatCompletionRequest),
    response_model=None,
)
async def create_chat_completion(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Create a chat completion; streams Server-Sent Events when `stream` is true."""
    body, raw_body = validate_body(ChatCompletionRequest, await request.body())
    started = time.perf_counter()
    if gateway.routing.route(body.model) is None or (
        principal.allowed_models is not None and body.model not in principal.allowed_models
    ):
        raise APIError(
            404,
            f"The model '{body.model}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )
    if gateway.replies_listener is None:
        REJECTED.labels("bus_unavailable").inc()
        raise APIError(
            503,
            "The gateway is not connected to the event bus yet; retry shortly.",
            code="bus_unavailable",
            headers={"Retry-After": "2"},
        )
    if gateway.in_flight >= gateway.settings.max_in_flight:
        REJECTED.labels("in_flight_limit").inc()
        raise APIError(
            429,
            "Too many requests in progress on this gateway; retry shortly.",
            code="gateway_busy",
            headers={"Retry-After": "1"},
        )

    request_id = new_id()
    bind_request_id(request_id)
    queue = gateway.pending.open(request_id)
    gateway.in_flight += 1
    IN_FLIGHT.inc()
    handed_to_stream = False
    try:
        deadline_s = gateway.settings.request_timeout_s
        await _publish(gateway, principal, body, raw_body, request_id, deadline_s)
        first = await _next_reply(queue, started + deadline_s)
        if isinstance(first, ChatFailed):
            return _failure_response(first, request_id, body.model, started)
        if isinstance(first, ChatCompleted) and not body.stream:
            REQUEST_SECONDS.labels(body.model, "200").observe(time.perf_counter() - started)
            return Response(
                orjson.dumps(first.data.response),
                media_type="application/json",
                headers={"x-request-id": request_id},
            )
        if not body.stream:
            # A chunk for a non-streaming request: wait for the completion itself.
            final = await _final_reply(queue, started + deadline_s)
            if isinstance(final, ChatFailed):
                return _failure_response(final, request_id, body.model, started)
            REQUEST_SECONDS.labels(body.model, "200").observe(time.perf_counter() - started)
            return Response(
                orjson.dumps(final.data.response),
                media_type="application/json",
                headers={"x-request-id": request_id},
            )
        REQUEST_SECONDS.labels(body.model, "200").observe(time.perf_counter() - started)
        handed_to_stream = True
        return StreamingResponse(
            _stream(gateway, request_id, queue, first, started + deadline_s),
            media_type="text/event-stream",
            headers={"x-request-id": request_id, "cache-control": "no-cache"},
        )
    except TimeoutError:
        REQUEST_SECONDS.labels(body.model, "504").observe(time.perf_counter() - started)
        raise APIError(
            504, "The request did not complete before its deadline.", code="deadline_exceeded"
        ) from None
    finally:
        if not handed_to_stream:
            _finish(gateway, request_id)


def _finish(gateway: Gateway, request_id: str) -> None:
    gateway.pending.close(request_id)
    gateway.in_flight -= 1
    IN_FLIGHT.dec()


async def _publish(
    gateway: Gateway,
    principal: Principal,
    body: ChatCompletionRequest,
    raw_body: dict,
    request_id: str,
    deadline_s: float,
) -> None:
    event = ChatRequested(
        source="gateway",
        tenant=principal.tenant,
        request_id=request_id,
        data=ChatRequestData(
            api="openai",
            model=body.model,
            body=raw_body,
            stream=body.stream,
            user_id=principal.user_id,
            api_key_id=principal.api_key_id,
            deadline=utcnow() + timedelta(seconds=deadline_s),
            reply_to=ReplyAddress(
                partition=gateway.reply_partition, instance_id=gateway.settings.instance_id
            ),
        ),
    )
    try:
        await gateway.bus.publish(gateway.topics.requests_interactive, event, key=request_id)
    except BusUnavailableError as exc:
        REJECTED.labels("bus_unavailable").inc()
        log.error("could not publish request", error=str(exc))
        raise APIError(
            503,
            "The request could not be accepted right now; retry shortly.",
            code="bus_unavailable",
            headers={"Retry-After": "2"},
        ) from None


async def _next_reply(queue: asyncio.Queue[Reply], deadline: float) -> Reply:
    return await asyncio.wait_for(queue.get(), timeout=max(0.0, deadline - time.perf_counter()))


async def _final_reply(queue: asyncio.Queue[Reply], deadline: float) -> ChatCompleted | ChatFailed:
    while True:
        reply = await _next_reply(queue, deadline)
        if not isinstance(reply, ChatChunk):
            return reply


def _failure_response(failed: ChatFailed, request_id: str, model: str, started: float) -> Response:
    error = failed.data.error
    REQUEST_SECONDS.labels(model, str(error.status)).observe(time.perf_counter() - started)
    headers = {"x-request-id": request_id}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    elif error.status in (429, 503):
        headers["Retry-After"] = "1"
    return Response(
        error_body(error.message, error.type, error.code),
        status_code=error.status,
        media_type="application/json",
        headers=headers,
    )


async def _stream(
    gateway: Gateway, request_id: str, queue: asyncio.Queue[Reply], first: Reply, deadline: float
) -> AsyncIterator[bytes]:
    """Relay chunks in sequence order as SSE, ending with `[DONE]`; duplicates (a
    redelivered request answered twice) are dropped."""
    next_sequence = 0
    reply: Reply | None = first
    try:
        while True:
            if reply is None:
                try:
                    reply = await _next_reply(queue, deadline)
                except TimeoutError:
                    yield (
                        b"data: "
                        + error_body(
                            "The stream did not complete before its deadline.",
                            "timeout_error",
                            "deadline_exceeded",
                        )
                        + b"\n\n"
                    )
                    return
            if isinstance(reply, ChatChunk):
                if reply.data.sequence == next_sequence:
                    next_sequence += 1
                    yield b"data: " + orjson.dumps(reply.data.chunk) + b"\n\n"
            elif isinstance(reply, ChatFailed):
                error = reply.data.error
                yield b"data: " + error_body(error.message, error.type, error.code) + b"\n\n"
                return
            else:
                yield b"data: [DONE]\n\n"
                return
            reply = None
    finally:
        _finish(gateway, request_id)
