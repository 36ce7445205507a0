"""Getting a request's answer to its client: the stream's `chat.chunk` records, then exactly
one terminal event (`chat.completed` or `chat.failed`) and one `usage.recorded`, and the
same events again, without calling the upstream, for a request delivered again.

- Every event goes through `ReliablePublisher`: a publish that fails is retried until the
  bus takes it, so the upstream is never called again for it.
- The terminal event carries its usage event in a record header (`USAGE_HEADER`): the
  reply partition, read back by `redelivery`, then holds everything a replica receiving
  the request again needs to answer it, written in the one record the client waits for.
- A reply the bus refuses itself (larger than it carries) becomes `chat.failed` 502
  `response_too_large`, billed like the reply would have been; a failure refused for the
  part of its stream it carries (`chat.failed`'s `response`) is published without it.
- Terminal and usage events keep their ids (derived from the request event's), so
  consumers deduplicate the copies a redelivery publishes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict

import structlog

from switchyard.common.bus import (
    USAGE_HEADER,
    EventRejectedError,
    Publication,
    delivery_may_repeat,
)
from switchyard.common.events import (
    ChatRequested,
    ChatStarted,
    ChatStartedData,
    ClientAPI,
    EnvelopeFields,
    TerminalStatus,
    encode_event,
)
from switchyard.common.topics import Topics
from switchyard.inference import metrics
from switchyard.inference.outcomes import (
    SOURCE,
    Outcome,
    OutcomeEvents,
    stream_interrupted,
    undeliverable,
)
from switchyard.inference.publishing import (
    ChunkPublisher,
    PublicationRejectedError,
    ReliablePublisher,
    chunk_records,
)
from switchyard.inference.redelivery import OutcomeLog, Recorded
from switchyard.inference.runs import RequestRun

log = structlog.get_logger("switchyard.inference.replies")

# How long announcing that a batch-lane request began (`chat.started`) may hold it up (s):
# the announcement only changes what a poll shows, never what is answered.
START_ANNOUNCE_TIMEOUT_S = 2.0


class PublishedOutcomes:
    """The terminal and usage events this replica published lately, by request event id:
    a request delivered again after its outcome was published (a rebalance that hands
    its partition back, a commit that failed) gets the same events published again, with
    the same ids, instead of a second upstream call. Bounded: the oldest are forgotten,
    and embeddings (large, and cheap to compute again) are not kept."""

    def __init__(self, remember: int = 256) -> None:
        self._events: OrderedDict[str, tuple[EnvelopeFields, EnvelopeFields]] = OrderedDict()
        self._remember = remember

    def get(self, event_id: str) -> tuple[EnvelopeFields, EnvelopeFields] | None:
        """The (terminal, usage) events published for the request event `event_id`, or
        None if this replica published none lately."""
        return self._events.get(event_id)

    def add(self, event_id: str, reply: EnvelopeFields, usage: EnvelopeFields) -> None:
        """Remember the terminal `reply` and `usage` events of request event `event_id`,
        forgetting the oldest beyond `remember`."""
        self._events[event_id] = (reply, usage)
        self._events.move_to_end(event_id)
        while len(self._events) > self._remember:
            self._events.popitem(last=False)


class ReplyPublisher:
    """Publishes what a request gets, to the topics of `topics` through `publish` (retried
    until the bus takes each event): its stream records, its terminal and usage events
    (built, priced and counted by `events`), and, for a request delivered again, what it
    got before. `outcomes`: the outcomes log, or None (then outcomes are neither recorded
    nor looked up, and a redelivered request not published here lately runs again)."""

    def __init__(
        self,
        publish: ReliablePublisher,
        topics: Topics,
        events: OutcomeEvents,
        outcomes: OutcomeLog | None = None,
    ) -> None:
        self._publish = publish
        self._topics = topics
        self._events = events
        self.outcomes = outcomes
        self.published = PublishedOutcomes()

    @property
    def failures(self) -> int:
        """Publish attempts that failed and were retried, since start."""
        return self._publish.failures

    async def answer_again(self, request: ChatRequested) -> bool:
        """Answer a request this replica or another already handled, without calling the
        upstream: True if it was answered (its recorded events published again, or its
        started stream ended as `stream_interrupted`), False if it must run. Raises what
        the outcomes log's lookup raises (`BusUnavailableError` while it cannot be read)."""
        done = self.published.get(request.id)
        # Only the request's own: a request event copying another's event id (a bad
        # producer) must not be answered with that request's outcome.
        if done is not None and all(
            event.tenant == request.tenant and event.request_id == request.request_id
            for event in done
        ):
            log.info("request delivered again after its outcome was published; republishing")
            await self._republish(request, *done)
            return True
        # Only an event an earlier owner of its partition may have handled is looked up:
        # the read barrier costs a broker round trip, and a new event cannot be there.
        if self.outcomes is None or not delivery_may_repeat.get():
            return False
        recorded = await self.outcomes.lookup(request)
        return recorded is not None and await self._answer_recorded(request, recorded)

    def settled(self, request_id: str) -> None:
        """Tell the outcomes log that the request `request_id` is handled (`OutcomeLog.settled`)."""
        if self.outcomes is not None:
            self.outcomes.settled(request_id)

    async def _answer_recorded(self, request: ChatRequested, recorded: Recorded) -> bool:
        if recorded.answered:
            assert recorded.reply is not None and recorded.usage is not None
            log.info("request delivered again after its outcome was recorded; republishing")
            metrics.REDELIVERED.labels("republished").inc()
            await self._republish(request, recorded.reply, recorded.usage)
            return True
        if recorded.stream_started is not None:
            # Part of another run's stream may have reached the client, and a new run
            # cannot continue it: the client's stream ends with this error, and so does
            # the request's record. The dead run's tokens are unknown (not billed).
            log.warning("stream delivered again after it started; ending it as interrupted")
            metrics.REDELIVERED.labels("stream_interrupted").inc()
            await self.publish_outcome(RequestRun(request), stream_interrupted())
            return True
        return False

    async def _republish(
        self, request: ChatRequested, reply: EnvelopeFields, usage: EnvelopeFields
    ) -> None:
        await self._publish_terminal(request, reply, usage)

    async def publish_outcome(self, run: RequestRun, outcome: Outcome) -> None:
        """Publish how `run` ended: the terminal event to the client's reply partition,
        carrying its usage event (the record a replica receiving the request again
        answers from), and the usage event to the usage topic, handed to the bus after
        it; count it in the metrics. Returns once the bus took both; only cancellation
        interrupts it."""
        request = run.request
        cost = self._events.cost(request, outcome)
        reply = self._events.terminal(request, outcome)
        usage = self._events.usage(request, outcome, cost, run.ttft_ms, run.run_id)
        try:
            await self._publish_terminal(request, reply, usage)
        except PublicationRejectedError as exc:
            if exc.index != 0:  # the reply was taken; a usage event refused is not the client's
                self._events.record_metrics(request, outcome, cost)
                raise
            if outcome.status is not TerminalStatus.COMPLETED and outcome.response is not None:
                # What the stream gave made the failure too large: the same failure without
                # it (the client has those events already; history keeps its outcome).
                log.warning("a failure with its stream's part is refused; publishing it without")
                outcome = dataclasses.replace(outcome, response=None)
            else:
                # Refused for what it is: no retry could deliver it. The client gets an
                # error it can act on, and the upstream calls that happened are still billed.
                log.error("the reply cannot be published; answering an error", error=repr(exc))
                outcome = undeliverable(outcome, exc)
            reply = self._events.terminal(request, outcome)
            usage = self._events.usage(request, outcome, cost, run.ttft_ms, run.run_id)
            await self._publish_terminal(request, reply, usage)
        self._events.record_metrics(request, outcome, cost)
        if request.data.api is not ClientAPI.OPENAI_EMBEDDINGS:
            self.published.add(request.id, reply, usage)

    async def _publish_terminal(
        self, request: ChatRequested, reply: EnvelopeFields, usage: EnvelopeFields
    ) -> None:
        """Publish the terminal `reply` carrying `usage`, then `usage` to the usage topic,
        together: the usage event is handed to the bus only after the reply (and after
        its acknowledgement when the reply is large), so it is never written when the
        reply is refused, and the usage event of the error answered instead is the one
        recorded. Raises PublicationRejectedError naming the one refused."""
        await self._publish.in_order(
            [
                self._reply_publication(request, reply, usage),
                Publication(self._topics.usage, usage, key=request.request_id),
            ]
        )

    async def announce_start(self, run: RequestRun) -> None:
        """Publish `chat.started` for `run`, a request inference begins after it waited in
        its lane, to its reply partition: history then shows it running (a background
        response `in_progress`, no longer `queued`). Best effort: a bus that does not take
        it within `START_ANNOUNCE_TIMEOUT_S`, or refuses it, is logged and the request
        runs all the same."""
        request = run.request
        event = ChatStarted(
            source=SOURCE,
            tenant=request.tenant,
            request_id=request.request_id,
            data=ChatStartedData(priority=request.data.priority),
        )
        try:
            async with asyncio.timeout(START_ANNOUNCE_TIMEOUT_S):
                await self._publish_reply(request, event)
        except (TimeoutError, EventRejectedError) as exc:
            log.warning("could not announce that the request started", error=repr(exc))

    async def _publish_reply(self, request: ChatRequested, event: EnvelopeFields) -> None:
        """Publish the stream record `event` to the client's reply partition."""
        publication = self._reply_publication(request, event)
        await self._publish(
            publication.topic,
            publication.event,
            key=publication.key,
            partition=publication.partition,
        )

    def _reply_publication(
        self, request: ChatRequested, event: EnvelopeFields, usage: EnvelopeFields | None = None
    ) -> Publication:
        """`event` to the client's reply partition (the partition of the request id's key
        when nobody waits); a terminal event carries its `usage` event in the same record,
        and is told to the outcomes log before the client can see it."""
        reply_to = request.data.reply_to
        if self.outcomes is not None:
            self.outcomes.written(event, usage)
        return Publication(
            self._topics.replies,
            event,
            key=request.request_id,
            partition=reply_to.partition if reply_to else None,
            headers={USAGE_HEADER: encode_event(usage)} if usage is not None else None,
        )

    def chunk_publisher(self, run: RequestRun) -> ChunkPublisher:
        """The publisher of `run`'s stream: its events become `chat.chunk` records on the
        client's reply partition (the first one marks, for a replica receiving the request
        again, that its client may hold part of this run's stream)."""
        request = run.request

        async def publish(event: EnvelopeFields) -> None:
            await self._publish_reply(request, event)

        return ChunkPublisher(
            publish, chunk_records(request.request_id, request.id, request.tenant, run.run_id)
        )
