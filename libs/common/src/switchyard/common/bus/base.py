"""The event bus interface. Handlers receive decoded events and know nothing of the
implementation they run on (Kafka in production, memory in embedded mode and unit tests).

Two ways to receive events:
- `subscribe`: a consumer group. Each event goes to one member; the event counts as
  consumed only after the handler returned (Kafka commits the offset then), so a crash
  means redelivery, never loss. `subscribe_batch` is the same, a batch at a time.
- `listen`: every listener sees every new event (no group, no commits), e.g. a gateway
  replica reading the replies addressed to it.

No consumer can be stuck by one event. A handler failure counts against its event only
while the consumer's dependencies are healthy (the `healthy` check given to `subscribe`,
and for the Kafka bus its own ability to publish): a failure during an outage pauses the
consumer and is retried for as long as the outage lasts, whereas an event that keeps
failing while everything it needs works is dead-lettered after `RetryPolicy.max_attempts`
and its partition moves on. A failing batch is split until the event that fails alone is
found (`handle_batch_isolating`), so one bad event never holds back the others.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

from switchyard.common.backoff import Backoff
from switchyard.common.bus import metrics
from switchyard.common.events import (
    EnvelopeFields,
    Event,
    EventDecodeError,
    decode_event_off_loop,
    encode_event,
)

Handler = Callable[[Event], Awaitable[None]]
BatchHandler = Callable[[list[Event]], Awaitable[None]]
# A consumer's view of its dependencies (database, the bus itself): True when they work.
HealthCheck = Callable[[], Awaitable[bool]]
# Whether a listener wants the event published with this key (see `EventBus.listen`).
KeyFilter = Callable[[str], bool]
# (topic, partition) -> offset.
Offsets = dict[tuple[str, int], int]

# The record header in which a reply's terminal event carries the request's
# `usage.recorded` event (encoded as on the usage topic): a reader of the reply has its
# usage without reading the usage topic.
USAGE_HEADER = "usage"


@dataclass(frozen=True)
class Carried:
    """Events carried in a record header named `header` (encoded as on their own topic),
    for a listener: each is decoded and given to `handler` before the record's own event,
    for the records the listener's key filter accepts and, if given, `key_filter` too."""

    header: str
    handler: Handler
    key_filter: KeyFilter | None = None

    async def hand_over(self, raw: bytes, key: str | None, topic: str, **where: object) -> None:
        """Decode `raw` (the header's value on a record of `topic` keyed `key`) and give
        it to `handler`, unless `key_filter` refuses the key (then not even decoded). An
        event that does not decode, is of another request than the record's key, or that
        the handler fails on is counted (`switchyard_bus_events_skipped_total`, reason
        `carried`), logged with `where` (the record's coordinates) and skipped: a carried
        event is extra, and the record's own event is handled anyway."""
        if self.key_filter is not None and key is not None and not self.key_filter(key):
            return
        try:
            event = await decode_event_off_loop(raw)
            if key is not None and event.request_id != key:
                # A record carries its own request's event, never another's (a bad
                # producer's header would otherwise settle some other request).
                raise EventDecodeError(
                    f"carried event of request {event.request_id!r} on a record of {key!r}"
                )
            await self.handler(event)
        except Exception as exc:  # noqa: BLE001 - a carried event is extra: never fatal
            metrics.EVENTS_SKIPPED.labels(topic, "carried").inc()
            log.warning(
                "listener skipped a carried event",
                topic=topic,
                header=self.header,
                error=repr(exc)[:500],
                **where,
            )


@dataclass(frozen=True)
class Publication:
    """One event to publish, as `EventBus.publish` takes it: to `topic`, with the
    partitioner's `key` (default: the event's request id) or an explicit `partition`, and
    record `headers` written in the same record."""

    topic: str
    event: EnvelopeFields
    key: str | None = None
    partition: int | None = None
    headers: Mapping[str, bytes] | None = None


log = structlog.get_logger("switchyard.bus")


# Set by a consumer around each handler call: False only when the bus knows the event is
# delivered for the first time (Kafka: its offset is at or past the partition's end when
# this consumer was assigned the partition, so no earlier owner can have handled it).
# Handlers with an expensive "did this already happen?" check skip it when False.
delivery_may_repeat: ContextVar[bool] = ContextVar("delivery_may_repeat", default=True)


class BusUnavailableError(RuntimeError):
    """The bus did not accept an event in time (e.g. Kafka is unreachable)."""


class PublishOutcomeUnknownError(BusUnavailableError):
    """The broker received the event but did not answer in time: it may still be written
    (as with any Kafka client whose request times out)."""


class EventRejectedError(BusUnavailableError):
    """The bus refuses this event itself (it cannot be serialised, or the broker will never
    take it, e.g. too large): unlike an outage, retrying the same event cannot help."""


def is_outage(error: BaseException) -> bool:
    """True if `error` is, or was caused by, the bus being unavailable: a failure that says
    nothing about the event being handled."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, BusUnavailableError) and not isinstance(current, EventRejectedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class EventTooLargeError(EventRejectedError):
    """The event is larger than the bus carries (Kafka's `max.message.bytes` of the topic,
    or the producer's limit, `SWITCHYARD_KAFKA_MAX_MESSAGE_BYTES`): retrying cannot help."""


def serialise(event: EnvelopeFields) -> bytes:
    """The bytes `event` travels as on every bus (UTF-8 JSON, `encode_event`); consumers
    read them back with `decode_event`. Raises EventRejectedError when the event cannot be
    serialised (e.g. nested deeper than the serialiser allows): retrying cannot help."""
    try:
        return encode_event(event)
    except ValueError as exc:
        raise EventRejectedError(f"the event cannot be serialised: {exc}") from exc


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing handler is retried before its event is dead-lettered.

    `max_attempts` counts only the failures that happened while the consumer's
    dependencies were healthy: an outage never uses up an event's attempts, it only pauses
    the consumer (with backoff) until the dependency is back. `max_attempts=None` never
    dead-letters (every failure is retried).
    """

    max_attempts: int | None = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 10.0

    def backoff(self, attempt: int) -> float:
        """The wait (seconds) before retry number `attempt` (1 for the first): the common
        `Backoff` policy, full jitter between 0 and the capped exponential ceiling."""
        return Backoff(self.initial_backoff_s, self.max_backoff_s).delay(attempt)

    def gives_up_after(self, attempt: int) -> bool:
        """Whether the event is dead-lettered after failing `attempt` times (1 for the first
        failure)."""
        return self.max_attempts is not None and attempt >= self.max_attempts


class Subscription(abc.ABC):
    """A running subscription or listener returned by `EventBus.subscribe`,
    `subscribe_batch` or `listen`; stop it to leave the group."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop receiving; wait for handlers in progress and record their progress."""

    def healthy(self) -> bool:
        """True while the subscription is receiving (its consumer runs and is connected)."""
        return True

    def hurry(self) -> None:
        """A batch subscription stops waiting for its batch to fill: what it holds is
        handled at once, and so is every batch it starts within its batch wait from now
        (the events of one request come moments apart). For a reader that needs what was
        just published. Other subscriptions ignore it."""
        return None

    async def hurry_and_wait(self, timeout: float) -> None:
        """`hurry`, then wait at most `timeout` seconds until this member has handled every
        event published before the call on the partitions it reads (the Kafka bus: one
        broker round trip for their end offsets; the in-memory bus's `settled` waits for
        everything published instead). Returns at the timeout, or when the bus cannot
        tell, without raising."""
        self.hurry()


class EventBus(abc.ABC):
    """Publish and receive events. Start before use, stop to flush and release."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect to the bus and get ready to publish; call once before any other method.
        May return before the bus is reachable (the Kafka bus keeps connecting in the
        background)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop every subscription (waiting for handlers in progress), flush what was
        published and release connections."""

    @abc.abstractmethod
    async def publish(
        self,
        topic: str,
        event: EnvelopeFields,
        *,
        key: str | None = None,
        partition: int | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        """Publish and wait until the bus has durably accepted the event.
        `headers`: record headers written with the event, in the same record (so they
        are stored, or not, together with it); Kafka keeps them in the record, the
        in-memory bus hands them to listeners with the event (its consumer groups, whose
        events live no longer than the process, see none).
        Raises BusUnavailableError if it cannot within its timeout."""

    async def publish_in_order(self, publications: Sequence[Publication]) -> None:
        """Publish `publications` in this order and wait until the bus durably accepted
        every one. Each is handed to the bus only after the one before it was, so one the
        bus refuses itself (too large, not serialisable) keeps every later one from being
        published; the Kafka bus then sends them together (one produce request when they
        go to the same broker) instead of one round trip each, except after a large one
        (over 64 KiB), which it waits to see acknowledged first.
        Raises what `publish` raises, for the first publication that failed; any of the
        others may or may not have been written."""
        for publication in publications:
            await self.publish(
                publication.topic,
                publication.event,
                key=publication.key,
                partition=publication.partition,
                headers=publication.headers,
            )

    @abc.abstractmethod
    async def subscribe(
        self,
        topics: Sequence[str],
        group: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        retry: RetryPolicy = RetryPolicy(),
        healthy: HealthCheck | None = None,
    ) -> Subscription:
        """Join consumer group `group`; up to `concurrency` events are handled at once.
        `healthy` says whether the handler's dependencies work (see the module docstring)."""

    @abc.abstractmethod
    async def subscribe_batch(
        self,
        topics: Sequence[str],
        group: str,
        handler: BatchHandler,
        *,
        max_batch: int = 500,
        max_batch_wait_ms: int | None = None,
        retry: RetryPolicy = RetryPolicy(),
        healthy: HealthCheck | None = None,
        skip_types: Collection[str] = (),
    ) -> Subscription:
        """Join consumer group `group` and receive events in batches (one at a time) of at
        most `max_batch` events. Once a first event is there, a batch waits up to
        `max_batch_wait_ms` milliseconds to fill (None: the bus's default), trading that
        much latency for fewer handler calls, transactions and offset commits.

        Events whose `type` is in `skip_types` are passed over unread: never decoded nor
        handed to `handler`, but acknowledged with the rest (their offsets committed with
        the batch; counted in `switchyard_bus_events_skipped_total{reason="unread_type"}`,
        not as handled), so a group that has no use
        for a kind of event (history and the stream chunks on the replies topic) pays
        neither the decoding nor the objects it would make. (Kafka still fetches their
        bytes, and counts them towards a batch's size; a record is passed over only when
        its `type` header and the event's own `type` both name such a type.)"""

    @abc.abstractmethod
    async def listen(
        self,
        topic: str,
        handler: Handler,
        *,
        partitions: Sequence[int] | None = None,
        key_filter: KeyFilter | None = None,
        carried: Carried | None = None,
        max_delay_ms: int | None = None,
    ) -> Subscription:
        """Receive every event published from now on (optionally only some partitions).

        With `key_filter`, an event is decoded and handled only if the filter accepts its
        key (the request id, on the request-scoped topics), asked when the event is read:
        a listener interested in a few requests skips the others without decoding them.
        An event published without a key is handled (the filter cannot tell).

        `carried`: the events a record carries in that header go to its handler first,
        on either bus (`Carried.hand_over`).

        `max_delay_ms`: events may reach `handler` up to this many ms after they were
        published, so that the bus reads them in fewer, fuller batches (Kafka: the broker
        answers a fetch once it holds a large batch or this long has passed); for a
        listener nothing waits on, such as a fallback. None: each as soon as it can."""

    @abc.abstractmethod
    async def partition_count(self, topic: str) -> int:
        """How many partitions `topic` has (1 for a topic the bus does not partition).
        Raises BusUnavailableError when the bus cannot tell."""

    @abc.abstractmethod
    async def end_offsets(self, topics: Sequence[str]) -> Offsets:
        """For every partition of `topics`, the offset the next event published to it will
        get: every event published before this call is below it. Raises
        BusUnavailableError when the bus cannot tell (e.g. Kafka is unreachable)."""

    @abc.abstractmethod
    async def consumer_lag(
        self, group: str, topics: Sequence[str], *, until: Offsets | None = None
    ) -> int:
        """Events of `topics` that group `group` has not finished handling (whichever member
        owns their partition): of those published so far, or with `until` (from
        `end_offsets`) of those below it. Raises BusUnavailableError when unknown."""

    async def caught_up(
        self, group: str, topics: Sequence[str], *, wait_s: float = 2.0, poll_s: float = 0.2
    ) -> bool:
        """True once group `group` has handled every event of `topics` published before
        this call, waiting up to `wait_s` for it (events published meanwhile do not count);
        False if it has not by then. Raises BusUnavailableError when the bus cannot tell."""
        marker = await self.end_offsets(topics)
        deadline = time.monotonic() + wait_s
        while True:
            if await self.consumer_lag(group, topics, until=marker) == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(poll_s)

    async def healthy(self) -> bool:
        """True while this process can publish and every subscription is receiving."""
        return True

    async def wait_for_room(self, topic: str) -> None:
        """Wait until new work whose events go to `topic` may be accepted, for work that
        enters without being published to a request topic first (a response cache hit,
        answered at once, its events published afterwards). A bus that buffers events in
        memory bounds what its stores have not taken yet (`InMemoryBus`); one with a broker
        (Kafka) returns at once, the broker being the buffer. Raises BusUnavailableError
        when no room came in time."""
        del topic  # this default has no buffer of its own to wait for

    async def settled(self, group: str, timeout: float) -> bool:
        """Wait at most `timeout` seconds until consumer group `group` of this process has
        handled every event published before the call; True if it has. A bus whose
        publishers live in other processes (Kafka) cannot tell and answers True at once
        (`caught_up` asks the broker, at the cost of a round trip)."""
        return True


async def _working(healthy: HealthCheck | None) -> bool:
    if healthy is None:
        return True
    try:
        return bool(await healthy())
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - a check that fails says "not healthy"
        return False


async def _counts_against_event(error: BaseException, healthy: HealthCheck | None) -> bool:
    """Whether a handler failure is the event's fault: not an outage of the bus, and the
    dependencies said to be working."""
    return not is_outage(error) and await _working(healthy)


# How often a paused consumer looks whether its dependencies are back.
OUTAGE_POLL_S = 0.25


async def _pause(retry: RetryPolicy, tries: int, healthy: HealthCheck | None, outage: bool) -> None:
    """Wait before the next try. After a failure the event is to blame for, back off. After
    an outage, wait only until the dependencies work again (looking every OUTAGE_POLL_S),
    so that nothing is retried in vain while they are down and everything resumes as soon
    as they are back; the backoff still grows if they fail again right away."""
    if not outage or healthy is None:
        await asyncio.sleep(retry.backoff(tries))
        return
    await asyncio.sleep(min(retry.backoff(tries), retry.initial_backoff_s))
    waited = 0.0
    while not await _working(healthy):
        await asyncio.sleep(OUTAGE_POLL_S)
        waited += OUTAGE_POLL_S
    if waited == 0.0:
        # Working already (a failure that passed): the usual backoff.
        await asyncio.sleep(max(0.0, retry.backoff(tries) - retry.initial_backoff_s))


async def call_with_retry(
    handle: Callable[[], Awaitable[None]],
    retry: RetryPolicy,
    on_retry: Callable[[int, BaseException], None],
    healthy: HealthCheck | None = None,
) -> BaseException | None:
    """Run `handle` until it succeeds or the policy gives up; return None on success,
    else the last error. Failures caused by an outage (the bus unavailable, or `healthy()`
    false) are retried without counting: they pause the caller instead of condemning its
    event."""
    counted = 0
    tries = 0
    while True:
        tries += 1
        try:
            await handle()
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any handler failure is retried, then dead-lettered
            blamed = await _counts_against_event(exc, healthy)
            if blamed:
                counted += 1
                if retry.gives_up_after(counted):
                    return exc
            on_retry(tries, exc)
            await _pause(retry, tries, healthy, outage=not blamed)


T = TypeVar("T")


@dataclass
class _Chunk(Generic[T]):
    items: list[T]
    tries: int = 0
    counted: int = 0


async def handle_batch_isolating(
    items: list[T],
    handle: Callable[[list[T]], Awaitable[None]],
    retry: RetryPolicy,
    *,
    healthy: HealthCheck | None,
    dead_letter: Callable[[T, BaseException], Awaitable[None]],
    on_retry: Callable[[int, int, BaseException], None],
) -> int:
    """Hand `items` to `handle` in order, as one batch if it succeeds; returns how many
    items were dead-lettered.

    When the batch fails during an outage (`is_outage`, or `healthy()` false), the
    same batch is retried with backoff until they are back: an outage loses nothing and
    condemns nothing. When it fails while they are healthy, it is split in halves (first
    half first, so the order of the items is kept) until the failing item is alone; an
    item that fails alone `retry.max_attempts` times while the dependencies are healthy
    goes to `dead_letter`, and the items after it go on. `on_retry(tries, size, error)` is
    called before each wait.
    """
    stack: list[_Chunk[T]] = [_Chunk(items)] if items else []
    dead = 0
    while stack:
        chunk = stack[-1]
        try:
            await handle(chunk.items)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            chunk.tries += 1
            if not await _counts_against_event(exc, healthy):
                on_retry(chunk.tries, len(chunk.items), exc)
                await _pause(retry, chunk.tries, healthy, outage=True)
                continue
            if len(chunk.items) > 1 and retry.max_attempts is not None:
                stack.pop()
                middle = len(chunk.items) // 2
                stack.append(_Chunk(chunk.items[middle:]))
                stack.append(_Chunk(chunk.items[:middle]))
                continue
            chunk.counted += 1
            if retry.gives_up_after(chunk.counted):
                stack.pop()
                dead += 1
                await dead_letter(chunk.items[0], exc)
                continue
            on_retry(chunk.tries, len(chunk.items), exc)
            await asyncio.sleep(retry.backoff(chunk.tries))
            continue
        stack.pop()
    return dead
