"""What the inference service does with each `chat.requested` event: wait for a slot of
its priority lane, serve it within its deadline (`attempts.Attempts`: deployments,
retries, fallback, streaming), and publish exactly one terminal reply (`chat.completed`
or `chat.failed`) plus one `usage.recorded` (`replies.ReplyPublisher`), whatever happened,
including a cancellation by the client or the deadline passing.

Knows nothing of Kafka: it gets a `publish` callable (the bus's), the topics, the routing
and price sources and its collaborators.

Semantics the gateway relies on:
- replies travel in the client's API (`data.api`): `chat.chunk` records carry the
  client's stream events, in order, `sequence` 0, 1, 2... under one `run`, published to
  the reply partition before the terminal event; the terminal `chat.completed` carries
  the whole reply (for a stream, the reply the events assemble to). The events that end a
  stream in the client's API (`message_stop`...) are among the chunks; an OpenAI
  `[DONE]` is not (the gateway writes it).
- a publish that fails is retried until the bus takes it; the upstream is never called
  again for it (the handler returns, and the bus commits, only once both events are out).
  A reply the bus refuses itself (larger than it carries) becomes `chat.failed` 502
  `response_too_large`, billed like the reply would have been: the partition never waits
  on an event that can never be published.
- a request delivered again (its replica died before committing its offset) is looked up
  in its reply partition first (`redelivery`): a reply found there is published again with
  the usage event its record carries, instead of calling the upstream, and a stream its
  client already partly received ends as `chat.failed` 502 `stream_interrupted` instead
  of running again. A copy delivered while this replica still handles the request (its
  partition was revoked past the grace and handed back) waits for that run and publishes
  nothing of its own: the stream goes on, and the request gets one outcome.
- a `chat.cancel_requested` on the control topic stops the request on whichever replica
  runs it: the upstream call is cancelled, and `chat.failed` (status `cancelled`, error
  408 `client_disconnected`) and the usage so far are published.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable

import structlog

from switchyard.common.bus import BusUnavailableError
from switchyard.common.events import ChatCancelRequested, ChatRequested, Event, Priority
from switchyard.common.routing import RoutingTable
from switchyard.common.topics import Topics
from switchyard.inference import metrics
from switchyard.inference.adapters import Adapters
from switchyard.inference.attempts import Attempts, CurrentRouting, FixedRouting
from switchyard.inference.errors import ProviderError
from switchyard.inference.lanes import LaneGate
from switchyard.inference.outcomes import (
    CurrentPrices,
    FixedPrices,
    Outcome,
    OutcomeEvents,
    cancelled,
    expired,
    failed,
)
from switchyard.inference.pricing import PriceTable
from switchyard.inference.providers import ProviderPool
from switchyard.inference.publishing import (
    Publish,
    PublishInOrder,
    PublishRetry,
    ReliablePublisher,
)
from switchyard.inference.redelivery import OutcomeLog
from switchyard.inference.reliability import Backoff, BreakerPolicy, DeploymentStates
from switchyard.inference.replies import PublishedOutcomes, ReplyPublisher
from switchyard.inference.runs import RequestRun, seconds_until

log = structlog.get_logger("switchyard.inference.handlers")

__all__ = ["ChatRequestHandler", "Publish", "RunningRequests"]


class RunningRequests:
    """The requests this replica is handling, by request id, so that a cancellation can
    reach them. A cancellation for a request not (yet) here is remembered for a while, in
    case the request arrives after it (a backlog, a redelivery)."""

    # An hour: no shorter than an interactive request's deadline (a stream's is at most an
    # hour, `SWITCHYARD_GATEWAY_STREAM_TIMEOUT_S`), so one cancelled before it arrives
    # never runs.
    def __init__(self, remember: int = 10_000, ttl_s: float = 3600.0) -> None:
        self._running: dict[str, tuple[RequestRun, asyncio.Task[Outcome]]] = {}
        # Cancellations that came first: when, the tenant they named, and why.
        self._early: OrderedDict[str, tuple[float, str | None, str]] = OrderedDict()
        self._remember = remember
        self._ttl_s = ttl_s

    def __len__(self) -> int:
        return len(self._running)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._running

    def start(self, run: RequestRun, task: asyncio.Task[Outcome]) -> None:
        """Register `run`, executed by `task`, so that a cancellation can reach it."""
        self._running[run.request.request_id] = (run, task)

    def finish(self, run: RequestRun) -> None:
        """Forget `run` once it ended (not a newer run of the same request id)."""
        entry = self._running.get(run.request.request_id)
        if entry is not None and entry[0] is run:
            del self._running[run.request.request_id]

    def cancel(
        self, request_id: str, tenant: str | None = None, reason: str = "client_disconnected"
    ) -> bool:
        """Cancel the request if it runs here (True); otherwise remember the cancellation.
        A cancellation naming another `tenant` than the request's cancels nothing (only
        the request's own client, through a gateway, cancels it). `reason` (the event's)
        decides the error the cancelled request is recorded with (`outcomes.cancelled`)."""
        entry = self._running.get(request_id)
        if entry is None:
            self._early[request_id] = (time.monotonic(), tenant, reason)
            self._early.move_to_end(request_id)
            while len(self._early) > self._remember:
                self._early.popitem(last=False)
            return False
        run, task = entry
        if tenant is not None and run.request.tenant != tenant:
            log.warning("cancellation of another tenant ignored", request_id=request_id)
            return False
        if not run.cancel_requested:
            run.cancel_requested = True
            run.cancel_reason = reason
            task.cancel()
        return True

    def cancelled_before_start(self, request_id: str, tenant: str | None = None) -> str | None:
        """The reason of a cancellation for `request_id` (of `tenant`, when both name
        one) that arrived before the request, within the last `ttl_s` seconds, or None;
        consumes it."""
        early = self._early.pop(request_id, None)
        if early is None:
            return None
        cancelled_at, cancel_tenant, reason = early
        if tenant is not None and cancel_tenant is not None and cancel_tenant != tenant:
            return None
        return reason if time.monotonic() - cancelled_at < self._ttl_s else None


class ChatRequestHandler:
    """The consumer-group handler of the request topics (both lanes): owns the deadline,
    the lane slot and cancellation of each request; `Attempts` serves it and
    `ReplyPublisher` publishes how it ended."""

    def __init__(
        self,
        *,
        publish: Publish,
        topics: Topics,
        routing: CurrentRouting | RoutingTable,
        publish_in_order: PublishInOrder | None = None,
        providers: ProviderPool,
        deployments: DeploymentStates | None = None,
        prices: CurrentPrices | PriceTable | None = None,
        lanes: LaneGate | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        adapters: Adapters | None = None,
        publish_retry: PublishRetry | None = None,
        outcomes: OutcomeLog | None = None,
        partition_count: Callable[[str], Awaitable[int]] | None = None,
    ) -> None:
        """`publish` and `publish_in_order` are the bus's (without the second, a reply
        and its usage event are published one after the other). `routing` and `prices`
        are tables, or sources holding the current `.table`. `partition_count` (the
        bus's, on a partitioned bus): a request naming a reply partition the replies
        topic lacks is answered on its own key's partition instead (no client waits on
        one that does not exist, and a reply sent there could never be written).
        `outcomes`: the outcomes log (`redelivery`); without one, outcomes are neither
        recorded nor looked up (a redelivered request then runs again)."""
        self._partition_count = partition_count
        self._reply_partitions = 0  # the replies topic's partitions, as last looked up
        self._topics = topics
        self._routing = FixedRouting(routing) if isinstance(routing, RoutingTable) else routing
        if prices is None:
            prices = PriceTable()
        self._replies = ReplyPublisher(
            ReliablePublisher(publish, publish_retry, publish_in_order),
            topics,
            OutcomeEvents(FixedPrices(prices) if isinstance(prices, PriceTable) else prices),
            outcomes,
        )
        self._lanes = lanes or LaneGate(interactive_capacity=1_000_000, batch_capacity=1_000_000)
        self._attempts = Attempts(
            routing=self._routing,
            providers=providers,
            adapters=adapters or Adapters(),
            deployments=deployments or DeploymentStates(BreakerPolicy()),
            backoff=backoff or Backoff(),
            rng=rng or random.Random(),
            publisher_of=self._replies.chunk_publisher,
        )
        self.running = RunningRequests()
        # The request events being handled here, by event id: each one's event and a
        # future set once it is handled (True: its outcome is on the bus; False: it
        # ended without one, raising or cancelled).
        self._handling: dict[str, tuple[ChatRequested, asyncio.Future[bool]]] = {}
        # How many of those events each request id has (the outcomes log forgets a
        # request only when none of its events is being handled).
        self._handling_requests: Counter[str] = Counter()

    @property
    def routing(self) -> RoutingTable:
        """The routing table requests are served with now."""
        return self._routing.table

    @property
    def outcomes(self) -> OutcomeLog | None:
        """The outcomes log outcomes are recorded in and looked up from (`redelivery`)."""
        return self._replies.outcomes

    @outcomes.setter
    def outcomes(self, log: OutcomeLog | None) -> None:
        self._replies.outcomes = log

    @property
    def published(self) -> PublishedOutcomes:
        """The outcomes this replica published lately, by request event id."""
        return self._replies.published

    @published.setter
    def published(self, published: PublishedOutcomes) -> None:
        self._replies.published = published

    @property
    def publish_failures(self) -> int:
        """Publish attempts that failed and were retried, since start."""
        return self._replies.failures

    async def __call__(self, event: Event) -> None:
        """Handle one event of a request topic: answer a `chat.requested` (other types are
        ignored). Returns once its terminal and usage events are on the bus, so the bus
        commits its offset only then; raises only what stops the bus's consumer
        (cancellation, the outcomes log being unreadable)."""
        if not isinstance(event, ChatRequested):
            return  # other event types on these topics are not ours to answer
        with structlog.contextvars.bound_contextvars(request_id=event.request_id):
            event = await self._addressable(event)
            while (earlier := self._handling.get(event.id)) is not None:
                first, handled = earlier
                if (first.tenant, first.request_id) != (event.tenant, event.request_id):
                    # Another request's event id (a bad producer): not the same request.
                    await self._handle(event)
                    return
                log.info("request delivered again while it is handled here; joining that run")
                metrics.REDELIVERED.labels("joined").inc()
                await asyncio.wait([handled])
                if handled.result():
                    return
                # That run ended without an outcome: this copy is handled in its place.
            handled = asyncio.get_running_loop().create_future()
            self._handling[event.id] = (event, handled)
            self._handling_requests[event.request_id] += 1
            try:
                await self._handle(event)
            except BaseException:
                handled.set_result(False)
                raise
            finally:
                del self._handling[event.id]
                self._handling_requests[event.request_id] -= 1
                if not self._handling_requests[event.request_id]:
                    del self._handling_requests[event.request_id]
            handled.set_result(True)
            if event.request_id not in self._handling_requests:
                # A copy of this event delivered later is answered from what this replica
                # published lately (`PublishedOutcomes`, by event id); nothing sends a copy
                # of a handled request under another event id.
                self._replies.settled(event.request_id)

    async def _handle(self, event: ChatRequested) -> None:
        """Answer `event` (again, if it was answered before), publishing its outcome."""
        if await self._replies.answer_again(event):
            return
        run = RequestRun(event)
        outcome = await self._outcome(run)
        outcome.latency_ms = (time.perf_counter() - run.started) * 1000
        await self._replies.publish_outcome(run, outcome)

    async def _addressable(self, request: ChatRequested) -> ChatRequested:
        """`request`, without its reply address when the replies topic has no such
        partition (a bad producer's: the reply could never be written, and retrying it
        would hold a slot for good); the partition count is looked up again only for a
        partition above the one last seen. Unchanged when the bus cannot tell."""
        reply_to = request.data.reply_to
        if (
            reply_to is None
            or self._partition_count is None
            or reply_to.partition < self._reply_partitions
        ):
            return request
        try:
            self._reply_partitions = await self._partition_count(self._topics.replies)
        except BusUnavailableError:
            return request
        if reply_to.partition < self._reply_partitions:
            return request
        log.warning(
            "reply partition does not exist; answering on the request's own partition",
            partition=reply_to.partition,
            partitions=self._reply_partitions,
        )
        data = request.data.model_copy(update={"reply_to": None})
        return request.model_copy(update={"data": data})

    async def cancel(self, event: Event) -> None:
        """The control-topic listener: cancel a request if this replica runs it."""
        if isinstance(event, ChatCancelRequested) and self.running.cancel(
            event.request_id, event.tenant, event.data.reason
        ):
            log.info(
                "request cancelled by its client",
                request_id=event.request_id,
                reason=event.data.reason,
            )

    async def _outcome(self, run: RequestRun) -> Outcome:
        request_id = run.request.request_id
        early = self.running.cancelled_before_start(request_id, run.request.tenant)
        if early is not None:
            run.cancel_requested = True
            run.cancel_reason = early
            return self._cancelled(run)
        task = asyncio.get_running_loop().create_task(self._guarded(run))
        self.running.start(run, task)
        try:
            return await task
        finally:
            self.running.finish(run)

    async def _guarded(self, run: RequestRun) -> Outcome:
        try:
            return await self._serve_within_deadline(run)
        except asyncio.CancelledError:
            if run.cancel_requested:
                return self._cancelled(run)
            raise
        except Exception:  # noqa: BLE001 - a bug must still give the client a terminal reply
            log.exception("request handling failed unexpectedly")
            outcome = failed(
                ProviderError(
                    500, None, "Internal error in the inference service.", code="internal_error"
                ),
                run.deployment,
            )
            outcome.usage = run.usage_so_far()
            outcome.upstream_calls = run.upstream_calls
            outcome.response = run.given()
            return outcome
        finally:
            if run.publisher is not None:
                await run.publisher.aclose()

    def _cancelled(self, run: RequestRun) -> Outcome:
        metrics.CANCELLATIONS.labels(run.request.data.model).inc()
        outcome = cancelled(run.usage_so_far(), run.deployment, run.cancel_reason)
        outcome.upstream_calls = run.upstream_calls
        outcome.response = run.given()
        return outcome

    async def _serve_within_deadline(self, run: RequestRun) -> Outcome:
        data = run.request.data
        remaining = seconds_until(data.deadline)
        if remaining <= 0:
            return expired("The request's deadline passed before it could be served.")
        try:
            async with asyncio.timeout(remaining) as deadline:
                async with self._lanes.slot(data.priority):
                    run.in_lane = True
                    if data.priority is Priority.BATCH:
                        # Nobody waits on it: a poll shows it running from now on.
                        await self._replies.announce_start(run)
                    return await self._attempts.serve(run)
        except TimeoutError:
            if not deadline.expired():
                raise
            if not run.in_lane:
                return expired("The request's deadline passed while it waited for a lane slot.")
            where = (
                "the upstream was answering"
                if run.upstream_calls
                else "it waited for a deployment with free capacity"
            )
            outcome = expired(f"The request's deadline passed while {where}.", run.usage_so_far())
            outcome.deployment = run.deployment
            outcome.upstream_calls = run.upstream_calls
            outcome.response = run.given()
            return outcome
