"""Event bus on Apache Kafka (aiokafka).

- The producer is idempotent with `acks=all`: a published event is on every in-sync
  replica before `publish` returns, and producer retries never duplicate it.
- Group consumers handle up to `concurrency` events at once but commit, per partition,
  only the offset below which every event has been handled. A crash therefore redelivers
  whatever was in flight; nothing is skipped.
- An event that cannot be decoded (malformed JSON, unknown type, unknown schema version),
  or whose handler keeps failing while everything it depends on works, is logged with its
  coordinates and copied to the dead-letter topic with those coordinates in its headers;
  its partition moves on. A failure during an outage only pauses the consumer (base.py).
- Kafka being unreachable never hangs a caller: `publish` gives up after
  `publish_timeout_s` with BusUnavailableError, and at once while no producer is connected.

Recovery without help (a broker restart, a network cut): aiokafka reconnects its clients by
itself, but some states it never leaves. An idempotent producer whose sequence numbers
have a gap (a batch failed or was given up on during the outage) gets
`OutOfOrderSequenceNumber` for every later batch of that partition; `UnknownProducerId`,
`InvalidProducerEpoch` and a dead sender task leave it just as unusable. The bus therefore
replaces its producer after any such error, and after any publish timeout: a timed-out
event stays queued in aiokafka and would be sent whenever the broker takes it again, after
its publisher was told it was not taken (a request answered 503 would still run). A
replaced producer's queued events are failed, never sent later. A consumer whose loop fails
is closed and replaced, resuming from the committed offsets (groups) or from the next
unread offset (listeners). `healthy()` is false while a producer or consumer is missing or
the broker does not answer, and every close is bounded in time, so shutdown always ends.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar, cast

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    IllegalStateError,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTxnState,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    RecordListTooLargeError,
    UnknownProducerId,
)
from aiokafka.protocol.group import JoinGroupRequest
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from opentelemetry import context as otel_context
from opentelemetry.trace import Span, SpanKind
from typing_extensions import override

from switchyard.common import tracing
from switchyard.common.backoff import Backoff
from switchyard.common.bus import metrics
from switchyard.common.bus.base import (
    BatchHandler,
    BusUnavailableError,
    Carried,
    EventBus,
    EventRejectedError,
    EventTooLargeError,
    Handler,
    HealthCheck,
    KeyFilter,
    Offsets,
    Publication,
    PublishOutcomeUnknownError,
    RetryPolicy,
    Subscription,
    call_with_retry,
    delivery_may_repeat,
    handle_batch_isolating,
    serialise,
)
from switchyard.common.events import (
    EnvelopeFields,
    Event,
    EventDecodeError,
    decode_event_off_loop,
)
from switchyard.common.kafka_security import client_options
from switchyard.common.settings import DEFAULT_KAFKA_MAX_MESSAGE_BYTES
from switchyard.common.tasks import cancel_and_wait

log = structlog.get_logger("switchyard.bus.kafka")

_T = TypeVar("_T")
# The Kafka clients' default bound of one fetch response (records larger than it are
# still returned, one at a time).
FETCH_MAX_BYTES = 52_428_800
# A large record takes time to send and store (about 0.1 s per MiB on a busy 2-core
# machine): its publish timeout grows by a second per MiB, so only large records wait longer.
PUBLISH_BYTES_PER_S = 1024 * 1024
# `publish_in_order` hands a record larger than this (bytes) to the producer and waits for
# its acknowledgement before handing over the next: far below any topic's
# `max.message.bytes` in practice (Kafka's default is about 1 MB), so a record the broker
# could refuse after taking it is never followed by one written regardless.
WRITTEN_ALONE_BYTES = 64 * 1024
# Between attempts to open a consumer again while Kafka is away.
CONSUMER_RECONNECT_BACKOFF = Backoff(initial_s=0.2, max_s=5.0)
# How long a listener's fetch waits at the broker when there is nothing to read. The broker
# answers as soon as one record arrives (`fetch_min_bytes` is 1), so this bounds only the
# empty round trips an idle listener makes (two a second, not ten), never a record's wait.
LISTENER_FETCH_MAX_WAIT_MS = 500

# A listener that accepts a delay (`max_delay_ms`) asks the broker to hold each fetch until
# this much is there, or the delay has passed: at most one fetch per delay under light load.
DELAYED_LISTENER_FETCH_MIN_BYTES = 1024 * 1024
# How long, at most, a batch consumer waits after its paused partitions are resumed for the
# fetches that bring what arrived during the batch wait (the log end offsets it read then).
# Only a slow broker takes that long; what it has not brought by then joins the next batch.
RESUMED_FETCH_MAX_WAIT_MS = 1000
# The bytes of record values a batch consumer gathers into one batch at most, beyond the
# first fetch (which brings at least one record, however large): a batch is bounded by its
# count of events, but events near the size limit (tens of MB each) held by the thousand
# would take gigabytes, decoded copies included.
MAX_BATCH_BYTES = 64 * 1024 * 1024
# Default of `commit_interval_s`: how often, at most, a busy group consumer commits.
DEFAULT_COMMIT_INTERVAL_S = 1.0

# After these an aiokafka producer (0.14) never sends again: it must be replaced.
FATAL_PRODUCER_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTxnState,
    ProducerFenced,
    ProducerClosed,
    IllegalStateError,
)
# The broker refuses this event itself: retrying it, or replacing the producer, cannot help.
_REJECTED_EVENT_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)


def _cancelled() -> bool:
    """Whether the running task is being cancelled. aiokafka's close methods also let a
    CancelledError of their own internal tasks escape; that one is a failure to close, not
    a cancellation of the caller."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _close_quietly(awaitable: Awaitable[Any], timeout: float) -> None:
    """Await a close within `timeout`, ignoring how it fails (aiokafka may raise its
    internal tasks' CancelledError), unless the running task itself is being cancelled."""
    try:
        async with asyncio.timeout(timeout):
            await awaitable
    except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - a best-effort close
        if isinstance(exc, asyncio.CancelledError) and _cancelled():
            raise


def _maybe_sent(producer: AIOKafkaProducer, delivery: asyncio.Future[Any]) -> bool:
    """Whether the broker may have received the event whose delivery future is `delivery`.

    False only when it certainly has not: its batch still waits in the producer's queue and
    was never handed to the sender. Once the sender has taken a batch, its produce request
    may be written (at once, or when the connection it waits for comes up, which dropping
    the producer does not stop), and a batch queued again after a failed attempt may have
    reached the broker on that attempt: in both cases the event may be written. aiokafka
    (0.14) internals: the accumulator's queued batches, whose `retry_count` counts the
    times the sender took them."""
    try:
        queues = producer._message_accumulator._batches
        for queue in queues.values():
            for batch in queue:
                if any(future is delivery for future, _ in batch._msg_futures):
                    return bool(batch.retry_count > 0)
    except Exception:  # noqa: BLE001 - internals changed: assume it may be written
        return True
    return True  # taken by the sender (or answered just now)


@dataclass
class _Record:
    """One event as the producer sends it; `timeout_s` and `deadline` (loop time) bound
    the wait for its acknowledgement."""

    topic: str
    value: bytes
    key: bytes | None
    partition: int | None
    headers: list[tuple[str, bytes]]
    timeout_s: float = 0.0
    deadline: float = 0.0


def _retrieve_exception(delivery: asyncio.Future[Any]) -> None:
    """Mark a delivery's failure as seen (nobody waits for it any more)."""
    if not delivery.cancelled():
        delivery.exception()


def _valid_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The consumer's position on `tp` (the next offset it hands over), or None while it
    has none (just assigned, being reset, revoked). Read from aiokafka's subscription
    state: `AIOKafkaConsumer.position` waits for a position, and takes and raises the
    consumer's pending coordination error, which belongs to its own poll loop."""
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
    except Exception:  # noqa: BLE001 - no subscription or assignment now
        return None
    if state is None or not state.has_valid_position:
        return None
    return cast(int, state.position)


def _sender_alive(producer: AIOKafkaProducer) -> bool:
    """False once the producer's background sender has died (it then fails every send)."""
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    return task is None or not task.done()


def _fail_queued(producer: AIOKafkaProducer, error: KafkaError) -> None:
    """Fail every event a producer whose sender has stopped still holds (what aiokafka does
    itself when its sender dies), keeping two details of its bookkeeping straight: a batch
    queued again for a retry must be in the in-flight set its completion callback removes
    it from, and the failed drain waiters nobody waits on are marked as seen."""
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is None:
        return
    try:
        queued = [batch for batches in accumulator._batches.values() for batch in batches]
        in_flight = accumulator._pending_batches
        for batch in queued:
            if batch.retry_count:
                in_flight.add(batch)
        batches = [*queued, *in_flight]
        accumulator.fail_all(error)
        for batch in batches:
            # Marked as seen: publishers that gave up on them no longer wait.
            futures = [batch.future, batch._drain_waiter, *(f for f, _ in batch._msg_futures)]
            for future in futures:
                if future.done() and not future.cancelled():
                    future.exception()
    except Exception as exc:  # noqa: BLE001 - internals changed: its publishers time out instead
        log.warning("could not fail the replaced producer's queued events", error=repr(exc))


class _PartitionProgress:
    """Offsets started on one partition, in order, and which of them are done."""

    def __init__(self) -> None:
        self._started: deque[int] = deque()
        self._done: set[int] = set()
        self.committed: int | None = None

    def start(self, offset: int) -> None:
        self._started.append(offset)

    def finish(self, offset: int) -> None:
        self._done.add(offset)

    @property
    def in_flight(self) -> int:
        return len(self._started)

    def committable(self) -> int | None:
        """Next offset to commit (one past the last contiguous finished offset), if it moved."""
        position = None
        while self._started and self._started[0] in self._done:
            offset = self._started.popleft()
            self._done.discard(offset)
            position = offset + 1
        if position is None or position == self.committed:
            return None
        return position


class KafkaBus(EventBus):
    """`publish_timeout_s`: the longest a publish waits for the broker's acknowledgement,
    unless the broker may have the event: then `in_flight_timeout_s` more for its answer
    (a slow broker is not an absent one; after that the outcome is unknown).
    `close_timeout_s`: the longest one client (producer or consumer) may take to close.
    `reconnect_max_s`: the longest wait between two attempts to connect a producer.
    `commit_interval_s`: while events keep arriving, a group consumer commits the offsets it
    has handled at most this often (one broker round trip and write per commit; 0: after
    every poll); it commits at once whenever a poll comes back empty, and on every
    revocation and close. A crash therefore redelivers up to this much more of what was
    already handled, never less than what was not."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "switchyard",
        deadletter_topic: str = "switchyard.deadletter",
        publish_timeout_s: float = 1.5,
        close_timeout_s: float = 5.0,
        reconnect_max_s: float = 1.0,
        in_flight_timeout_s: float = 5.0,
        max_message_bytes: int = DEFAULT_KAFKA_MAX_MESSAGE_BYTES,
        commit_interval_s: float = DEFAULT_COMMIT_INTERVAL_S,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.commit_interval_s = max(0.0, commit_interval_s)
        # Model requests carry whole conversations (the Messages API takes 32 MB bodies):
        # the producer sends, and consumers fetch, records up to this size.
        self.max_message_bytes = max_message_bytes
        self.client_id = client_id
        self.deadletter_topic = deadletter_topic
        self.publish_timeout_s = publish_timeout_s
        self.close_timeout_s = close_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self._reconnect_backoff = Backoff(min(0.2, reconnect_max_s), reconnect_max_s)
        self.in_flight_timeout_s = in_flight_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._producer_ready = asyncio.Event()
        self._replace_producer = asyncio.Event()
        self._replace_reason = ""
        self._supervisor: asyncio.Task[None] | None = None
        self._discarding: set[asyncio.Task[None]] = set()
        self._subscriptions: list[Subscription] = []
        self._offsets_lock = asyncio.Lock()
        self._offsets_admin: AIOKafkaAdminClient | None = None
        self._offsets_consumer: AIOKafkaConsumer | None = None

    # -- producer -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the producer; if Kafka is not there yet, keep trying in the background."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(
                self._supervise_producer(), name=f"kafka-producer-{self.client_id}"
            )
            # Give a healthy broker a moment so that the first request does not race start-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._producer_ready.wait()

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **client_options(),
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            request_timeout_ms=10_000,
            max_request_size=self.max_message_bytes,
        )

    async def _supervise_producer(self) -> None:
        """Keep one working producer: connect (retrying with backoff), then replace it
        whenever a publish reports it unusable or its sender task dies."""
        attempt = 0
        while True:
            producer = self._new_producer()
            try:
                await producer.start()
            except asyncio.CancelledError:
                await self._discard(producer)
                raise
            except Exception as exc:  # noqa: BLE001 - retried: the broker may come later
                self._discard_later(producer)
                attempt += 1
                delay = self._reconnect_backoff.delay(attempt)
                log.warning(
                    "kafka producer not connected, retrying", error=repr(exc), retry_in_s=delay
                )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self._replace_producer.clear()
            self._producer = producer
            self._producer_ready.set()
            log.info("kafka producer connected", bootstrap_servers=self.bootstrap_servers)
            while not self._replace_producer.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._replace_producer.wait()
                if not _sender_alive(producer):
                    self._mark_broken(producer, "the producer's sender task stopped")
            log.warning("kafka producer replaced", reason=self._replace_reason)
            self._discard_later(producer)

    def _mark_broken(self, producer: AIOKafkaProducer, reason: str) -> None:
        """Stop using `producer` at once (publishes fail fast) and have it replaced."""
        # Its sender stops now, before it sends anything more: the event whose publish just
        # failed may still be queued, and must not go out while the producer is replaced.
        task = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if task is not None and not task.done():
            task.cancel()
        if producer is self._producer and not self._replace_producer.is_set():
            self._producer = None
            self._producer_ready.clear()
            self._replace_reason = reason
            self._replace_producer.set()

    def _discard_later(self, producer: AIOKafkaProducer) -> None:
        task = asyncio.create_task(self._discard(producer))
        self._discarding.add(task)
        task.add_done_callback(self._discarding.discard)

    async def _discard(self, producer: AIOKafkaProducer) -> None:
        """Close a producer that is being replaced, dropping whatever it still holds: its
        queued events must never be delivered later, since their publishers were told (or
        will be) that the bus did not take them.

        aiokafka (0.14) has no public call for this. Its sender task is what sends (and
        re-sends after a reconnection): it is stopped first (a produce request already on
        the wire may still land; its outcome was unknown anyway), then the events still
        queued are failed, so their publishers learn it at once, and the connections are
        closed."""
        sender = getattr(producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        if task is not None:
            await cancel_and_wait(task, self.close_timeout_s)
        if task is None or task.done():
            _fail_queued(producer, KafkaError("the producer was replaced"))
        await _close_quietly(producer.client.close(), timeout=self.close_timeout_s)
        producer._closed = True  # closed by hand: no "unclosed producer" warning at exit

    async def _close_producer(self, producer: AIOKafkaProducer) -> None:
        try:
            async with asyncio.timeout(self.close_timeout_s):
                await producer.stop()
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - force it closed
            if isinstance(exc, asyncio.CancelledError) and _cancelled():
                raise
            log.warning("kafka producer did not close in time", error=repr(exc))
            await _close_quietly(producer.client.close(), timeout=1.0)

    @override
    async def stop(self) -> None:
        for subscription in reversed(self._subscriptions):
            await subscription.stop()
        self._subscriptions.clear()
        if self._supervisor is not None:
            await cancel_and_wait(self._supervisor, self.close_timeout_s)
        producer = self._producer
        self._producer = None
        self._producer_ready.clear()
        self._supervisor = None
        if producer is not None:
            await self._close_producer(producer)  # flushes what it can in time
        if self._discarding:
            await asyncio.wait(set(self._discarding), timeout=self.close_timeout_s)
        await self._close_offset_clients()

    def can_publish(self) -> bool:
        """True while a connected producer is ready (no network call)."""
        producer = self._producer
        return producer is not None and _sender_alive(producer)

    @override
    async def publish(
        self,
        topic: str,
        event: EnvelopeFields,
        *,
        key: str | None = None,
        partition: int | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        record = self._record(topic, event, key, partition, headers)
        with tracing.span(
            f"{topic} publish", kind=SpanKind.PRODUCER, attributes=_publish_attributes(topic, event)
        ):
            record.headers += tracing.current_trace_headers()
            await self._send([record])

    @override
    async def publish_in_order(self, publications: Sequence[Publication]) -> None:
        # Every event is serialised before any is handed over, so one that cannot be
        # refuses the lot. Sibling spans: each record carries its own span's context.
        records = [
            self._record(p.topic, p.event, p.key, p.partition, p.headers) for p in publications
        ]
        parent = otel_context.get_current()
        with contextlib.ExitStack() as spans:
            for publication, record in zip(publications, records, strict=True):
                spans.enter_context(
                    tracing.span(
                        f"{publication.topic} publish",
                        kind=SpanKind.PRODUCER,
                        parent=parent,
                        attributes=_publish_attributes(publication.topic, publication.event),
                    )
                )
                record.headers += tracing.current_trace_headers()
            await self._send(records)

    def _record(
        self,
        topic: str,
        event: EnvelopeFields,
        key: str | None,
        partition: int | None,
        headers: Mapping[str, bytes] | None,
    ) -> _Record:
        """`event` as the producer sends it; raises EventRejectedError if it cannot be
        serialised."""
        try:
            value = serialise(event)
        except EventRejectedError:  # e.g. nested deeper than the serialiser allows
            metrics.PUBLISH_FAILURES.labels(topic).inc()
            raise
        record_headers = [
            ("type", event.type.encode()),
            ("schema_version", str(event.schema_version).encode()),
            ("request_id", event.request_id.encode()),
            ("source", event.source.encode()),
        ]
        if headers:
            record_headers += headers.items()
        return _Record(topic, value, (key or event.request_id).encode(), partition, record_headers)

    async def _send(self, records: list[_Record]) -> None:
        """Hand `records` to the producer in order (each only once the one before it is
        in the producer's queue, or acknowledged when it is larger than
        `WRITTEN_ALONE_BYTES`), then wait for the broker's acknowledgement of each."""
        if not records:
            return
        producer = self._producer
        if producer is None:
            metrics.PUBLISH_FAILURES.labels(records[0].topic).inc()
            raise BusUnavailableError("Kafka is not reachable")
        now = asyncio.get_running_loop().time()
        unacknowledged: list[tuple[_Record, asyncio.Future[Any]]] = []
        try:
            for index, record in enumerate(records):
                # A large record takes longer to send and store: only large records wait
                # longer.
                record.timeout_s = self.publish_timeout_s + len(record.value) / PUBLISH_BYTES_PER_S
                record.deadline = now + record.timeout_s
                unacknowledged.append((record, await self._hand_over(producer, record)))
                if len(record.value) > WRITTEN_ALONE_BYTES and index < len(records) - 1:
                    # A broker whose limit is below the producer's refuses a large record
                    # only after taking it: the records after it must not be written then.
                    await self._acknowledged(producer, unacknowledged)
            await self._acknowledged(producer, unacknowledged)
        except BaseException:
            for _, delivery in unacknowledged:
                # Nobody waits for these any more: their failures are not news.
                delivery.add_done_callback(_retrieve_exception)
            raise

    async def _acknowledged(
        self,
        producer: AIOKafkaProducer,
        unacknowledged: list[tuple[_Record, asyncio.Future[Any]]],
    ) -> None:
        """Wait for the acknowledgement of each record in `unacknowledged`, in order,
        taking it off the list once acknowledged."""
        while unacknowledged:
            record, delivery = unacknowledged[0]
            await self._delivered(producer, record, delivery)
            del unacknowledged[0]

    async def _hand_over(self, producer: AIOKafkaProducer, record: _Record) -> asyncio.Future[Any]:
        """Put `record` in the producer's queue by its deadline: its delivery (a future
        the producer resolves with the broker's acknowledgement)."""
        try:
            # `asyncio.timeout_at` needs no task, as `wait_for` would on this hot path.
            async with asyncio.timeout_at(record.deadline):
                delivery = await producer.send(
                    record.topic,
                    record.value,
                    key=record.key,
                    partition=record.partition,
                    headers=record.headers,
                )
        except TimeoutError as exc:
            self._not_taken(producer, record, exc)
        except Exception as exc:  # KafkaError and connection errors
            self._failed(producer, record.topic, exc, len(record.value))
        return cast("asyncio.Future[Any]", delivery)

    async def _delivered(
        self, producer: AIOKafkaProducer, record: _Record, delivery: asyncio.Future[Any]
    ) -> None:
        """Wait until the broker acknowledged `record` (its `delivery`), by its deadline."""
        topic = record.topic
        try:
            async with asyncio.timeout_at(record.deadline):
                # Shielded: on a timeout the delivery is looked at, not given up on.
                await asyncio.shield(delivery)
        except TimeoutError as exc:
            if not _maybe_sent(producer, delivery):
                self._not_taken(producer, record, exc)
            # The broker may have the event (or get it when a connection comes up):
            # answering "not taken" now could be wrong. Wait for its answer.
            try:
                async with asyncio.timeout(self.in_flight_timeout_s):
                    await asyncio.shield(delivery)
            except TimeoutError:
                metrics.PUBLISH_FAILURES.labels(topic).inc()
                self._mark_broken(producer, "the broker did not answer a produce request")
                raise PublishOutcomeUnknownError(
                    f"Kafka did not answer within "
                    f"{record.timeout_s + self.in_flight_timeout_s:.1f}s; the event may "
                    "still be written"
                ) from exc
            except Exception as late:  # noqa: BLE001 - classified below
                if isinstance(late, _REJECTED_EVENT_ERRORS):
                    self._failed(producer, topic, late, len(record.value))
                # Failed after it may have been sent (the connection dropped, the
                # producer was replaced): it may still be written, so not "not taken".
                metrics.PUBLISH_FAILURES.labels(topic).inc()
                if isinstance(late, FATAL_PRODUCER_ERRORS) or not _sender_alive(producer):
                    self._mark_broken(producer, repr(late))
                raise PublishOutcomeUnknownError(
                    f"Kafka failed an event it may have written: {late!r}"
                ) from late
        except Exception as exc:  # KafkaError and connection errors
            self._failed(producer, topic, exc, len(record.value))
        metrics.EVENTS_PUBLISHED.labels(topic).inc()

    def _not_taken(
        self, producer: AIOKafkaProducer, record: _Record, exc: TimeoutError
    ) -> NoReturn:
        """`record` was not acknowledged in time and never left the producer: raise
        BusUnavailableError."""
        metrics.PUBLISH_FAILURES.labels(record.topic).inc()
        # The event is still queued in the producer and would be sent whenever the
        # partition takes it again, after its publisher was told it was not taken (a
        # request answered 503 would run later). Only dropping the producer, with
        # everything it holds, prevents that; a new one starts clean.
        self._mark_broken(producer, f"not acknowledged within {record.timeout_s:.1f}s")
        raise BusUnavailableError(
            f"Kafka did not acknowledge within {record.timeout_s:.1f}s"
        ) from exc

    def _failed(
        self, producer: AIOKafkaProducer, topic: str, exc: BaseException, size: int
    ) -> NoReturn:
        """A publish of `size` bytes that failed with `exc` (not a timeout): raise what it
        means (EventTooLargeError, EventRejectedError or BusUnavailableError)."""
        metrics.PUBLISH_FAILURES.labels(topic).inc()
        if isinstance(exc, _REJECTED_EVENT_ERRORS):
            raise EventTooLargeError(
                f"the event ({size} bytes) is larger than {topic} accepts: {exc!r}"
            ) from exc
        if isinstance(exc, FATAL_PRODUCER_ERRORS) or not _sender_alive(producer):
            self._mark_broken(producer, repr(exc))
        raise BusUnavailableError(f"Kafka refused the event: {exc!r}") from exc

    async def publish_raw(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None,
        partition: int | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        """Publish one record as it is, bytes for bytes (a dead letter replayed to the topic
        it came from: `switchyard.common.deadletter`), with the same producer and guarantees
        as `publish`. `partition` None lets the key choose. Raises what `publish` raises."""
        await self._send([_Record(topic, value, key, partition, list(headers))])

    async def dead_letter(
        self, record: ConsumerRecord, group: str, reason: str, *, left_out: str | None = None
    ) -> None:
        """Copy a record to the dead-letter topic with its coordinates; retried until it
        lands. A copy the topic cannot take (the record was near the size limit, and the
        `deadletter.*` headers push it over) is parked as a stub instead: its coordinates,
        the reason and what was left out, never retried for ever. `left_out`, when given,
        parks a stub at once, saying what of the record it lacks (one that could not be
        read): a stub is never replayed as if it were the record."""
        log.error(
            "event dead-lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            group=group,
            reason=reason[:2000],
        )
        coordinates = [
            ("deadletter.topic", record.topic.encode()),
            ("deadletter.partition", str(record.partition).encode()),
            ("deadletter.offset", str(record.offset).encode()),
            ("deadletter.group", group.encode()),
            ("deadletter.reason", reason[:2000].encode()),
        ]
        value = record.value or b""
        copy = _Record(
            self.deadletter_topic,
            value,
            record.key,
            None,
            [escape_deadletter_header(name, v) for name, v in record.headers or ()] + coordinates,
        )

        def stub(missing: str) -> _Record:
            return _Record(
                self.deadletter_topic,
                b"",
                None,
                None,
                [*coordinates, ("deadletter.left_out", missing[:2000].encode())],
            )

        async def publish() -> None:
            if left_out is not None:
                await self._send([stub(left_out)])
                return
            try:
                await self._send([copy])
            except EventRejectedError as exc:
                kept = f"the value ({len(value)} bytes), the key and the record's headers"
                await self._send([stub(f"{kept}: {exc}")])

        await call_with_retry(
            publish,
            RetryPolicy(max_attempts=None, initial_backoff_s=0.2, max_backoff_s=5),
            lambda attempt, exc: log.warning(
                "dead-letter publish failed, retrying", error=repr(exc)
            ),
        )
        # Counted once it has landed.
        metrics.EVENTS_DEADLETTERED.labels(
            record.topic, group, "undecodable" if reason.startswith("undecodable") else "handler"
        ).inc()

    async def dead_letter_unreadable(
        self, tp: TopicPartition, offset: int, group: str, error: BaseException
    ) -> None:
        """Leave a stub on the dead-letter topic for a record aiokafka could not parse: its
        coordinates and the error (the record itself cannot be read to be copied)."""
        stub = ConsumerRecord(tp.topic, tp.partition, offset, -1, 0, None, b"", None, -1, 0, ())
        await self.dead_letter(
            stub,
            group,
            f"{UNREADABLE_REASON}: {error!r}",
            left_out="the whole record: the Kafka client could not parse it, or a record "
            "before it in its record batch",
        )

    @override
    async def partition_count(self, topic: str) -> int:
        if self._producer is None:
            raise BusUnavailableError("Kafka is not reachable")
        async with asyncio.timeout(10):
            partitions = await self._producer.partitions_for(topic)
        return len(partitions)

    async def healthy(self) -> bool:
        """True when this process can publish and consume now (see `health_problem`); logs the
        problem as a warning otherwise."""
        problem = await self.health_problem()
        if problem is not None:
            log.warning("event bus not ready", error=problem)
        return problem is None

    async def health_problem(self) -> str | None:
        """Why this process cannot publish or consume right now, or None."""
        producer = self._producer
        if producer is None or not _sender_alive(producer):
            return "no producer connected"
        for subscription in self._subscriptions:
            if isinstance(subscription, _SupervisedConsumer):
                problem = subscription.health_problem()
                if problem is not None:
                    return problem
        try:
            async with asyncio.timeout(2):
                await producer.client.fetch_all_metadata()
        except Exception:  # noqa: BLE001 - any failure means not ready
            return "the broker does not answer a metadata request"
        return None

    # -- consumer lag -----------------------------------------------------------------

    @override
    async def end_offsets(self, topics: Sequence[str]) -> Offsets:
        async with self._offsets_lock:
            consumer, partitions = await self._offset_reader(topics)
            ends = await self._offsets_call(consumer.end_offsets(partitions))
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    @override
    async def consumer_lag(
        self, group: str, topics: Sequence[str], *, until: Offsets | None = None
    ) -> int:
        ends = until if until is not None else await self.end_offsets(topics)
        async with self._offsets_lock:
            consumer, partitions = await self._offset_reader(topics)
            committed = await self._offsets_call(self._committed(group, partitions))
            unstarted = [
                tp for tp in partitions if committed.get(tp) is None or committed[tp].offset < 0
            ]
            beginnings = (
                await self._offsets_call(consumer.beginning_offsets(unstarted)) if unstarted else {}
            )
        lag = 0
        for tp in partitions:
            position = beginnings[tp] if tp in beginnings else committed[tp].offset
            lag += max(0, ends.get((tp.topic, tp.partition), 0) - position)
        return lag

    async def _offset_reader(
        self, topics: Sequence[str]
    ) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
        """A consumer (no group) to read offsets with, and every partition of `topics`."""
        producer = self._producer
        if producer is None:
            raise BusUnavailableError("Kafka is not reachable")
        if self._offsets_consumer is None:
            consumer = self._consumer(group=None)
            await self._offsets_call(self._start_consumer(consumer))
            self._offsets_consumer = consumer
        partitions = []
        for topic in topics:
            ids = await self._offsets_call(producer.partitions_for(topic))
            partitions += [TopicPartition(topic, partition) for partition in sorted(ids)]
        return self._offsets_consumer, partitions

    async def _committed(
        self, group: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        if self._offsets_admin is None:
            admin = AIOKafkaAdminClient(
                **client_options(),
                bootstrap_servers=self.bootstrap_servers,
                client_id=f"{self.client_id}-offsets",
            )
            try:
                await admin.start()
            except BaseException:
                await _close_quietly(admin.close(), timeout=self.close_timeout_s)
                raise
            self._offsets_admin = admin
        return cast(
            dict[TopicPartition, OffsetAndMetadata],
            await self._offsets_admin.list_consumer_group_offsets(group, partitions=partitions),
        )

    async def _offsets_call(self, awaitable: Awaitable[_T]) -> _T:
        """Await a call reading offsets within 5 s; any failure means the answer is unknown
        (and the clients used are replaced next time)."""
        try:
            async with asyncio.timeout(5):
                return await awaitable
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - unknown offsets
            if isinstance(exc, asyncio.CancelledError) and _cancelled():
                raise
            await self._close_offset_clients()
            raise BusUnavailableError(f"cannot read offsets: {exc!r}") from exc

    async def _close_offset_clients(self) -> None:
        admin, consumer = self._offsets_admin, self._offsets_consumer
        self._offsets_admin = self._offsets_consumer = None
        if admin is not None:
            await _close_quietly(admin.close(), timeout=self.close_timeout_s)
        if consumer is not None:
            await self._close_consumer(consumer)

    # -- consumers ------------------------------------------------------------------

    def _consumer(self, *topics: str, group: str | None, **options: Any) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            *topics,
            **client_options(),
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            group_id=group,
            enable_auto_commit=False,
            max_partition_fetch_bytes=self.max_message_bytes,
            fetch_max_bytes=max(FETCH_MAX_BYTES, self.max_message_bytes),
            **options,
        )

    async def _close_consumer(self, consumer: AIOKafkaConsumer) -> None:
        """Close a consumer within `close_timeout_s` whatever state it is in (leaving its
        group is best effort: the broker drops a silent member after its session timeout)."""
        try:
            async with asyncio.timeout(self.close_timeout_s):
                await consumer.stop()
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - force it closed
            if isinstance(exc, asyncio.CancelledError) and _cancelled():
                raise
            log.warning("kafka consumer did not close in time", error=repr(exc))
            for part in (getattr(consumer, "_fetcher", None), getattr(consumer, "_client", None)):
                if part is not None:
                    await _close_quietly(part.close(), timeout=1.0)

    async def _start_consumer(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await consumer.start()
        except BaseException:
            await self._close_consumer(consumer)
            raise

    def _dependencies(self, healthy: HealthCheck | None) -> HealthCheck:
        """A consumer's dependencies: the bus itself (dead letters and replies need it) and
        the subscriber's own check."""

        async def check() -> bool:
            if not self.can_publish():
                return False
            return True if healthy is None else await healthy()

        return check

    async def _started(self, subscription: _SupervisedConsumer) -> Subscription:
        """Start `subscription` and keep it, so `stop` stops it."""
        await subscription.start()
        self._subscriptions.append(subscription)
        return subscription

    @override
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
        subscription = _GroupSubscription(
            self,
            list(topics),
            group,
            handler,
            concurrency,
            retry,
            self._dependencies(healthy),
            commit_interval_s=self.commit_interval_s,
        )
        return await self._started(subscription)

    @override
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
        subscription = _BatchSubscription(
            self,
            list(topics),
            group,
            handler,
            max_batch,
            retry,
            self._dependencies(healthy),
            max_wait_ms=max_batch_wait_ms or 0,
            skip_types=frozenset(skip_types),
        )
        return await self._started(subscription)

    @override
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
        if partitions is None:
            # Every partition of the topic, from the producer's (already loaded) metadata.
            partitions = list(range(await self.partition_count(topic)))
        subscription = _Listener(
            self, topic, handler, partitions, key_filter, carried, max_delay_ms
        )
        return await self._started(subscription)


def _publish_attributes(topic: str, event: EnvelopeFields) -> dict[str, str]:
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        "switchyard.event.type": event.type,
        "switchyard.request_id": event.request_id,
    }


def _process_span(
    record: ConsumerRecord, group: str | None, event: Event
) -> AbstractContextManager[Span | None]:
    return tracing.process_span(
        record.topic,
        group,
        event,
        tracing.context_from_headers(record.headers),
        partition=record.partition,
        offset=record.offset,
    )


def _batch_spans(records: list[ConsumerRecord], group: str, events: list[Event]) -> list[Span]:
    if not tracing.tracing_enabled():
        return []
    return [
        tracing.tracer().start_span(
            f"{record.topic} process",
            context=tracing.context_from_headers(record.headers),
            kind=SpanKind.CONSUMER,
            attributes=tracing.consumer_span_attributes(
                record.topic, record.partition, record.offset, group, event
            ),
        )
        for record, event in zip(records, events, strict=True)
    ]


def _record_lag(
    consumer: AIOKafkaConsumer, tp: TopicPartition, next_offset: int, group: str
) -> None:
    highwater = consumer.highwater(tp)
    if highwater is not None:
        metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition), group).set(
            max(0, highwater - next_offset)
        )


# How far into a record's value its envelope's own `type` is looked for: after the
# scalar fields the serialiser writes first (id, source, time, tenant, request_id,
# schema_version), well within this.
_TYPE_SEARCH_BYTES = 4096


def _unread_kind(record: ConsumerRecord, kinds: frozenset[bytes]) -> bool:
    """Whether `record` holds an event of one of `kinds` (type names, as bytes), told
    without decoding it: its one `type` header (the producer writes it) names one of them,
    and so does the event itself, whose first `"type":"` key is the envelope's own: the
    serialiser writes it before `data`, after scalar fields only, and a string's quotes
    are escaped; one found after a `{` past the opening one may be inside `data` (JSON
    written by hand with `data` first), and the record is decoded. A record whose header
    is missing, given twice or disagrees with its value is decoded, so a header alone
    never makes an event go unread. (A value written by hand with its `type` key twice
    would still be read by its last one: only a producer other than Switchyard's
    serialiser writes such JSON, and one that can write to the topics can write any
    event.)"""
    kind: bytes | None = None
    for name, value in record.headers or ():
        if name == "type":
            if kind is not None:
                return False
            kind = cast(bytes, value)
    value = cast(bytes | None, record.value)
    if kind is None or kind not in kinds or value is None:
        return False
    at = value.find(b'"type":"', 0, _TYPE_SEARCH_BYTES)
    return (
        at >= 0
        and value.find(b"{", 1, at) < 0
        and value.startswith(kind + b'"', at + len(b'"type":"'))
    )


async def _decode(record: ConsumerRecord) -> Event:
    """The event in `record` (`decode_event_off_loop`: a large one in a worker thread).
    Raises EventDecodeError for a record without a value or not a valid event."""
    if record.value is None:
        raise EventDecodeError("record has no value")
    return await decode_event_off_loop(record.value)


def _unreadable_record(exc: BaseException) -> tuple[TopicPartition, int, int] | None:
    """Where the record aiokafka failed to parse is, when `exc` came from parsing one (a
    header key that is not UTF-8, which Kafka allows and aiokafka decodes strictly; a batch
    whose CRC does not match): the partition, the offset its fetch had reached and the
    offset after the record batch holding it, read from aiokafka's record iterator
    (`PartitionRecords._unpack_records`) in the traceback. None for any other error."""
    tb = exc.__traceback__
    where = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_unpack_records":
            records = frame.f_locals.get("self")
            tp = getattr(records, "_tp", None)
            offset = getattr(records, "next_fetch_offset", None)
            batch_end = getattr(frame.f_locals.get("next_batch"), "next_offset", None)
            if isinstance(tp, TopicPartition) and isinstance(offset, int):
                end = batch_end if isinstance(batch_end, int) and batch_end > offset else offset + 1
                where = (tp, offset, end)
        tb = tb.tb_next
    return where


def _batch_bytes(batches: dict[TopicPartition, list[ConsumerRecord]]) -> int:
    """The bytes of the record values in `batches`."""
    return sum(_value_bytes(record) for records in batches.values() for record in records)


def _value_bytes(record: ConsumerRecord) -> int:
    return len(getattr(record, "value", None) or b"")


def _drained_before(exc: BaseException) -> dict[TopicPartition, list[ConsumerRecord]]:
    """The records of other partitions aiokafka's `Fetcher.fetched_records` had taken in the
    call that failed with `exc` before it reached the unreadable record: it takes each
    partition's records in turn (moving that partition's position past them) and loses
    them when a later partition's records fail to parse. Read from that frame's `drained`
    in the traceback, as `_unreadable_record` reads its own; {} when there are none."""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "fetched_records":
            drained = frame.f_locals.get("drained")
            if isinstance(drained, dict):
                return {
                    tp: list(records)
                    for tp, records in drained.items()
                    if isinstance(tp, TopicPartition) and records
                }
        tb = tb.tb_next
    return {}


UnreadableHandler = Callable[[TopicPartition, range, BaseException], Awaitable[None]]


def log_unreadable(
    logger: Any, message: str, tp: TopicPartition, offsets: range, error: BaseException
) -> None:
    """Warn with `message` that the records at `offsets` of `tp` could not be parsed: the
    topic, partition, the offsets as `first-last`, and the error (cut to 500 characters,
    since aiokafka's can quote a record's bytes)."""
    logger.warning(
        message,
        topic=tp.topic,
        partition=tp.partition,
        offsets=f"{offsets.start}-{offsets.stop - 1}",
        error=repr(error)[:500],
    )


def skipping_unreadable(logger: Any, message: str) -> UnreadableHandler:
    """An UnreadableHandler for a reader that only passes over what it cannot parse (a
    lookup or a listing, not a group that must dead-letter it): `log_unreadable`."""

    async def on_unreadable(tp: TopicPartition, offsets: range, error: BaseException) -> None:
        log_unreadable(logger, message, tp, offsets, error)

    return on_unreadable


# How the reason of a dead letter left for a record the Kafka client could not parse begins.
UNREADABLE_REASON = "undecodable record (unreadable)"

REPLAYED_FROM_HEADER = "deadletter.replayed_from"
"""Header of a dead letter replayed to its topic: `<dead-letter partition>:<offset>`."""

DEADLETTER_HEADER_PREFIX = "deadletter."
# What a dead-lettered record's own `deadletter.*` headers are kept under on its letter,
# so that none can pass for the letter's coordinates or a replay marker.
ESCAPED_HEADER_PREFIX = "original."


def escape_deadletter_header(name: str, value: bytes) -> tuple[str, bytes]:
    """A header of a record being dead-lettered as its letter keeps it: one named like the
    letter's own (`deadletter.*`, but the `deadletter.replayed_from` a replay put there) or
    like an escaped one gets ESCAPED_HEADER_PREFIX before its name; `unescape` reverses it."""
    if (
        name.startswith(DEADLETTER_HEADER_PREFIX) and name != REPLAYED_FROM_HEADER
    ) or name.startswith(ESCAPED_HEADER_PREFIX):
        return ESCAPED_HEADER_PREFIX + name, value
    return name, value


def unescape_deadletter_header(name: str) -> str:
    """The name a letter's header had on the original record (`escape_deadletter_header`)."""
    return name[len(ESCAPED_HEADER_PREFIX) :] if name.startswith(ESCAPED_HEADER_PREFIX) else name


def _replayed(record: ConsumerRecord) -> bool:
    return any(name == REPLAYED_FROM_HEADER for name, _ in record.headers or ())


class RecordReader:
    """`consumer.getmany` that gets past a record aiokafka itself cannot parse. aiokafka
    raises the error from `getmany` and drops the records of that fetch it had already
    read, leaving the position where the fetch began, so every poll would fail on the
    same record for ever (and a replaced consumer, reopened at the committed offset, too).
    Here the partition is read one record at a time up to the unreadable one, those before
    it returned as usual; then `on_unreadable(tp, offsets, error)` is awaited (a group
    dead-letters their coordinates, a listener counts them) and the consumer seeks past
    them. `offsets` runs from the unreadable record to the end of its record batch:
    aiokafka parses a batch from its start, so it can read nothing after such a record in
    the same batch (a batch is one producer's, the one that wrote the unreadable record)."""

    def __init__(self, on_unreadable: UnreadableHandler) -> None:
        self._on_unreadable = on_unreadable
        # Partitions read one record at a time until their unreadable record is reached.
        self._careful: set[TopicPartition] = set()

    async def getmany(
        self,
        consumer: AIOKafkaConsumer,
        *partitions: TopicPartition,
        timeout_ms: int,
        max_records: int | None = None,
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """What `consumer.getmany(*partitions, ...)` gives, {} after stepping past (or up
        to) an unreadable record. Raises what `getmany` raises for anything else."""
        careful: list[TopicPartition] = []
        if self._careful:  # rare: only after an unreadable record
            self._careful &= consumer.assignment()
            careful = [tp for tp in self._careful if not partitions or tp in partitions]
        try:
            if careful:
                return cast(
                    dict[TopicPartition, list[ConsumerRecord]],
                    await consumer.getmany(careful[0], timeout_ms=timeout_ms, max_records=1),
                )
            return cast(
                dict[TopicPartition, list[ConsumerRecord]],
                await consumer.getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records),
            )
        except Exception as exc:
            where = _unreadable_record(exc)
            if where is None:
                raise
            # Records of other partitions the same call had already taken (their positions
            # moved past them): returned, or they would never be handled.
            drained = _drained_before(exc)
            tp, offset, batch_end = where
            if await consumer.position(tp) < offset:
                # The records before it were read and dropped with the error: read them
                # again, one at a time, so that only the unreadable ones are left out.
                self._careful.add(tp)
                return drained
            self._careful.discard(tp)
            await self._on_unreadable(tp, range(offset, batch_end), exc)
            consumer.seek(tp, batch_end)
            return drained


class _SupervisedConsumer(Subscription):
    """One aiokafka consumer and the loop that reads it. If the loop fails, the consumer is
    closed and a new one opened (with backoff while Kafka is unreachable), resuming where
    the old one stopped; meanwhile `healthy()` is false."""

    # A loop that has not polled for this long is stuck (every poll waits at most ~1 s).
    stall_s = 60.0

    def __init__(self, bus: KafkaBus, name: str) -> None:
        self.bus = bus
        self.name = name
        self.consumer: AIOKafkaConsumer | None = None
        self.loop_task: asyncio.Task[None] | None = None
        self.polled_at = 0.0
        self._stopped = False

    @abc.abstractmethod
    async def _open(self) -> AIOKafkaConsumer:
        """A started consumer, positioned where this subscription reads."""

    @abc.abstractmethod
    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        """Read `consumer` until cancelled; raise if it fails."""

    async def _after_failure(self) -> None:
        """Called once the failed consumer is out of use, before it is closed."""

    async def _before_close(self) -> None:
        """Called on stop, after the loop has ended, before the consumer is closed."""

    def _polled(self) -> None:
        self.polled_at = time.monotonic()

    async def start(self) -> None:
        self.consumer = await self._open()
        self._polled()
        self.loop_task = asyncio.create_task(self._supervise(), name=self.name)

    async def _supervise(self) -> None:
        while not self._stopped:
            consumer = self.consumer
            assert consumer is not None
            try:
                await self._run(consumer)
                raise RuntimeError("the consumer loop ended")
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - replaced below
                if isinstance(exc, asyncio.CancelledError) and _cancelled():
                    raise
                log.error(
                    "kafka consumer failed; replacing it", consumer=self.name, error=repr(exc)
                )
            self.consumer = None
            await self._after_failure()
            await self.bus._close_consumer(consumer)
            attempt = 0
            while self.consumer is None and not self._stopped:
                attempt += 1
                await asyncio.sleep(CONSUMER_RECONNECT_BACKOFF.delay(attempt))
                try:
                    self.consumer = await self._open()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - Kafka still away: retried
                    log.warning(
                        "kafka consumer not connected, retrying",
                        consumer=self.name,
                        error=repr(exc),
                    )
            self._polled()
            log.info("kafka consumer replaced", consumer=self.name)

    def healthy(self) -> bool:
        return self.health_problem() is None

    def health_problem(self) -> str | None:
        if self._stopped or self.loop_task is None or self.loop_task.done():
            return f"consumer {self.name} is not running"
        if self.consumer is None:
            return f"consumer {self.name} is being replaced"
        if time.monotonic() - self.polled_at >= self.stall_s:
            return f"consumer {self.name} has not polled for over {self.stall_s:.0f} s"
        return None

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.loop_task is not None:
            await cancel_and_wait(self.loop_task, self.bus.close_timeout_s)
        await self._before_close()
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            await self.bus._close_consumer(consumer)


# aiokafka ships no types, so its listener base class is `Any` to the type checker.
class _GroupSubscription(_SupervisedConsumer, ConsumerRebalanceListener):  # type: ignore[misc]
    """A consumer-group member handling up to `concurrency` events at once."""

    revoke_grace_s = 10.0

    def __init__(
        self,
        bus: KafkaBus,
        topics: list[str],
        group: str,
        handler: Handler,
        concurrency: int,
        retry: RetryPolicy,
        dependencies: HealthCheck,
        commit_interval_s: float = 0.0,
    ) -> None:
        super().__init__(bus, f"consume-{group}")
        self.topics, self.group, self.handler = topics, group, handler
        self.concurrency = max(1, concurrency)
        self.retry = retry
        self.dependencies = dependencies
        self.commit_interval_s = commit_interval_s
        # Before this (monotonic s) a poll that returned events does not commit.
        self.next_commit_at = 0.0
        self.progress: dict[TopicPartition, _PartitionProgress] = {}
        self.tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        # Handlers still running when their partition was revoked (past the grace):
        # their events go to the partition's next owner. Kept until the new assignment
        # is known: one of a partition handed back to this member runs on (its handler
        # meets the copy delivered again); one of a partition now another member's is
        # cancelled, so that two members do not go on answering the same event.
        self.orphans: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        # Orphans still running this long (s) after their revocation, with no assignment
        # since, are cancelled: the group has gone on without this member.
        self.orphan_timeout_s = self.rebalance_timeout_ms / 1000
        self._orphan_deadline: asyncio.TimerHandle | None = None
        # Orphans cancelled at an assignment, until they have ended (awaited at close).
        self._reaping: set[asyncio.Task[bool]] = set()
        self.slot_freed = asyncio.Event()
        # Per assigned partition, the end offset when it was assigned: events below it may
        # have been handled by an earlier owner (`delivery_may_repeat`); events at or past
        # it were published after this consumer owned the partition.
        self.first_new_offset: dict[TopicPartition, int] = {}
        self.opening: AIOKafkaConsumer | None = None
        self.reader = RecordReader(self._unreadable)

    @property
    def rebalance_timeout_ms(self) -> int:
        """How long the group coordinator waits for this member to rejoin at a rebalance,
        in ms: past its revocation (the grace its handlers get, then an offset commit
        bounded by the close timeout), with 15 s to spare for the heartbeat interval
        (3 s: a member learns of a rebalance at its next heartbeat), the JoinGroup round
        trip and a busy event loop. aiokafka's default (the session timeout, 10 s) is no
        longer than the grace: a member that waited it out was dropped from the group,
        its commit refused and every partition of it delivered again. Stays below the
        consumer's request timeout (40 s), which bounds the JoinGroup call."""
        return int((self.revoke_grace_s + self.bus.close_timeout_s + 15.0) * 1000)

    async def _open(self) -> AIOKafkaConsumer:
        consumer = self.bus._consumer(
            group=self.group,
            auto_offset_reset="earliest",
            max_poll_interval_ms=300_000,
            rebalance_timeout_ms=self.rebalance_timeout_ms,
        )
        consumer.subscribe(self.topics, listener=self)
        # The group may assign partitions before `start` or the supervisor stores it.
        self.opening = consumer
        await self.bus._start_consumer(consumer)
        return consumer

    def _in_flight(self) -> int:
        return sum(len(tasks) for tasks in self.tasks.values())

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            free = self.concurrency - self._in_flight()
            if free <= 0:
                # Keep polling (so the group keeps us) but fetch nothing until a slot frees.
                consumer.pause(*consumer.assignment())
                self.slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.slot_freed.wait()
                await self.reader.getmany(consumer, timeout_ms=0)
                self._polled()
                await self._commit(due_only=True)
                continue
            if consumer.paused():
                consumer.resume(*consumer.paused())
            # Records are their tasks' alone (`_start`): none stays referenced here while
            # the next poll waits (a request of megabytes, for every full collection to walk).
            polled = self._start(
                consumer, await self.reader.getmany(consumer, timeout_ms=100, max_records=free)
            )
            self._polled()
            # A commit per poll would be one per event at low load: while events keep
            # coming, commit once per interval; an empty poll (idle) commits at once.
            await self._commit(due_only=polled)

    def _start(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> bool:
        """Start a task handling each record of `batches`; whether there was any."""
        for tp, records in batches.items():
            progress = self.progress.setdefault(tp, _PartitionProgress())
            tasks = self.tasks.setdefault(tp, set())
            for record in records:
                progress.start(record.offset)
                task = asyncio.create_task(self._handle(tp, record, progress))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            _record_lag(consumer, tp, records[-1].offset + 1, self.group)
        return bool(batches)

    async def _unreadable(self, tp: TopicPartition, offsets: range, error: BaseException) -> None:
        # Parked like undecodable events, and committed past like handled ones.
        progress = self.progress.setdefault(tp, _PartitionProgress())
        for offset in offsets:
            await self.bus.dead_letter_unreadable(tp, offset, self.group, error)
            progress.start(offset)
            progress.finish(offset)

    async def _handle(
        self, tp: TopicPartition, record: ConsumerRecord, progress: _PartitionProgress
    ) -> None:
        """Handle `record` of `tp`, then mark its offset finished in `progress`: the
        progress it was started in, not a later owner's of the same partition."""
        try:
            try:
                event = await _decode(record)
            except EventDecodeError as exc:
                await self.bus.dead_letter(record, self.group, f"undecodable event: {exc}")
                return
            first_new = self.first_new_offset.get(tp)
            # A replayed dead letter may have been handled before it failed (by another
            # group on its topic, or partly by this one): look it up like a redelivery.
            delivery_may_repeat.set(
                first_new is None or record.offset < first_new or _replayed(record)
            )
            with _process_span(record, self.group, event):
                error = await call_with_retry(
                    lambda: self.handler(event),
                    self.retry,
                    lambda attempt, exc: log.warning(
                        "handler failed, retrying",
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        request_id=event.request_id,
                        attempt=attempt,
                        error=repr(exc),
                    ),
                    self.dependencies,
                )
            outcome = "deadlettered" if error is not None else "ok"
            metrics.EVENTS_HANDLED.labels(record.topic, self.group, outcome).inc()
            if error is not None:
                await self.bus.dead_letter(record, self.group, f"handler failed: {error!r}")
        finally:
            progress.finish(record.offset)
            self.slot_freed.set()

    async def _commit(
        self, only: set[TopicPartition] | None = None, *, due_only: bool = False
    ) -> None:
        """Commit, per partition, the offset below which every event is handled. With
        `due_only`, only if `commit_interval_s` has passed since the last commit."""
        if due_only and time.monotonic() < self.next_commit_at:
            return
        offsets = {}
        for tp, progress in self.progress.items():
            if only is not None and tp not in only:
                continue
            position = progress.committable()
            if position is not None:
                offsets[tp] = OffsetAndMetadata(position, "")
        consumer = self.consumer
        if not offsets or consumer is None:
            return
        self.next_commit_at = time.monotonic() + self.commit_interval_s
        try:
            await consumer.commit(offsets)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed commit only means redelivery
            log.warning(
                "offset commit failed; events may be redelivered", group=self.group, error=repr(exc)
            )
            return
        for tp, meta in offsets.items():
            if tp in self.progress:
                self.progress[tp].committed = meta.offset

    async def _drain(
        self,
        partitions: set[TopicPartition],
        grace_s: float,
        also: Iterable[asyncio.Task[None]] = (),
    ) -> None:
        """Wait up to `grace_s` for the handlers of `partitions` (and the tasks `also`)
        to end, then commit what `partitions` have handled."""
        pending = [task for tp in partitions for task in self.tasks.get(tp, ())]
        pending += [task for task in also if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.bus.close_timeout_s):
                await self._commit(only=partitions)

    async def _cancel_handlers(self) -> None:
        pending: list[asyncio.Task[Any]] = [t for tasks in self.tasks.values() for t in tasks]
        pending += [task for tasks in self.orphans.values() for task in tasks]
        pending += self._reaping
        if self._orphan_deadline is not None:
            self._orphan_deadline.cancel()
            self._orphan_deadline = None
        if pending:
            await asyncio.gather(
                *(cancel_and_wait(task, self.bus.close_timeout_s) for task in pending)
            )
        self.tasks.clear()
        self.orphans.clear()
        self.progress.clear()

    def _cancel_orphans(self, keep: set[TopicPartition] | None = None) -> None:
        """Cancel the handlers left running from revoked partitions not in `keep` (the
        partitions this member owns again; None: all of them); those of partitions in
        `keep` run on. Returns at once: the rebalance callback this runs in holds up the
        member's heartbeats, and the new owner does not wait for these handlers either;
        each is cancelled again until it ends (`cancel_and_wait`, up to the close
        timeout), and waited for at close."""
        cancelled = [
            task
            for tp in [tp for tp in self.orphans if keep is None or tp not in keep]
            for task in self.orphans.pop(tp)
            if not task.done()
        ]
        if not cancelled:
            return
        log.warning(
            "handlers of partitions this member no longer owns cancelled",
            group=self.group,
            handlers=len(cancelled),
        )
        for task in cancelled:
            reaper = asyncio.create_task(cancel_and_wait(task, self.bus.close_timeout_s))
            self._reaping.add(reaper)
            reaper.add_done_callback(self._reaping.discard)

    def _orphan_done(self, tp: TopicPartition, task: asyncio.Task[None]) -> None:
        orphans = self.orphans.get(tp)
        if orphans is not None:
            orphans.discard(task)
            if not orphans:
                del self.orphans[tp]

    async def _after_failure(self) -> None:
        # Their offsets cannot be committed any more, so they will be redelivered; let them
        # finish first rather than run twice at the same time.
        pending = [
            task for tasks in [*self.tasks.values(), *self.orphans.values()] for task in tasks
        ]
        if pending:
            await asyncio.wait(pending, timeout=self.revoke_grace_s)
        await self._cancel_handlers()

    async def _before_close(self) -> None:
        # Orphans kept for a partition that came back get the same grace as the rest.
        orphans = [task for tasks in self.orphans.values() for task in tasks]
        await self._drain(set(self.tasks), self.revoke_grace_s, also=orphans)
        await self._cancel_handlers()

    def _dropped_from_group(self) -> bool:
        """Whether the group coordinator no longer counts this member (it rejoined too
        late, or its session expired): its partitions are then already other members'.
        Read from aiokafka's coordinator, which exposes the member id nowhere else;
        False when it cannot tell."""
        consumer = self.consumer or self.opening
        member_id = getattr(getattr(consumer, "_coordinator", None), "member_id", None)
        return bool(member_id == JoinGroupRequest.UNKNOWN_MEMBER_ID)

    # ConsumerRebalanceListener
    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = set(revoked)
        if revoked and self._dropped_from_group():
            # Other members own these partitions already (and a commit would be refused):
            # their handlers stop now rather than answer what the new owners answer.
            log.warning("dropped from the consumer group; its handlers stop", group=self.group)
            pending = [task for tp in revoked for task in self.tasks.get(tp, ())]
            await asyncio.gather(
                *(cancel_and_wait(task, self.bus.close_timeout_s) for task in pending)
            )
        elif revoked:
            await self._drain(revoked, self.revoke_grace_s)
        for tp in revoked:
            self.progress.pop(tp, None)
            for task in self.tasks.pop(tp, ()):
                if not task.done():
                    self.orphans.setdefault(tp, set()).add(task)
                    task.add_done_callback(functools.partial(self._orphan_done, tp))
            self.first_new_offset.pop(tp, None)
        if self.orphans and self._orphan_deadline is None:
            self._orphan_deadline = asyncio.get_running_loop().call_later(
                self.orphan_timeout_s, self._orphans_expired
            )

    def _orphans_expired(self) -> None:
        self._orphan_deadline = None
        self._cancel_orphans()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = list(assigned)
        if self._orphan_deadline is not None:
            self._orphan_deadline.cancel()
            self._orphan_deadline = None
        self._cancel_orphans(keep=set(assigned))
        consumer = self.consumer or self.opening
        if not assigned or consumer is None:
            return
        try:
            async with asyncio.timeout(5.0):
                ends = await consumer.end_offsets(assigned)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - unknown ends: every event may repeat
            log.warning("end offsets of assigned partitions unknown", error=repr(exc))
            return
        self.first_new_offset.update(ends)


class _BatchSubscription(_SupervisedConsumer):
    """A consumer-group member handing events to its handler a batch at a time; a failing
    batch is split to isolate the event that fails alone (base.handle_batch_isolating)."""

    def __init__(
        self,
        bus: KafkaBus,
        topics: list[str],
        group: str,
        handler: BatchHandler,
        max_batch: int,
        retry: RetryPolicy,
        dependencies: HealthCheck,
        max_wait_ms: int = 0,
        skip_types: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(bus, f"consume-batch-{group}")
        self.topics, self.group, self.handler = topics, group, handler
        self.max_batch, self.retry = max_batch, retry
        self.dependencies = dependencies
        self.max_wait_ms = max_wait_ms
        # Told apart by the record's `type` header, before anything is decoded.
        self._skip_types = frozenset(kind.encode() for kind in skip_types)
        # Set by `hurry`: the batch being gathered stops waiting, and none waits until
        # `_hurried_until` (loop time): a request's events come a few milliseconds apart,
        # and the reader wants all of them written.
        self._hurried = asyncio.Event()
        self._hurried_until = 0.0
        # The first offset, per partition, of the batch this member holds now (being
        # gathered or handled); `_progress` is set, and replaced, after each batch.
        self._in_hand_from: dict[TopicPartition, int] = {}
        # Where unreadable records parked while a batch of their partition was in hand
        # leave the partition: committed with the batch, never before it is handled.
        self._parked_to: dict[TopicPartition, int] = {}
        self._progress = asyncio.Event()
        self.reader = RecordReader(self._unreadable)

    @override
    def hurry(self) -> None:
        self._hurried_until = asyncio.get_running_loop().time() + self.max_wait_ms / 1000
        self._hurried.set()

    @override
    async def hurry_and_wait(self, timeout: float) -> None:
        self.hurry()
        # Everything published before now, on the partitions this member reads: their
        # end offsets now (one broker round trip), then batches until each is handled.
        with contextlib.suppress(TimeoutError, BusUnavailableError, KafkaError):
            async with asyncio.timeout(timeout):
                ends = await self.bus.end_offsets(self.topics)
                while not await self._handled_up_to(ends):
                    await self._progress.wait()

    async def _handled_up_to(self, ends: Offsets) -> bool:
        """True once this member handled every event before `ends` on its partitions
        (a member not running, or a partition without a position yet, holds nobody up)."""
        consumer = self.consumer
        if consumer is None:
            return True
        for tp in consumer.assignment():
            end = ends.get((tp.topic, tp.partition))
            if end is None:
                continue
            handled = self._in_hand_from.get(tp)
            if handled is None:  # nothing of it in hand: what was handed over was handled
                handled = _valid_position(consumer, tp)
                if handled is None:
                    continue
            if handled < end:
                return False
        return True

    async def _open(self) -> AIOKafkaConsumer:
        consumer = self.bus._consumer(*self.topics, group=self.group, auto_offset_reset="earliest")
        await self.bus._start_consumer(consumer)
        return consumer

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await self.reader.getmany(
                consumer, timeout_ms=200, max_records=self.max_batch
            )
            self._polled()
            if not batches:
                continue
            ends = await self._take(consumer, batches)
            # Nothing of the batch stays referenced while the next poll waits (a request
            # of megabytes, for every full garbage collection to walk).
            del batches
            for tp, parked_to in self._parked_to.items():
                # Never below a record parked meanwhile: a restart would park it again.
                ends[tp] = max(ends.get(tp, 0), parked_to)
            self._parked_to = {}
            offsets = {tp: OffsetAndMetadata(end, "") for tp, end in ends.items()}
            for tp, meta in offsets.items():
                _record_lag(consumer, tp, meta.offset, self.group)
            try:
                await consumer.commit(offsets)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed commit only means redelivery
                log.warning(
                    "offset commit failed; batch may be redelivered",
                    group=self.group,
                    error=repr(exc),
                )
            self._polled()

    async def _take(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> dict[TopicPartition, int]:
        """Fill `batches` (`_fill`), decode their records (dead-lettering those that do not
        decode) and hand the events to the handler; the offset after each partition's
        last record. Raises what the handler raises."""
        self._in_hand_from = {tp: records[0].offset for tp, records in batches.items()}
        try:
            await self._fill(consumer, batches)
            for tp, records in batches.items():  # partitions `_fill` added
                self._in_hand_from.setdefault(tp, records[0].offset)
            items: list[tuple[ConsumerRecord, Event]] = []
            for records_of_partition in batches.values():
                for record in records_of_partition:
                    if self._skip_types and _unread_kind(record, self._skip_types):
                        # Committed with the batch, never decoded.
                        metrics.EVENTS_SKIPPED.labels(record.topic, "unread_type").inc()
                        continue
                    try:
                        items.append((record, await _decode(record)))
                    except EventDecodeError as exc:
                        await self.bus.dead_letter(record, self.group, f"undecodable event: {exc}")
            if items:
                await self._handle(items)
        finally:
            self._in_hand_from = {}
            self._progress.set()
            self._progress = asyncio.Event()
        return {tp: records[-1].offset + 1 for tp, records in batches.items()}

    async def _fill(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        """Adds to `batches` (partition -> records, in offset order) what arrives within
        `max_wait_ms` of the first event, up to `max_batch` records in all (a batch full
        already is not held): one request makes several events a few milliseconds apart,
        and one transaction and one commit for all of them costs far less than one each.

        Meanwhile the partitions are paused, then the broker is asked once for everything
        that arrived: fetching as each event arrives costs a fetch round trip per event,
        and a fetch response costs the consumer and the broker about as much CPU however
        few records it holds. An idle consumer is not affected (it waits in an ordinary
        fetch until an event arrives)."""
        count = sum(len(records) for records in batches.values())
        hurried = asyncio.get_running_loop().time() < self._hurried_until
        full = count >= self.max_batch or _batch_bytes(batches) >= MAX_BATCH_BYTES
        if full or self.max_wait_ms <= 0 or hurried:
            return
        self._hurried.clear()
        paused = consumer.assignment()
        consumer.pause(*paused)
        try:
            # A reader waiting for what was just published (`hurry`) ends the wait.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.max_wait_ms / 1000):
                    await self._hurried.wait()
        finally:
            # A rebalance meanwhile may have taken some away; new ones are not paused.
            consumer.resume(*(paused & consumer.assignment()))
        await self._fetch_up_to_log_end(consumer, batches, paused & consumer.assignment())

    async def _fetch_up_to_log_end(
        self,
        consumer: AIOKafkaConsumer,
        batches: dict[TopicPartition, list[ConsumerRecord]],
        partitions: set[TopicPartition],
    ) -> None:
        """Adds to `batches` what `partitions` held when the batch wait ended: their log end
        offsets (one ListOffsets round trip) say what arrived, and fetches go on until the
        consumer's position reaches them, `max_batch` records are in hand or
        RESUMED_FETCH_MAX_WAIT_MS has passed. A lone event's partitions are at their end
        already, so it waits no further; a fetch that took longer than one round trip (a
        busy host) no longer splits a batch."""
        count = sum(len(records) for records in batches.values())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESUMED_FETCH_MAX_WAIT_MS / 1000
        try:
            async with asyncio.timeout_at(deadline):
                ends: dict[TopicPartition, int] = await consumer.end_offsets(list(partitions))
        except TimeoutError:
            return  # a slow broker: what arrived joins the next batch
        except KafkaError as exc:  # the offsets could not be read: the next batch has it
            log.debug("log end offsets unread after a batch wait", error=repr(exc))
            return
        size = _batch_bytes(batches)
        while (
            count < self.max_batch
            and size < MAX_BATCH_BYTES
            and (left_ms := int((deadline - loop.time()) * 1000)) > 0
        ):
            behind = [
                tp
                for tp, end in ends.items()
                if tp in consumer.assignment()
                and (position := _valid_position(consumer, tp)) is not None
                and position < end
            ]
            if not behind:
                return
            more = await self.reader.getmany(
                consumer, *behind, timeout_ms=left_ms, max_records=self.max_batch - count
            )
            self._polled()
            for tp, records in more.items():
                batches.setdefault(tp, []).extend(records)
                count += len(records)
                size += sum(_value_bytes(record) for record in records)

    async def _unreadable(self, tp: TopicPartition, offsets: range, error: BaseException) -> None:
        # Parked, they are committed past, so a restart does not park them again: at once
        # when nothing of their partition is in hand (the records before them were handled
        # and committed batch by batch, read one at a time), else with the batch in hand
        # once it is handled (committing now would pass records not yet handled, and the
        # batch's own commit, lower, would then move the group back before them).
        for offset in offsets:
            await self.bus.dead_letter_unreadable(tp, offset, self.group, error)
        if tp in self._in_hand_from:
            self._parked_to[tp] = max(self._parked_to.get(tp, 0), offsets.stop)
            return
        consumer = self.consumer
        if consumer is None:
            return
        try:
            await consumer.commit({tp: OffsetAndMetadata(offsets.stop, "")})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the next batch's commit moves past it
            log.warning("offset commit failed", group=self.group, error=repr(exc))

    async def _handle(self, items: list[tuple[ConsumerRecord, Event]]) -> None:
        # One child span per event, covering the batch write, so every request's trace
        # shows where it was persisted.
        spans = _batch_spans([r for r, _ in items], self.group, [e for _, e in items])
        dead: set[tuple[str, int, int]] = set()

        async def dead_letter(item: tuple[ConsumerRecord, Event], error: BaseException) -> None:
            dead.add((item[0].topic, item[0].partition, item[0].offset))
            await self.bus.dead_letter(item[0], self.group, f"handler failed: {error!r}")

        try:
            await handle_batch_isolating(
                items,
                lambda chunk: self.handler([event for _, event in chunk]),
                self.retry,
                healthy=self.dependencies,
                dead_letter=dead_letter,
                on_retry=lambda tries, size, exc: log.warning(
                    "batch handler failed, retrying",
                    group=self.group,
                    size=size,
                    attempt=tries,
                    error=repr(exc),
                ),
            )
        finally:
            for event_span in spans:
                event_span.end()
        for record, _ in items:
            coordinates = (record.topic, record.partition, record.offset)
            outcome = "deadlettered" if coordinates in dead else "ok"
            metrics.EVENTS_HANDLED.labels(record.topic, self.group, outcome).inc()


class _Listener(_SupervisedConsumer):
    """Reads new events of some partitions of a topic, without a group and without commits.
    A replaced consumer resumes at the next offset this listener has not read."""

    def __init__(
        self,
        bus: KafkaBus,
        topic: str,
        handler: Handler,
        partitions: Sequence[int],
        key_filter: KeyFilter | None = None,
        carried: Carried | None = None,
        max_delay_ms: int | None = None,
    ):
        super().__init__(bus, f"listen-{topic}")
        self.topic, self.handler, self.key_filter = topic, handler, key_filter
        self.carried = carried
        self.partitions = [TopicPartition(topic, p) for p in partitions]
        self.positions: dict[TopicPartition, int] = {}
        self.reader = RecordReader(self._unreadable)
        self.fetch_options: dict[str, int] = {"fetch_max_wait_ms": LISTENER_FETCH_MAX_WAIT_MS}
        if max_delay_ms is not None:
            self.fetch_options = {
                "fetch_max_wait_ms": max_delay_ms,
                "fetch_min_bytes": DELAYED_LISTENER_FETCH_MIN_BYTES,
            }

    async def _open(self) -> AIOKafkaConsumer:
        consumer = self.bus._consumer(group=None, auto_offset_reset="latest", **self.fetch_options)
        await self.bus._start_consumer(consumer)
        try:
            consumer.assign(self.partitions)
            for tp in self.partitions:
                if tp in self.positions:
                    consumer.seek(tp, self.positions[tp])
                else:
                    await consumer.seek_to_end(tp)
                    # Resolve the position now, so nothing published after start() is missed.
                    self.positions[tp] = await consumer.position(tp)
        except BaseException:
            await self.bus._close_consumer(consumer)
            raise
        return consumer

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            # Handled in `_handle_all`: no record stays referenced here while the next
            # poll waits (a reply of megabytes, for every full collection to walk).
            await self._handle_all(await self.reader.getmany(consumer, timeout_ms=500))

    async def _handle_all(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        self._polled()
        for tp, records in batches.items():
            for record in records:
                await self._handle(record)
                self.positions[tp] = record.offset + 1

    async def _unreadable(self, tp: TopicPartition, offsets: range, error: BaseException) -> None:
        # The topic's group consumer parks them; a listener only skips them.
        metrics.EVENTS_SKIPPED.labels(tp.topic, "undecodable").inc(len(offsets))
        log_unreadable(log, "listener skipped unreadable records", tp, offsets, error)
        self.positions[tp] = offsets.stop

    async def _handle(self, record: ConsumerRecord) -> None:
        if (
            self.key_filter is not None
            and record.key is not None
            and not self.key_filter(record.key.decode(errors="replace"))
        ):
            return  # not one this listener waits for: not even decoded
        if self.carried is not None:
            await self._handle_carried(record, self.carried)
        try:
            event = await _decode(record)
        except EventDecodeError as exc:
            # The topic's group consumer dead-letters it; a listener only skips it.
            metrics.EVENTS_SKIPPED.labels(record.topic, "undecodable").inc()
            log.warning(
                "listener skipped undecodable event",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=str(exc)[:500],
            )
            return
        try:
            with _process_span(record, None, event):
                await self.handler(event)
        except Exception as exc:  # noqa: BLE001 - one bad event must not stop the listener
            log.error(
                "listener handler failed",
                topic=record.topic,
                offset=record.offset,
                error=repr(exc),
            )

    async def _handle_carried(self, record: ConsumerRecord, carried: Carried) -> None:
        """Give the event `record` carries in the header `carried.header`, if any, to
        `carried.handler` (`Carried.hand_over`)."""
        raw = next((value for name, value in record.headers if name == carried.header), None)
        if raw is None:
            return
        key = record.key.decode(errors="replace") if record.key is not None else None
        await carried.hand_over(raw, key, record.topic, offset=record.offset)
