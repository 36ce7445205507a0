"""Getting a request's events onto the bus without ever calling the upstream twice.

A failed publish is retried, with backoff, until the bus takes the event (or the
handler is cancelled at shutdown): the upstream's result is kept in memory meanwhile, so
a broker outage delays a reply but never re-runs the provider call that produced it. An
event the bus refuses itself (`EventRejectedError`: too large, not serialisable) is not
retried, since it never could be taken: the error is raised for the caller to decide.

`ChunkPublisher` publishes a stream's events in order without making the stream wait
for each publish: events queue up while one record is on its way, and one pump task
publishes them, several per `chat.chunk` record when the bus is slower than the
upstream (a stream never falls behind by more than one publish). A reader that awaits
`room()` between reads holds at most `MAX_BACKLOG` events waiting. Sequence numbers are
given at publication, so they stay consecutive.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from switchyard.common.backoff import Backoff
from switchyard.common.bus import EventRejectedError, Publication
from switchyard.common.events import (
    ChatChunk,
    ChatChunkData,
    EnvelopeFields,
    StreamEvent,
    derived_event_id,
)
from switchyard.common.tasks import cancel_and_wait

log = structlog.get_logger("switchyard.inference.publishing")

# Most stream events in one chat.chunk record (a record stays far below Kafka's limit).
MAX_EVENTS_PER_RECORD = 256
# Most events a stream may have waiting for the bus before its reader stops reading the
# upstream (`ChunkPublisher.room`): 32 records, minutes of a model's output, so a broker
# outage of that long never pauses a real stream, while an upstream faster than the bus
# is held back by its connection instead of growing the queue without bound.
MAX_BACKLOG = 32 * MAX_EVENTS_PER_RECORD


class Publish(Protocol):
    """The bus's publish: waits until the bus durably accepted the event, or raises."""

    def __call__(
        self,
        topic: str,
        event: EnvelopeFields,
        *,
        key: str | None = None,
        partition: int | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> Awaitable[None]:
        """Publish `event` to `topic`, with the partitioner's `key` or an explicit
        `partition`, and record `headers` written in the same record; the awaitable ends
        once the bus accepted it, or raises (BusUnavailableError, EventRejectedError)."""
        ...


@dataclass(frozen=True)
class PublishRetry(Backoff):
    """The common backoff policy (full jitter, capped) between attempts to publish one
    event, with short defaults: a publish usually fails only while a broker moves."""

    initial_s: float = 0.05
    max_s: float = 2.0


class PublishInOrder(Protocol):
    """The bus's `publish_in_order`: waits until the bus durably accepted every event."""

    def __call__(self, publications: Sequence[Publication]) -> Awaitable[None]:
        """Publish `publications` in this order (each handed to the bus only after the one
        before it); ends once the bus accepted every one, or raises what publishing one
        raised (BusUnavailableError, EventRejectedError)."""
        ...


class PublicationRejectedError(EventRejectedError):
    """The bus refused the publication at `index` of those given to
    `ReliablePublisher.in_order` itself (too large, not serialisable): the ones before it
    were accepted, and none after it was written (the bus hands each over only after the
    one before it, and waits for a large one's acknowledgement first)."""

    def __init__(self, index: int, reason: EventRejectedError) -> None:
        super().__init__(str(reason))
        self.index = index


class ReliablePublisher:
    """Publishes one event until the bus takes it; only cancellation stops it, or the bus
    refusing that event itself (EventRejectedError, raised at once). `publish_in_order`
    (the bus's) lets `in_order` send several events together; without it they are
    published one after the other."""

    def __init__(
        self,
        publish: Publish,
        retry: PublishRetry | None = None,
        publish_in_order: PublishInOrder | None = None,
    ) -> None:
        self._publish = publish
        self._publish_in_order = publish_in_order
        self._retry = retry or PublishRetry()
        self._last_warning = 0.0
        self.failures = 0  # publish attempts that failed (for tests and metrics)

    async def in_order(self, publications: Sequence[Publication]) -> None:
        """Publish `publications` in this order, retrying until the bus takes each. First
        all together, in one attempt (the bus hands each over only after the one before
        it, so a later event is never written when an earlier one is refused before
        sending); if that attempt fails, one at a time, each retried as `__call__` retries
        it, from the first (an event the failed attempt wrote is then written again, with
        the same id: consumers deduplicate). Raises PublicationRejectedError (naming the
        event) for the first event the bus refuses itself, and CancelledError when
        cancelled."""
        if self._publish_in_order is not None:
            try:
                await self._publish_in_order(publications)
                return
            except asyncio.CancelledError:
                raise
            except EventRejectedError:
                pass  # which one: found one at a time below
            except Exception as exc:  # noqa: BLE001 - the bus is down: one at a time, retried
                self._failed(publications[0].topic, publications[0].event, exc)
        for index, publication in enumerate(publications):
            try:
                await self(
                    publication.topic,
                    publication.event,
                    key=publication.key,
                    partition=publication.partition,
                    headers=publication.headers,
                )
            except EventRejectedError as exc:
                raise PublicationRejectedError(index, exc) from exc

    def _failed(self, topic: str, event: EnvelopeFields, exc: Exception) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._last_warning > 5:  # one line per outage, not one per retry
            self._last_warning = now
            log.warning(
                "publish failed; retrying (the upstream is not called again)",
                topic=topic,
                event_type=getattr(event, "type", None),
                request_id=event.request_id,
                error=repr(exc),
            )

    async def __call__(
        self,
        topic: str,
        event: EnvelopeFields,
        *,
        key: str | None = None,
        partition: int | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        """Publish `event` to `topic` (with the bus's `key`, `partition` and record
        `headers`), retrying with backoff until the bus takes it. Raises EventRejectedError
        at once for an event the bus refuses itself, and CancelledError when cancelled."""
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._publish(topic, event, key=key, partition=partition, headers=headers)
                return
            except (asyncio.CancelledError, EventRejectedError):
                raise
            except Exception as exc:  # noqa: BLE001 - the bus is down: keep the event, retry
                self._failed(topic, event, exc)
                await asyncio.sleep(self._retry.delay(attempt))


class ChunkPublisher:
    """Publishes the events of one stream as `chat.chunk` records, in order, with no gap:
    a record of several events the bus refuses is sent again in halves; once it refuses a
    single event (`EventRejectedError`: it can never take it), nothing after it is
    published, and `send` and `flush` raise that error. `on_published`, when set, is
    called with the events of each record once the bus took it (what the client is
    given, where `send` only queues)."""

    def __init__(
        self,
        publish: Callable[[EnvelopeFields], Awaitable[None]],
        record: Callable[[int, list[StreamEvent]], ChatChunk],
    ) -> None:
        self._publish = publish
        self._record = record
        self._queue: deque[StreamEvent] = deque()
        self._task: asyncio.Task[None] | None = None
        # Set by the pump after each record it publishes, for `room` to look again.
        self._progress = asyncio.Event()
        self.sent = 0  # events accepted (they will all reach the client)
        self.published = 0  # records published
        self.on_published: Callable[[list[StreamEvent]], None] | None = None
        # The refusal that stopped the stream's publication, if one did.
        self.failure: EventRejectedError | None = None

    def send(self, event: StreamEvent) -> None:
        """Queue one client stream event; it is published in order, in the next record the pump
        sends. Needs a running event loop. Raises the bus's EventRejectedError once it
        refused a record of this stream: a later event would leave a gap."""
        if self.failure is not None:
            raise self.failure
        self._queue.append(event)
        self.sent += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(len(queue), MAX_EVENTS_PER_RECORD))]
            try:
                await self._publish_batch(batch)
            except EventRejectedError as exc:
                # Never retried (it could not succeed), and never skipped: the stream's
                # publication ends here, and its reader learns it from `send` or `flush`.
                self.failure = exc
                queue.clear()
                self._progress.set()
                return
            self._progress.set()

    async def _publish_batch(self, batch: list[StreamEvent]) -> None:
        """Publish `batch` in one record, or, when the bus refuses a record of several
        events (too large: records are cut by count, and events may be large), in two
        halves, each the same way. Raises EventRejectedError for a single event the bus
        refuses."""
        try:
            await self._publish(self._record(self.published, batch))
        except EventRejectedError:
            if len(batch) == 1:
                raise
            half = len(batch) // 2
            await self._publish_batch(batch[:half])
            await self._publish_batch(batch[half:])
            return
        self.published += 1
        if self.on_published is not None:
            self.on_published(batch)

    @property
    def backlog(self) -> int:
        """How many sent events are not yet on their way to the bus."""
        return len(self._queue)

    async def room(self, backlog: int = MAX_BACKLOG) -> None:
        """Wait while more than `backlog` events wait for the bus, so a reader that awaits
        this between reads holds at most that many (plus one record in flight). Returns at
        once when the pump has stopped (a refused record: `send` and `flush` raise it)."""
        while len(self._queue) > backlog and self._task is not None and not self._task.done():
            self._progress.clear()
            waiter = asyncio.ensure_future(self._progress.wait())
            try:
                await asyncio.wait((waiter, self._task), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    async def flush(self) -> None:
        """Wait until every event sent so far is published. Raises the bus's
        EventRejectedError when it refused a record of this stream."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
        if self.failure is not None:
            raise self.failure

    async def aclose(self) -> None:
        """Stop publishing (what is still queued is dropped)."""
        self._queue.clear()
        if self._task is not None and not self._task.done():
            await cancel_and_wait(self._task)
        # A cancelled pump keeps its CancelledError, whose traceback holds the pump's frame
        # and so this publisher: let go of it, or the two stay in a cycle only the cyclic
        # collector frees.
        self._task = None


def chunk_records(
    request_id: str, event_id: str, tenant: str, run: str
) -> Callable[[int, list[StreamEvent]], ChatChunk]:
    """A factory of the `chat.chunk` records of one run of one request."""
    envelope = {"source": "inference", "tenant": tenant, "request_id": request_id}
    prefix = derived_event_id(event_id, f"{run}.chunk-")

    def record(sequence: int, events: list[StreamEvent]) -> ChatChunk:
        return ChatChunk(
            id=f"{prefix}{sequence}",
            **envelope,
            data=ChatChunkData(sequence=sequence, run=run, events=events),
        )

    return record
