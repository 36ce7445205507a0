"""The request path every model API shares: admit the request (model, capacity, bus),
publish it as the client sent it, wait for its reply on this replica's replies partition,
relay it, and tell inference to stop when the client goes away.

The gateway never translates: the reply (`chat.completed`) and the stream events
(`chat.chunk`) arrive in the client's own API, and are relayed as they are:

- a JSON request is answered with the reply's `response`;
- a streamed request waits for its first reply event; a `chat.failed` then is an HTTP
  error. Otherwise each stream event is sent as one Server-Sent Event (`event: <name>`
  when it has a name, then `data: <json>`), records in `sequence` order, duplicates
  dropped, and the stream never splices two executions of the request (`run`). The
  stream ends as the API ends it: `data: [DONE]` for Chat Completions, nothing more for
  Anthropic (whose `message_stop` is an event of the stream) and the Responses API
  (whose `response.completed` is); a failure ends it with an error event in the API's
  format (for the Responses API, `response.failed` with the response's id and the next
  `sequence_number`).

`/v1/chat/completions`, `/v1/messages`, `/v1/embeddings` and `/v1/responses` all run
through `Dispatch`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from switchyard.common import exactjson
from switchyard.common.backoff import Backoff
from switchyard.common.bus import BusUnavailableError
from switchyard.common.errors import APIError
from switchyard.common.events import (
    CancelRequestData,
    ChatCancelRequested,
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ClientAPI,
    ErrorInfo,
    ReplyAddress,
    StreamEvent,
    new_id,
    utcnow,
)
from switchyard.common.headers import REQUEST_ID_HEADER
from switchyard.common.responses import (
    LIFECYCLE_EVENTS,
    error_object,
    includes_encrypted_reasoning,
    response_id,
    response_object,
    without_encrypted_reasoning,
)
from switchyard.gateway.api.body import ClientRequest
from switchyard.gateway.auth import Principal
from switchyard.gateway.bootstrap import Gateway
from switchyard.gateway.cache import CacheTicket
from switchyard.gateway.errors import (
    ClientDisconnected,
    ReplyFailed,
    Vendor,
    error_type,
    sse_error_event,
    vendor_of_api,
)
from switchyard.gateway.governance.admission import Ticket
from switchyard.gateway.intake import (
    REJECTED,
    admit,
    bus_unavailable,
    check_model,
    check_tool_models,
    forwarded_headers,
    publish,
    request_event,
    wait_for_room,
)
from switchyard.gateway.replies import Reply
from switchyard.gateway.request_id import request_id_of
from switchyard.gateway.revocations import REVOKED_MESSAGES

# Key in an ASGI scope's `state`: the HTTP status of the error a stream answered 200 ended
# with (`Dispatch._stream_failure`), for the middlewares that look at the outcome.
STREAM_FAILED_STATUS = "switchyard.stream_failed_status"
# Set (True) in a request's scope state when it was published and its reply did not come
# by its deadline: it may have run (`idempotency` keeps its key for that outcome).
OUTCOME_UNKNOWN = "switchyard.outcome_unknown"
# Set (True) in a request's scope state when its answer must not be kept under its
# Idempotency-Key whatever its status: one ended because its credential was revoked
# (`Dispatch.caller_revoked`), whose retry with a new credential must run.
NOT_KEPT = "switchyard.not_kept"

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

# On a token count's answer: `exact` (the deployment counted) or `estimate` (a tokenizer did).
TOKEN_COUNT_HEADER = "x-switchyard-token-count"
COUNTING_APIS = (ClientAPI.ANTHROPIC_COUNT_TOKENS, ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS)
# How long the cancellation of a request the bus never confirmed taking is retried while
# the bus refuses it (seconds): well within the hour for which inference replicas remember
# a cancellation of a request they have not seen, so a late-written request still meets it.
UNCONFIRMED_CANCEL_RETRY_S = 300.0
_CANCEL_BACKOFF = Backoff(initial_s=0.5, max_s=10.0)
# Ends an OpenAI Chat Completions stream (the only API here that marks its end this way).
DONE = b"data: [DONE]\n\n"
# Stream records a relay holds while one before them is missing. Inference publishes a
# run's records in order on one partition, so a gap means a record was lost or forged:
# past this many the stream ends as interrupted instead of holding them without bound.
MAX_HELD_STREAM_RECORDS = 1_000
# Why a stream ends when a record of it never came (`Dispatch.sse`).
RECORDS_LOST = "Part of the stream was lost on its way to the gateway"
# U+0085, U+2028 and U+2029 are legal raw in JSON, and orjson writes them raw, but many
# line readers (Python's str.splitlines, httpx's iter_lines) break lines at them: sent
# escaped, the same JSON value reaches every client in one line.
_LINE_SEPARATORS = (
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
    ("\u0085".encode(), b"\\u0085"),
)


def json_line(data: dict[str, Any]) -> bytes:
    """`data` as JSON on one line, whatever line separators its strings hold."""
    encoded = exactjson.dumps(data)
    if b"\xe2\x80" in encoded or b"\xc2\x85" in encoded:
        for raw, escaped in _LINE_SEPARATORS:
            encoded = encoded.replace(raw, escaped)
    return encoded


# The events an API's stream ends with, which the gateway relays as they come (a Chat
# Completions stream's `[DONE]` is the gateway's own, written once the request ended).
_STREAM_ENDING_EVENTS = frozenset(
    {"message_stop", "response.completed", "response.incomplete", "response.failed"}
)


def sse_event(event: StreamEvent) -> bytes:
    """One stream event as a Server-Sent Event: `event: <name>` when it has one, then
    `data: <json>` and the blank line that ends it."""
    data = b"data: " + json_line(event.data) + b"\n\n"
    name = event.event
    if name is None:
        return data
    if "\n" in name or "\r" in name:  # would end the field early and forge another
        name = name.replace("\r", " ").replace("\n", " ")
    return b"event: " + name.encode() + b"\n" + data


# The Responses stream events that carry output items (an `item`, or a `response` with its
# `output`): the only ones a reasoning item's `encrypted_content` can be in.
_EVENTS_WITH_ITEMS = LIFECYCLE_EVENTS | {"response.output_item.added", "response.output_item.done"}


def _shown(event: StreamEvent) -> StreamEvent:
    """A Responses stream event without its reasoning items' `encrypted_content`
    (`without_encrypted_reasoning`); `event` itself when it holds none."""
    data = without_encrypted_reasoning(event.data)
    return event if data is event.data else StreamEvent(event=event.event, data=data)


def deadline_exceeded(request_id: str) -> APIError:
    """The 504 `deadline_exceeded` error for a request with no reply by its deadline; it names
    the request in `x-request-id`."""
    # The request id lets a retry with the same Idempotency-Key find this outcome.
    return APIError(
        504,
        "The request did not complete before its deadline.",
        code="deadline_exceeded",
        headers={REQUEST_ID_HEADER: request_id},
    )


class EventStream(StreamingResponse):
    """A stream of Server-Sent Events relayed from the bus. Starlette runs a second task
    beside a stream, watching for the client to go, unless the server speaks ASGI 2.4
    (uvicorn speaks 2.3); the dispatch already watches (`Dispatch._next`), so the stream
    is sent in the request's own task, without a task group of its own."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: send the stream. Raises ClientDisconnect when writing to a
        connection that is gone fails."""
        try:
            await self.stream_response(send)
        except OSError:
            raise ClientDisconnect() from None


async def _client_gone(receive: Receive) -> None:
    """Returns when the ASGI `receive` of a request whose body has been read says the
    client disconnected (the only message that can come then). Takes the callable, not
    the dispatch, so its task refers to nothing of the request's but the connection."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


@dataclass
class Dispatch:
    """One admitted request, from publication to its terminal reply."""

    gateway: Gateway
    request: Request
    api: ClientAPI
    model: str
    tenant: str
    stream: bool
    request_id: str = field(default_factory=new_id)
    started: float = field(default_factory=time.perf_counter)
    deadline: float = 0.0
    # By when the first reply must come (`perf_counter` time): `deadline` but for a stream.
    start_deadline: float = float("inf")
    finished: bool = False
    # The body as published and when (a Responses stream's failure event echoes them).
    body: dict[str, Any] = field(default_factory=dict)
    accepted_at: datetime | None = None
    # The bus could not say whether it took the request (`PublishOutcomeUnknownError`).
    publish_unconfirmed: bool = False
    ticket: Ticket | None = None
    # The response cache's part (cache.py): None unless the request opted in.
    cache: CacheTicket | None = None
    # Who asked (set by `start`): a revocation of its credential ends the request.
    principal: Principal | None = None
    _queue: asyncio.Queue[Reply] | None = None
    # Watches for the client to go while replies are relayed: one per request, started by
    # the first `_next`, cancelled by `close`.
    _watcher: asyncio.Future[None] | None = None
    _closed: bool = False
    _client_left: bool = False
    # Whether the stream's own last event (Messages' `message_stop`, the Responses API's
    # `response.completed`...) was relayed: its client then has the whole answer, even
    # if it hangs up before the request's outcome reaches this replica.
    _ended_in_stream: bool = False
    # Responses streams: the `sequence_number` the next event would carry, and the output
    # items the client was given whole (`response.output_item.done`), by `output_index`,
    # which a `response.failed` the gateway ends the stream with still lists.
    _next_sequence_number: int = 0
    _done_items: dict[int, dict[str, Any]] = field(default_factory=dict)
    # A Responses request that did not include `reasoning.encrypted_content`: its reasoning
    # items are shown without it, as OpenAI shows them. The reply keeps it (history stores
    # and chains from the reply: a Claude model's thinking must go back with its signature).
    hides_encrypted_reasoning: bool = False

    @property
    def vendor(self) -> Vendor:
        """The provider family whose error format the client's API uses."""
        return vendor_of_api(self.api)

    @classmethod
    async def start(
        cls, gateway: Gateway, request: Request, principal: Principal, client: ClientRequest
    ) -> Dispatch:
        """Admit and publish the request (`intake`: the model check, admission and
        publish-or-503 every model request shares), or answer it from the response cache.
        Raises APIError (404 model, 429 gateway busy, 413, 503) or `Refused` (429)."""
        check_model(gateway, principal, client.model)
        check_tool_models(principal, client)
        if gateway.replies_listener is None:
            REJECTED.labels("bus_unavailable").inc()
            raise bus_unavailable(
                "The gateway is not connected to the event bus yet; retry shortly."
            )
        if gateway.in_flight >= gateway.settings.max_in_flight:
            REJECTED.labels("in_flight_limit").inc()
            raise APIError(
                429,
                "Too many requests in progress on this gateway; retry shortly.",
                code="gateway_busy",
                headers={"Retry-After": "1"},
            )

        # A request refused for its own headers never reaches admission: it would count
        # against the caller's requests per minute without being made.
        gateway.cache.check_headers(request)
        request_id = request_id_of(request.scope) or new_id()
        ticket = await admit(gateway, principal, request_id, client)
        dispatch = cls(
            gateway,
            request,
            client.api,
            client.model,
            principal.tenant,
            client.stream,
            request_id=request_id,
            body=client.body,
        )
        dispatch.ticket = ticket
        dispatch.hides_encrypted_reasoning = (
            client.api is ClientAPI.OPENAI_RESPONSES
            and not includes_encrypted_reasoning(client.body.get("include"))
        )
        headers = forwarded_headers(request)
        # The response cache, after admission: a hit counts as a request against rate
        # limits (requests per minute) but uses no tokens and costs nothing upstream, so
        # its token, spend and parallel reservations go back at once. A hit is answered by
        # `answer` without crossing the bus.
        try:
            dispatch.cache = await gateway.cache.ticket(request, principal, client, headers)
        except BaseException:
            ticket.cancel()
            raise
        if dispatch.cache is not None and dispatch.cache.hit is not None:
            # Its events are published after the answer: where the bus buffers them in
            # memory (embedded mode), a hit waits for room as a new request does.
            await wait_for_room(gateway, gateway.topics.replies, ticket, "cache hit")
            ticket.settle(tokens=0, cost_usd=0.0)
            dispatch._closed = True  # nothing was opened
            return dispatch
        # A stream has `request_timeout_s` to start and `stream_timeout_s` in all: a long
        # generation keeps streaming past the first.
        timeout_s = gateway.settings.timeout_for(client.stream)
        # A revocation applied while the request was admitted (its body read, its limits
        # checked) finds it nowhere: checked here, with no wait from here until it is
        # held where the next revocation finds it (`Gateway.end_revoked_requests`).
        refused = gateway.refusal_code(principal)
        if refused is not None:
            ticket.cancel()
            raise APIError(403, REVOKED_MESSAGES[refused], code=refused)
        ticket.attach(request_id, timeout_s)
        dispatch.deadline = dispatch.started + timeout_s
        dispatch.start_deadline = dispatch.started + gateway.settings.request_timeout_s
        dispatch.principal = principal
        dispatch._queue = gateway.pending.open(
            dispatch.request_id,
            principal.tenant,
            dispatch.vendor,
            on_overflow=dispatch.client_disconnected,
            caller=dispatch,
            on_ended=dispatch.caller_revoked,
        )
        gateway.in_flight += 1
        IN_FLIGHT.inc()
        event = request_event(
            gateway,
            principal,
            client,
            request_id=request_id,
            ticket=ticket,
            headers=headers,
            timeout_s=timeout_s,
            reply_to=ReplyAddress(
                partition=gateway.reply_partition, instance_id=gateway.settings.instance_id
            ),
        )
        dispatch.accepted_at = event.time
        try:
            dispatch.publish_unconfirmed = not await publish(
                gateway,
                gateway.topics.requests_interactive,
                event,
                ticket,
                await_if_unknown=True,
            )
        except APIError:
            dispatch.close()
            raise
        return dispatch

    # -- waiting -------------------------------------------------------------------------

    async def _next(self, deadline: float | None = None) -> Reply:
        """The next reply event; TimeoutError at `deadline` (`perf_counter` time; the
        request's own by default); ClientDisconnected if the client went away (after asking
        inference to stop, unless configured otherwise)."""
        queue = self._queue
        assert queue is not None
        remaining = (self.deadline if deadline is None else deadline) - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError
        watcher = self._watcher
        if watcher is None:
            watcher = self._watcher = asyncio.ensure_future(_client_gone(self.request.receive))
        elif watcher.done() and not watcher.cancelled():
            self.client_disconnected()
            raise ClientDisconnected
        if queue.qsize():
            # A reply is here already (a stream's records arriving faster than they are
            # written): taken without a task to wait with. The watcher, which runs from
            # the first call on, still says when the client has gone.
            return queue.get_nowait()
        getter = asyncio.ensure_future(queue.get())
        waited: set[asyncio.Future[Any]] = {getter, watcher}
        done: set[asyncio.Future[Any]]
        try:
            done, _ = await asyncio.wait(
                waited, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if watcher in done and watcher.cancelled():
                # Closed meanwhile (`close`): the reply alone is waited for, until the
                # deadline, as when nothing watches.
                left = (self.deadline if deadline is None else deadline) - time.perf_counter()
                done, _ = await asyncio.wait(waited - {watcher}, timeout=max(0.0, left))
        finally:
            # Also when this wait is cancelled (the client left a stream): a task left
            # pending is destroyed unawaited. The watcher goes at `close`.
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if watcher in done and not watcher.cancelled():
            self.client_disconnected()
            raise ClientDisconnected
        raise TimeoutError

    async def first(self) -> Reply:
        """The first reply: a chunk (streaming), the completion, or a failure (raised); a
        504 when none came by `start_deadline`."""
        try:
            reply = await self._next(min(self.start_deadline, self.deadline))
        except TimeoutError:
            self.observe(504)
            self._outcome_unknown()
            if self.publish_unconfirmed:
                raise self._unconfirmed_at_deadline() from None
            if self.start_deadline < self.deadline:
                # The request's own deadline is later (a stream's): inference would go on.
                self._cancel_in_background()
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
            self._outcome_unknown()
            raise deadline_exceeded(self.request_id) from None
        if isinstance(reply, ChatFailed):
            self.observe(reply.data.error.status)
            raise ReplyFailed(reply)
        assert isinstance(reply, ChatCompleted)
        if reply.data.api is not self.api:
            # Relayed anyway (the client may cope); inference must answer in the client's API.
            log.error("reply in another API", expected=self.api.value, got=reply.data.api.value)
        self.finished = True
        self._answered()
        self.observe(200)
        added = time.perf_counter() - self.started - reply.data.latency_ms / 1000
        ADDED_SECONDS.labels(self.api.value, self.model).observe(max(0.0, added))
        if self.cache is not None:
            self.gateway.cache.completed(self, reply)
        return reply

    async def sse(self, first: Reply) -> AsyncIterator[bytes]:
        """The stream as Server-Sent Events, one piece per record: stream events in
        `sequence` order (records that arrive early wait for the ones before them),
        duplicates dropped (a redelivered request answered twice), ending as the API ends
        a stream. A record of another `run` at a position not relayed yet ends the stream
        with an error instead: two executions are never spliced into one answer; so do
        more than MAX_HELD_STREAM_RECORDS records waiting for a missing one, and the
        outcome arriving while one is still missing (no answer is relayed with a gap)."""
        next_sequence = 0
        run: str | None = None
        early: dict[int, ChatChunk] = {}
        reply: Reply | None = first
        self.observe(200)
        while True:
            if reply is None:
                try:
                    reply = await self._next()
                except TimeoutError:
                    self._outcome_unknown()
                    yield self._stream_failure(self._deadline_error())
                    return
            if isinstance(reply, ChatChunk):
                data = reply.data
                if run is None:
                    run = data.run
                if data.sequence >= next_sequence:
                    if data.run != run:
                        log.warning("stream of another run refused", first=run, other=data.run)
                        yield self._stream_failure(self._interrupted_error())
                        return
                    early[data.sequence] = reply
                    if data.sequence != next_sequence and len(early) > MAX_HELD_STREAM_RECORDS:
                        log.warning("stream records missing", missing_from=next_sequence)
                        yield self._stream_failure(self._interrupted_error(RECORDS_LOST))
                        return
                    while next_sequence in early:
                        record = early.pop(next_sequence)
                        next_sequence += 1
                        if self.cache is not None:
                            self.cache.collect(record.data.events)
                        yield self._relayed(record.data.events)
            else:
                self.finished = True
                if early:
                    # Records before these never arrived, and never will: a request's
                    # records share one partition, in order, ahead of its outcome (one
                    # no consumer could read, or lost by a producer other than inference).
                    # Relaying what follows the gap would hand the client a whole-looking
                    # answer with a piece missing: the stream ends with an error there.
                    log.warning(
                        "stream records missing", missing_from=next_sequence, held=len(early)
                    )
                    yield self._stream_failure(self._interrupted_error(RECORDS_LOST))
                    return
                if isinstance(reply, ChatCompleted):
                    self._answered()
                if next_sequence == 0 and isinstance(reply, ChatCompleted):
                    log.warning("stream completed without any stream event", api=self.api.value)
                if isinstance(reply, ChatFailed):
                    yield self._stream_failure(reply.data.error)
                else:
                    if self.api is ClientAPI.OPENAI_CHAT_COMPLETIONS:
                        yield DONE
                    if self.cache is not None and isinstance(reply, ChatCompleted):
                        self.gateway.cache.completed(self, reply)
                return
            reply = None

    # -- answering -----------------------------------------------------------------------

    async def answer(self) -> Response:
        """The HTTP answer: the reply's `response` as JSON, or the stream as Server-Sent
        Events. The dispatch is closed once the answer is complete, or when the client
        goes away. Raises ReplyFailed when the request failed before any of the answer."""
        if self.cache is not None and self.cache.hit is not None:
            return self.gateway.cache.answer(self)
        cache_headers = self.cache.response_headers() if self.cache is not None else {}
        streaming = False
        limits = self.rate_limit_headers()
        try:
            first = await self.first()
            if not self.stream:
                completed = await self.completion(first)
                headers = {REQUEST_ID_HEADER: self.request_id, **limits, **cache_headers}
                if self.api in COUNTING_APIS:
                    # No upstream API: inference estimated the count itself.
                    exact = completed.data.upstream_api is not None
                    headers[TOKEN_COUNT_HEADER] = "exact" if exact else "estimate"
                response = completed.data.response
                if self.hides_encrypted_reasoning:
                    response = without_encrypted_reasoning(response)
                return Response(
                    exactjson.dumps(response),
                    media_type="application/json",
                    headers=headers,
                )
            streaming = True
            return EventStream(
                self._relay(first),
                media_type="text/event-stream",
                headers={
                    REQUEST_ID_HEADER: self.request_id,
                    "cache-control": "no-cache",
                    **limits,
                    **cache_headers,
                },
            )
        except ReplyFailed as failed:
            failed.headers.update(limits)
            raise
        except APIError as error:
            error.headers = {**(error.headers or {}), **limits}
            raise
        finally:
            if not streaming:
                self.close()

    def rate_limit_headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers, or Anthropic's `anthropic-ratelimit-*`."""
        return self.ticket.headers_for(self.api) if self.ticket is not None else {}

    async def _relay(self, first: Reply) -> AsyncIterator[bytes]:
        try:
            async for piece in self.sse(first):
                yield piece
        except ClientDisconnected:
            return  # nobody reads the rest; inference was asked to stop (`_next`)
        finally:
            if not self.finished:
                self.client_disconnected()
            self.close()

    # -- ending --------------------------------------------------------------------------

    def observe(self, status: int) -> None:
        """Record the request's duration (seconds since it arrived) in
        `switchyard_gateway_request_duration_seconds` under the HTTP `status` answered."""
        REQUEST_SECONDS.labels(self.api.value, self.model, str(status)).observe(
            time.perf_counter() - self.started
        )

    def client_disconnected(self) -> None:
        """The client went away before the end, or its stream was cut because it read too
        slowly (`PendingReplies`): by default, ask inference to stop (once, however many
        of the stream's watchers noticed)."""
        if self.finished or self._client_left or self._ended_in_stream:
            return
        self._client_left = True
        # The stream's HTTP status (200) went out with its first event; what it got
        # was cut: an Idempotency-Key must not keep it as the answer (a retry runs the
        # request again), as a 408 `client_disconnected` is not kept. A failure already
        # noted (a deadline, an interruption) stays what it was.
        self.request.scope.setdefault("state", {}).setdefault(STREAM_FAILED_STATUS, 408)
        action = self.gateway.settings.on_client_disconnect
        CANCELLED.labels(action).inc()
        if action == "cancel":
            self._cancel_in_background()

    def may_be_ended(self) -> bool:
        """Whether the gateway may still end this request with an error of its own: not
        once it finished, nor once its stream's own last event was relayed (its client
        has the whole answer)."""
        return not (self.finished or self._ended_in_stream or self._closed)

    def caller_revoked(self, code: str = "credentials_revoked") -> None:
        """The caller's credential was revoked, or its user disabled, while the request ran
        (`Gateway.end_revoked_requests` ended it): ask inference to stop it, whatever
        `on_client_disconnect` says (a leaked key must stop spending), and keep no
        answer under its Idempotency-Key (`NOT_KEPT`). `code` (`credentials_revoked`,
        `user_disabled`) is the cancellation's reason, which its record keeps."""
        state = self.request.scope.setdefault("state", {})
        state[NOT_KEPT] = True
        state.setdefault(STREAM_FAILED_STATUS, 403)
        self._cancel_in_background(reason=code)

    def _cancel_in_background(self, reason: str = "client_disconnected") -> None:
        """Ask inference to stop the request (best effort, not waited for), for `reason`."""
        task = asyncio.ensure_future(self._publish_cancel(reason=reason))
        self.gateway.background.add(task)
        task.add_done_callback(self.gateway.background.discard)

    def _unconfirmed_at_deadline(self) -> APIError:
        """The answer at the deadline to a request the bus never confirmed taking: 504
        `publish_outcome_unknown`. A cancellation goes out (best effort) so that the
        request, should it still be written, does not run: inference replicas remember
        cancellations of requests they have not seen yet."""
        task = asyncio.ensure_future(self._publish_cancel(retry_for_s=UNCONFIRMED_CANCEL_RETRY_S))
        self.gateway.background.add(task)
        task.add_done_callback(self.gateway.background.discard)
        return APIError(
            504,
            "The event bus did not confirm taking the request and no reply came before its "
            "deadline; it has been cancelled and may be retried.",
            code="publish_outcome_unknown",
            headers={REQUEST_ID_HEADER: self.request_id},
        )

    async def _publish_cancel(
        self, retry_for_s: float = 0.0, reason: str = "client_disconnected"
    ) -> None:
        """Publish `chat.cancel_requested` for this request, for `reason`, on the control
        topic; while the bus refuses it, retry (with backoff) for up to `retry_for_s`
        seconds, then give up with a warning. Never raises BusUnavailableError."""
        event = ChatCancelRequested(
            source="gateway",
            tenant=self.tenant,
            request_id=self.request_id,
            data=CancelRequestData(reason=reason),
        )
        give_up_at = time.monotonic() + retry_for_s
        attempt = 0
        while True:
            try:
                await self.gateway.bus.publish(
                    self.gateway.topics.control, event, key=self.request_id
                )
                return
            except BusUnavailableError as exc:
                attempt += 1
                delay = _CANCEL_BACKOFF.delay(attempt)
                if time.monotonic() + delay > give_up_at:
                    if retry_for_s:
                        log.warning(
                            "cancellation not published", request_id=self.request_id, error=str(exc)
                        )
                    return
                await asyncio.sleep(delay)

    def _answered(self) -> None:
        """Note a Responses request relayed to its completion, by its response id."""
        if self.api is ClientAPI.OPENAI_RESPONSES:
            accepted_at = self.accepted_at or utcnow()
            self.gateway.answered_responses.add(response_id(self.request_id, accepted_at))

    def close(self) -> None:
        """Stop waiting for replies and leave the in-flight count; safe to call twice."""
        if self._watcher is not None:
            # Let go of it too: a cancelled task keeps its CancelledError, whose traceback
            # holds the frames it ran in; kept here, that would tie every request's objects
            # into a cycle only the cyclic collector frees (pauses of tens of ms at c=1).
            self._watcher.cancel()
            self._watcher = None
        if self._closed:
            return
        self._closed = True
        self.gateway.pending.close(self.request_id)
        self.gateway.in_flight -= 1
        IN_FLIGHT.dec()

    # -- failures the gateway itself ends a stream with ----------------------------------

    def _relayed(self, events: list[StreamEvent]) -> bytes:
        if any(event.event in _STREAM_ENDING_EVENTS for event in events):
            self._ended_in_stream = True
        if self.api is ClientAPI.OPENAI_RESPONSES:
            for event in events:
                number = event.data.get("sequence_number")
                if isinstance(number, int):
                    self._next_sequence_number = number + 1
            if self.hides_encrypted_reasoning and any(
                event.event in _EVENTS_WITH_ITEMS for event in events
            ):
                events = [_shown(event) for event in events]
            for event in events:
                if event.event == "response.output_item.done":
                    index, item = event.data.get("output_index"), event.data.get("item")
                    if isinstance(index, int) and isinstance(item, dict):
                        self._done_items[index] = item
        return b"".join([sse_event(event) for event in events])

    def _stream_failure(self, error: ErrorInfo) -> bytes:
        """The event ending a stream that failed after it began, in the API's format: a
        Responses stream ends with `response.failed` (the response's id, the next
        `sequence_number`, `error` with its code and message, and in `output` the items
        the stream gave whole, as OpenAI's failed responses keep them), the others with
        their API's error event. Notes the failure's status in the request's scope
        (`STREAM_FAILED_STATUS`): the stream's own HTTP status, 200, says nothing of it,
        and an Idempotency-Key must not keep a failure the client is told to retry."""
        self.request.scope.setdefault("state", {})[STREAM_FAILED_STATUS] = error.status
        if self.api is not ClientAPI.OPENAI_RESPONSES:
            return sse_error_event(self.vendor, error)
        accepted_at = self.accepted_at or utcnow()
        response = response_object(
            self.body,
            id=response_id(self.request_id, accepted_at),
            created_at=accepted_at,
            model=self.model,
            status="failed",
            output=[self._done_items[index] for index in sorted(self._done_items)],
            error=error_object(error.status, error.message, error.code),
        )
        event = StreamEvent(
            event="response.failed",
            data={
                "type": "response.failed",
                "sequence_number": self._next_sequence_number,
                "response": response,
            },
        )
        return sse_event(event)

    def _outcome_unknown(self) -> None:
        """Note in the request's scope that it was published and no outcome came by its
        deadline (`OUTCOME_UNKNOWN`)."""
        self.request.scope.setdefault("state", {})[OUTCOME_UNKNOWN] = True

    def _deadline_error(self) -> ErrorInfo:
        return ErrorInfo(
            status=504,
            type=error_type(self.vendor, 504),
            code="deadline_exceeded",
            message="The request did not complete before its deadline.",
        )

    def _interrupted_error(
        self, why: str = "The stream was interrupted and restarted upstream"
    ) -> ErrorInfo:
        """The 502 `stream_interrupted` ending a stream that cannot go on, saying `why`."""
        return ErrorInfo(
            status=502,
            type=error_type(self.vendor, 502),
            code="stream_interrupted",
            message=f"{why}; retry the request.",
        )
