"""The request path every model API shares: admit the request (model, capacity, bus),
publish it, wait for its reply on this replica's replies partition, relay stream chunks
in order, and tell inference to stop when the client goes away.

Routes only translate between their API's shape and this: `/v1/chat/completions`,
`/v1/messages` and `/v1/embeddings` all run through `Dispatch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import structlog
from prometheus_client import Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from switchyard.common.bus import BusUnavailableError
from switchyard.common.errors import APIError
from switchyard.common.events import (
    CancelRequestData,
    ChatCancelRequested,
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatFailedData,
    ChatRequestData,
    ChatRequested,
    ErrorInfo,
    ReplyAddress,
    TerminalStatus,
    new_id,
    utcnow,
)
from switchyard.common.logging import bind_request_id
from switchyard.gateway.auth import Principal
from switchyard.gateway.bootstrap import Gateway
from switchyard.gateway.governance.admission import Refused, Ticket
from switchyard.gateway.governance.refusals import admit_or_refuse
from switchyard.gateway.replies import Reply

log = structlog.get_logger("switchyard.gateway.dispatch")

REQUEST_SECONDS = Histogram(
    "switchyard_gateway_request_duration_seconds",
    "Time from receiving a model request to its reply (first byte when streaming).",
    ["api", "model", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
IN_FLIGHT = Gauge(
    "switchyard_gateway_requests_in_flight", "Model requests waiting for their reply."
)
REJECTED = Counter(
    "switchyard_gateway_requests_rejected_total", "Requests refused before publishing.", ["reason"]
)
ADDED_SECONDS = Histogram(
    "switchyard_gateway_added_latency_seconds",
    "Time a completed request spent in Switchyard itself: total minus the provider call.",
    ["api", "model"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
CANCELLED = Counter(
    "switchyard_gateway_client_disconnects_total",
    "Clients that went away before their reply.",
    ["action"],
)


class ClientDisconnected(Exception):
    """The client went away while waiting; nobody will read the response."""


class ReplyFailed(Exception):
    """The request reached a terminal state other than completed."""

    def __init__(self, failed: ChatFailed) -> None:
        super().__init__(failed.data.error.message)
        self.failed = failed

    def as_api_error(self) -> APIError:
        error = self.failed.data.error
        headers = {"x-request-id": self.failed.request_id}
        if error.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
        elif error.status in (429, 503):
            headers["Retry-After"] = "1"
        return APIError(
            error.status, error.message, type=error.type, code=error.code, headers=headers
        )


def deadline_exceeded(request_id: str) -> APIError:
    # The request id lets a retry with the same Idempotency-Key find this outcome.
    return APIError(
        504,
        "The request did not complete before its deadline.",
        code="deadline_exceeded",
        headers={"x-request-id": request_id},
    )


@dataclass
class Dispatch:
    """One admitted request, from publication to its terminal reply."""

    gateway: Gateway
    request: Request
    api: Literal["openai", "anthropic"]
    model: str
    tenant: str
    request_id: str = field(default_factory=new_id)
    started: float = field(default_factory=time.perf_counter)
    deadline: float = 0.0
    finished: bool = False
    ticket: Ticket | None = None
    _queue: asyncio.Queue[Reply] | None = None
    _closed: bool = False

    @classmethod
    async def start(
        cls,
        gateway: Gateway,
        request: Request,
        principal: Principal,
        *,
        api: Literal["openai", "anthropic"],
        operation: Literal["chat", "embeddings"],
        model: str,
        body: dict[str, Any],
        stream: bool,
    ) -> Dispatch:
        """Admit and publish the request; raise APIError if it cannot be accepted."""
        if gateway.routing.route(model) is None or (
            principal.allowed_models is not None and model not in principal.allowed_models
        ):
            raise APIError(
                404,
                f"The model '{model}' does not exist or you do not have access to it.",
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
        try:
            ticket = await admit_or_refuse(
                gateway,
                principal,
                request_id,
                model,
                body,
                api=api,
                embeddings=operation == "embeddings",
            )
        except Refused as refused:
            REJECTED.labels(refused.reason).inc()
            raise

        dispatch = cls(gateway, request, api, model, principal.tenant, request_id=request_id)
        dispatch.ticket = ticket
        timeout_s = gateway.settings.request_timeout_s
        ticket.attach(request_id, timeout_s)
        dispatch.deadline = dispatch.started + timeout_s
        bind_request_id(dispatch.request_id)
        dispatch._queue = gateway.pending.open(dispatch.request_id)
        gateway.in_flight += 1
        IN_FLIGHT.inc()
        event = ChatRequested(
            source="gateway",
            tenant=principal.tenant,
            request_id=dispatch.request_id,
            data=ChatRequestData(
                api=api,
                operation=operation,
                model=model,
                body=body,
                stream=stream,
                user_id=principal.user_id,
                api_key_id=principal.api_key_id,
                deadline=utcnow() + timedelta(seconds=timeout_s),
                reply_to=ReplyAddress(
                    partition=gateway.reply_partition, instance_id=gateway.settings.instance_id
                ),
            ),
        )
        try:
            await gateway.bus.publish(
                gateway.topics.requests_interactive, event, key=dispatch.request_id
            )
        except BusUnavailableError as exc:
            dispatch.close()
            ticket.cancel()
            REJECTED.labels("bus_unavailable").inc()
            log.error("could not publish request", error=str(exc))
            raise APIError(
                503,
                "The request could not be accepted right now; retry shortly.",
                code="bus_unavailable",
                headers={"Retry-After": "2"},
            ) from None
        return dispatch

    # -- waiting -------------------------------------------------------------------------

    async def _next(self) -> Reply:
        """The next reply event; TimeoutError at the deadline; ClientDisconnected if the
        client went away (after asking inference to stop, unless configured otherwise)."""
        assert self._queue is not None
        remaining = self.deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError
        getter = asyncio.ensure_future(self._queue.get())
        watcher = asyncio.ensure_future(self._client_gone())
        try:
            done, _ = await asyncio.wait(
                {getter, watcher}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            watcher.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        if watcher in done:
            self.client_disconnected()
            raise ClientDisconnected
        raise TimeoutError

    async def _client_gone(self) -> None:
        # The body has been read, so the next ASGI message can only be a disconnect.
        while True:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                return

    async def first(self) -> Reply:
        """The first reply: a chunk (streaming), the completion, or a failure (raised)."""
        try:
            reply = await self._next()
        except TimeoutError:
            self.observe(504)
            raise deadline_exceeded(self.request_id) from None
        if isinstance(reply, ChatFailed):
            self.observe(reply.data.error.status)
            raise ReplyFailed(reply)
        return reply

    async def completion(self, first: Reply | None = None) -> ChatCompleted:
        """Wait for the final completion (skipping chunks); raise on failure or timeout."""
        reply = first if first is not None else await self.first()
        try:
            while isinstance(reply, ChatChunk):
                reply = await self._next()
        except TimeoutError:
            self.observe(504)
            raise deadline_exceeded(self.request_id) from None
        if isinstance(reply, ChatFailed):
            self.observe(reply.data.error.status)
            raise ReplyFailed(reply)
        assert isinstance(reply, ChatCompleted)
        self.finished = True
        self.observe(200)
        added = time.perf_counter() - self.started - reply.data.latency_ms / 1000
        ADDED_SECONDS.labels(self.api, self.model).observe(max(0.0, added))
        return reply

    async def chunks(self, first: Reply) -> AsyncIterator[ChatChunk | ChatCompleted | ChatFailed]:
        """Stream events in sequence order, duplicates dropped (a redelivered request
        answered twice); ends with the ChatCompleted or ChatFailed. A TimeoutError is
        turned into a ChatFailed so the stream can end with an error event."""
        next_sequence = 0
        first_stream_id = None
        reply: Reply | None = first
        self.observe(200)
        while True:
            if reply is None:
                try:
                    reply = await self._next()
                except TimeoutError:
                    yield deadline_failure(self)
                    return
            if isinstance(reply, ChatChunk):
                stream_id = reply.data.chunk.get("id")
                if first_stream_id is None:
                    first_stream_id = stream_id
                elif stream_id != first_stream_id and reply.data.sequence >= next_sequence:
                    # A second answer to the same request (its first inference replica died
                    # mid-stream and another re-ran it): never splice two answers together.
                    yield interrupted_failure(self)
                    return
                if reply.data.sequence == next_sequence:
                    next_sequence += 1
                    yield reply
            else:
                self.finished = True
                yield reply
                return
            reply = None

    # -- answering -----------------------------------------------------------------------

    async def answer(
        self,
        *,
        stream: bool,
        json_body: Callable[[ChatCompleted], bytes],
        sse: Callable[[ChatChunk | ChatCompleted | ChatFailed], Iterable[bytes]] | None = None,
    ) -> Response:
        """The HTTP answer in the called API's shape: the completion as JSON (`json_body`),
        or the stream as Server-Sent Events (`sse` encodes each reply). The dispatch is
        closed once the answer is complete, or when the client goes away."""
        streaming = False
        limits = self.rate_limit_headers()
        try:
            first = await self.first()
            if not stream:
                completed = await self.completion(first)
                return Response(
                    json_body(completed),
                    media_type="application/json",
                    headers={"x-request-id": self.request_id, **limits},
                )
            assert sse is not None
            streaming = True
            return StreamingResponse(
                self._relay(first, sse),
                media_type="text/event-stream",
                headers={"x-request-id": self.request_id, "cache-control": "no-cache", **limits},
            )
        except ReplyFailed as failed:
            error = failed.as_api_error()
            error.headers = {**(error.headers or {}), **limits}
            raise error from None
        except APIError as error:
            error.headers = {**(error.headers or {}), **limits}
            raise
        finally:
            if not streaming:
                self.close()

    def rate_limit_headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers, or Anthropic's `anthropic-ratelimit-*`."""
        return self.ticket.headers_for(self.api) if self.ticket is not None else {}

    async def _relay(self, first: Reply, sse) -> AsyncIterator[bytes]:
        try:
            async for reply in self.chunks(first):
                for piece in sse(reply):
                    yield piece
        finally:
            if not self.finished:
                self.client_disconnected()
            self.close()

    # -- ending --------------------------------------------------------------------------

    def observe(self, status: int) -> None:
        REQUEST_SECONDS.labels(self.api, self.model, str(status)).observe(
            time.perf_counter() - self.started
        )

    def client_disconnected(self) -> None:
        """The client went away before the end: by default, ask inference to stop."""
        if self.finished:
            return
        action = self.gateway.settings.on_client_disconnect
        CANCELLED.labels(action).inc()
        if action == "cancel":
            task = asyncio.ensure_future(self._publish_cancel())
            self.gateway.background.add(task)
            task.add_done_callback(self.gateway.background.discard)

    async def _publish_cancel(self) -> None:
        event = ChatCancelRequested(
            source="gateway",
            tenant=self.tenant,
            request_id=self.request_id,
            data=CancelRequestData(),
        )
        with contextlib.suppress(BusUnavailableError):
            await self.gateway.bus.publish(self.gateway.topics.control, event, key=self.request_id)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.gateway.pending.close(self.request_id)
        self.gateway.in_flight -= 1
        IN_FLIGHT.dec()


def _stream_failure(dispatch: Dispatch, status: TerminalStatus, error: ErrorInfo) -> ChatFailed:
    """A failure the gateway itself ends a stream with (the client sees an error event)."""
    return ChatFailed(
        source="gateway",
        tenant=dispatch.tenant,
        request_id=dispatch.request_id,
        data=ChatFailedData(status=status, error=error),
    )


def deadline_failure(dispatch: Dispatch) -> ChatFailed:
    return _stream_failure(
        dispatch,
        TerminalStatus.EXPIRED,
        ErrorInfo(
            status=504,
            type="timeout_error",
            code="deadline_exceeded",
            message="The request did not complete before its deadline.",
        ),
    )


def interrupted_failure(dispatch: Dispatch) -> ChatFailed:
    return _stream_failure(
        dispatch,
        TerminalStatus.FAILED,
        ErrorInfo(
            status=502,
            type="upstream_error",
            code="stream_interrupted",
            message="The stream was interrupted and restarted upstream; retry the request.",
        ),
    )
