"""Event bus on Apache Kafka (aiokafka).

- The producer is idempotent with `acks=all`: a published event is on every in-sync
  replica before `publish` returns, and producer retries never duplicate it.
- Group consumers handle up to `concurrency` events at once but commit, per partition,
  only the offset below which every event has been handled. A crash therefore redelivers
  whatever was in flight; nothing is skipped.
- An event that cannot be decoded (malformed JSON, unknown type, unknown schema version),
  or whose handler keeps failing, is logged with its coordinates and copied to the
  dead-letter topic with those coordinates in its headers; its partition moves on.
- Kafka being unreachable never hangs a caller: `publish` gives up after
  `publish_timeout_s` with BusUnavailableError, and start-up keeps retrying in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from opentelemetry.trace import SpanKind

from switchyard.common import tracing
from switchyard.common.bus import metrics
from switchyard.common.bus.base import (
    BatchHandler,
    BusUnavailableError,
    EventBus,
    EventTooLargeError,
    Handler,
    RetryPolicy,
    Subscription,
    call_with_retry,
)
from switchyard.common.events import EnvelopeFields, Event, EventDecodeError, decode_event
from switchyard.common.settings import DEFAULT_KAFKA_MAX_MESSAGE_BYTES

log = structlog.get_logger("switchyard.bus.kafka")
# The Kafka clients' default bound of one fetch response (records larger than it are
# still returned, one at a time).
FETCH_MAX_BYTES = 52_428_800
# A large record takes time to send and store (about 0.1 s per MiB on a busy 2-core
# machine): its publish timeout grows by a second per MiB, so only large records wait longer.
PUBLISH_BYTES_PER_S = 1024 * 1024


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
    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "switchyard",
        deadletter_topic: str = "switchyard.deadletter",
        publish_timeout_s: float = 1.5,
        max_message_bytes: int = DEFAULT_KAFKA_MAX_MESSAGE_BYTES,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        # Model requests carry whole conversations (the Messages API takes 32 MB bodies):
        # the producer sends, and consumers fetch, records up to this size.
        self.max_message_bytes = max_message_bytes
        self.client_id = client_id
        self.deadletter_topic = deadletter_topic
        self.publish_timeout_s = publish_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._producer_ready = asyncio.Event()
        self._connector: asyncio.Task[None] | None = None
        self._subscriptions: list[Subscription] = []

    # -- producer -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the producer; if Kafka is not there yet, keep trying in the background."""
        if self._connector is None:
            self._connector = asyncio.create_task(self._connect_producer())
            # Give a healthy broker a moment so that the first request does not race start-up.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._producer_ready.wait()), timeout=5)

    async def _connect_producer(self) -> None:
        attempt = 0
        while not self._producer_ready.is_set():
            attempt += 1
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self.client_id,
                enable_idempotence=True,
                acks="all",
                linger_ms=0,
                request_timeout_ms=10_000,
                max_request_size=self.max_message_bytes,
            )
            try:
                await producer.start()
            except Exception as exc:  # noqa: BLE001 - retried: the broker may come later
                with contextlib.suppress(Exception):
                    await producer.stop()
                delay = min(5.0, 0.2 * 2**attempt)
                log.warning(
                    "kafka producer not connected, retrying", error=repr(exc), retry_in_s=delay
                )
                await asyncio.sleep(delay)
                continue
            self._producer = producer
            self._producer_ready.set()
            log.info("kafka producer connected", bootstrap_servers=self.bootstrap_servers)

    async def stop(self) -> None:
        for subscription in reversed(self._subscriptions):
            await subscription.stop()
        self._subscriptions.clear()
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._producer is not None:
            await self._producer.stop()
        self._producer = None
        self._producer_ready.clear()
        self._connector = None

    async def publish(
        self,
        topic: str,
        event: EnvelopeFields,
        *,
        key: str | None = None,
        partition: int | None = None,
    ) -> None:
        value = event.model_dump_json().encode()
        headers = [
            ("type", event.type.encode()),
            ("schema_version", str(event.schema_version).encode()),
            ("request_id", event.request_id.encode()),
            ("source", event.source.encode()),
        ]
        with tracing.span(
            f"{topic} publish", kind=SpanKind.PRODUCER, attributes=_publish_attributes(topic, event)
        ):
            headers += tracing.current_trace_headers()
            await self._send(
                topic,
                value,
                key=(key or event.request_id).encode(),
                partition=partition,
                headers=headers,
            )

    async def _send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None,
        partition: int | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        producer = self._producer
        if producer is None:
            raise BusUnavailableError("Kafka is not reachable")
        timeout_s = self.publish_timeout_s + len(value) / PUBLISH_BYTES_PER_S
        try:
            await asyncio.wait_for(
                producer.send_and_wait(topic, value, key=key, partition=partition, headers=headers),
                timeout=timeout_s,
            )
            metrics.EVENTS_PUBLISHED.labels(topic).inc()
        except TimeoutError as exc:
            metrics.PUBLISH_FAILURES.labels(topic).inc()
            raise BusUnavailableError(f"Kafka did not acknowledge within {timeout_s:.1f}s") from exc
        except MessageSizeTooLargeError as exc:
            metrics.PUBLISH_FAILURES.labels(topic).inc()
            raise EventTooLargeError(
                f"the event ({len(value)} bytes) is larger than {topic} accepts: {exc!r}"
            ) from exc
        except Exception as exc:  # KafkaError and connection errors
            metrics.PUBLISH_FAILURES.labels(topic).inc()
            raise BusUnavailableError(f"Kafka refused the event: {exc!r}") from exc

    async def dead_letter(self, record: ConsumerRecord, group: str, reason: str) -> None:
        """Copy a record to the dead-letter topic with its coordinates; retried until it lands."""
        metrics.EVENTS_DEADLETTERED.labels(
            record.topic, group, "undecodable" if reason.startswith("undecodable") else "handler"
        ).inc()
        log.error(
            "event dead-lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            group=group,
            reason=reason[:2000],
        )
        headers = list(record.headers or ()) + [
            ("deadletter.topic", record.topic.encode()),
            ("deadletter.partition", str(record.partition).encode()),
            ("deadletter.offset", str(record.offset).encode()),
            ("deadletter.group", group.encode()),
            ("deadletter.reason", reason[:2000].encode()),
        ]
        await call_with_retry(
            lambda: self._send(
                self.deadletter_topic,
                record.value or b"",
                key=record.key,
                partition=None,
                headers=headers,
            ),
            RetryPolicy(max_attempts=None, initial_backoff_s=0.2, max_backoff_s=5),
            lambda attempt, exc: log.warning(
                "dead-letter publish failed, retrying", error=repr(exc)
            ),
        )

    async def partition_count(self, topic: str) -> int:
        if self._producer is None:
            raise BusUnavailableError("Kafka is not reachable")
        partitions = await asyncio.wait_for(self._producer.partitions_for(topic), timeout=10)
        return len(partitions)

    async def healthy(self) -> bool:
        if self._producer is None:
            return False
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout=2)
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
        return True

    # -- consumers ------------------------------------------------------------------

    def _consumer(self, *topics: str, group: str | None, **options) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            group_id=group,
            enable_auto_commit=False,
            max_partition_fetch_bytes=self.max_message_bytes,
            fetch_max_bytes=max(FETCH_MAX_BYTES, self.max_message_bytes),
            **options,
        )

    async def subscribe(
        self,
        topics: Sequence[str],
        group: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        retry: RetryPolicy = RetryPolicy(),
    ) -> Subscription:
        subscription = _GroupSubscription(self, list(topics), group, handler, concurrency, retry)
        await subscription.start()
        self._subscriptions.append(subscription)
        return subscription

    async def subscribe_batch(
        self,
        topics: Sequence[str],
        group: str,
        handler: BatchHandler,
        *,
        max_batch: int = 500,
        retry: RetryPolicy = RetryPolicy(max_attempts=None),
    ) -> Subscription:
        subscription = _BatchSubscription(self, list(topics), group, handler, max_batch, retry)
        await subscription.start()
        self._subscriptions.append(subscription)
        return subscription

    async def listen(
        self, topic: str, handler: Handler, *, partitions: Sequence[int] | None = None
    ) -> Subscription:
        subscription = _Listener(self, topic, handler, partitions)
        await subscription.start()
        self._subscriptions.append(subscription)
        return subscription


def _publish_attributes(topic: str, event: EnvelopeFields) -> dict[str, str]:
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        "switchyard.event.type": event.type,
        "switchyard.request_id": event.request_id,
    }


def _process_span(record: ConsumerRecord, group: str | None, event: Event):
    return tracing.span(
        f"{record.topic} process",
        kind=SpanKind.CONSUMER,
        parent=tracing.context_from_headers(record.headers),
        attributes=tracing.consumer_span_attributes(
            record.topic, record.partition, record.offset, group, event
        ),
    )


def _batch_spans(records: list[ConsumerRecord], group: str, events: list[Event]) -> list:
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


def _decode(record: ConsumerRecord) -> Event:
    if record.value is None:
        raise EventDecodeError("record has no value")
    return decode_event(record.value)


class _GroupSubscription(Subscription, ConsumerRebalanceListener):
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
    ) -> None:
        self.bus, self.topics, self.group, self.handler = bus, topics, group, handler
        self.concurrency = max(1, concurrency)
        self.retry = retry
        self.progress: dict[TopicPartition, _PartitionProgress] = {}
        self.tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.loop_task: asyncio.Task[None] | None = None
        self.slot_freed = asyncio.Event()

    async def start(self) -> None:
        self.consumer = self.bus._consumer(
            group=self.group, auto_offset_reset="earliest", max_poll_interval_ms=300_000
        )
        self.consumer.subscribe(self.topics, listener=self)
        await self.consumer.start()
        self.loop_task = asyncio.create_task(self._run(), name=f"consume-{self.group}")

    def _in_flight(self) -> int:
        return sum(len(tasks) for tasks in self.tasks.values())

    async def _run(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        while True:
            free = self.concurrency - self._in_flight()
            if free <= 0:
                # Keep polling (so the group keeps us) but fetch nothing until a slot frees.
                consumer.pause(*consumer.assignment())
                self.slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.slot_freed.wait(), timeout=1.0)
                await consumer.getmany(timeout_ms=0)
                await self._commit()
                continue
            if consumer.paused():
                consumer.resume(*consumer.paused())
            batches = await consumer.getmany(timeout_ms=100, max_records=free)
            for tp, records in batches.items():
                progress = self.progress.setdefault(tp, _PartitionProgress())
                tasks = self.tasks.setdefault(tp, set())
                for record in records:
                    progress.start(record.offset)
                    task = asyncio.create_task(self._handle(tp, record))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                _record_lag(consumer, tp, records[-1].offset + 1, self.group)
            await self._commit()

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        try:
            try:
                event = _decode(record)
            except EventDecodeError as exc:
                await self.bus.dead_letter(record, self.group, f"undecodable event: {exc}")
                return
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
                )
            outcome = "deadlettered" if error is not None else "ok"
            metrics.EVENTS_HANDLED.labels(record.topic, self.group, outcome).inc()
            if error is not None:
                await self.bus.dead_letter(record, self.group, f"handler failed: {error!r}")
        finally:
            progress = self.progress.get(tp)
            if progress is not None:
                progress.finish(record.offset)
            self.slot_freed.set()

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        offsets = {}
        for tp, progress in self.progress.items():
            if only is not None and tp not in only:
                continue
            position = progress.committable()
            if position is not None:
                offsets[tp] = OffsetAndMetadata(position, "")
        if not offsets or self.consumer is None:
            return
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:  # noqa: BLE001 - a failed commit only means redelivery
            log.warning(
                "offset commit failed; events may be redelivered", group=self.group, error=repr(exc)
            )
            return
        for tp, meta in offsets.items():
            self.progress[tp].committed = meta.offset

    async def _drain(self, partitions: set[TopicPartition], grace_s: float) -> None:
        pending = [task for tp in partitions for task in self.tasks.get(tp, ())]
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
        await self._commit(only=partitions)

    # ConsumerRebalanceListener
    async def on_partitions_revoked(self, revoked) -> None:
        revoked = set(revoked)
        if revoked:
            await self._drain(revoked, self.revoke_grace_s)
        for tp in revoked:
            self.progress.pop(tp, None)
            self.tasks.pop(tp, None)

    async def on_partitions_assigned(self, assigned) -> None:
        return None

    async def stop(self, grace_s: float = 10.0) -> None:
        if self.loop_task is not None:
            self.loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop_task
        await self._drain(set(self.tasks), grace_s)
        for tasks in self.tasks.values():
            for task in tasks:
                task.cancel()
        if self.consumer is not None:
            await self.consumer.stop()


class _BatchSubscription(Subscription):
    """A consumer-group member handing events to its handler a batch at a time."""

    def __init__(
        self,
        bus: KafkaBus,
        topics: list[str],
        group: str,
        handler: BatchHandler,
        max_batch: int,
        retry: RetryPolicy,
    ) -> None:
        self.bus, self.topics, self.group, self.handler = bus, topics, group, handler
        self.max_batch, self.retry = max_batch, retry
        self.consumer: AIOKafkaConsumer | None = None
        self.loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.consumer = self.bus._consumer(
            *self.topics, group=self.group, auto_offset_reset="earliest"
        )
        await self.consumer.start()
        self.loop_task = asyncio.create_task(self._run(), name=f"consume-batch-{self.group}")

    async def _run(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=self.max_batch)
            if not batches:
                continue
            events: list[Event] = []
            records: list[ConsumerRecord] = []
            for records_of_partition in batches.values():
                for record in records_of_partition:
                    try:
                        events.append(_decode(record))
                        records.append(record)
                    except EventDecodeError as exc:
                        await self.bus.dead_letter(record, self.group, f"undecodable event: {exc}")
            if events:
                # One child span per event, covering the batch write, so every request's
                # trace shows where it was persisted.
                spans = _batch_spans(records, self.group, events)
                error = await call_with_retry(
                    lambda: self.handler(events),
                    self.retry,
                    lambda attempt, exc: log.warning(
                        "batch handler failed, retrying",
                        group=self.group,
                        size=len(events),
                        attempt=attempt,
                        error=repr(exc),
                    ),
                )
                for event_span in spans:
                    event_span.end()
                outcome = "deadlettered" if error is not None else "ok"
                for record in records:
                    metrics.EVENTS_HANDLED.labels(record.topic, self.group, outcome).inc()
                if error is not None:
                    for record in records:
                        await self.bus.dead_letter(record, self.group, f"handler failed: {error!r}")
            offsets = {
                tp: OffsetAndMetadata(recs[-1].offset + 1, "") for tp, recs in batches.items()
            }
            for tp, meta in offsets.items():
                _record_lag(consumer, tp, meta.offset, self.group)
            try:
                await consumer.commit(offsets)
            except Exception as exc:  # noqa: BLE001 - a failed commit only means redelivery
                log.warning(
                    "offset commit failed; batch may be redelivered",
                    group=self.group,
                    error=repr(exc),
                )

    async def stop(self) -> None:
        # Cancelling between batches or mid-handler is safe: uncommitted events are redelivered.
        if self.loop_task is not None:
            self.loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop_task
        if self.consumer is not None:
            await self.consumer.stop()


class _Listener(Subscription):
    """Reads new events of some partitions of a topic, without a group and without commits."""

    def __init__(
        self, bus: KafkaBus, topic: str, handler: Handler, partitions: Sequence[int] | None
    ) -> None:
        self.bus, self.topic, self.handler = bus, topic, handler
        self.partitions = list(partitions) if partitions is not None else None
        self.consumer: AIOKafkaConsumer | None = None
        self.loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.consumer = self.bus._consumer(
            group=None, auto_offset_reset="latest", fetch_max_wait_ms=100
        )
        await self.consumer.start()
        partitions = self.partitions
        if partitions is None:
            # Every partition of the topic, from the producer's (already loaded) metadata.
            partitions = list(range(await self.bus.partition_count(self.topic)))
        tps = [TopicPartition(self.topic, p) for p in partitions]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            # Resolve the position now, so nothing published after start() is missed.
            await self.consumer.position(tp)
        self.loop_task = asyncio.create_task(self._run(), name=f"listen-{self.topic}")

    async def _run(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    try:
                        event = _decode(record)
                    except EventDecodeError as exc:
                        # The topic's group consumer dead-letters it; a listener only skips it.
                        log.warning(
                            "listener skipped undecodable event",
                            topic=record.topic,
                            partition=record.partition,
                            offset=record.offset,
                            error=str(exc)[:500],
                        )
                        continue
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

    async def stop(self) -> None:
        if self.loop_task is not None:
            self.loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop_task
        if self.consumer is not None:
            await self.consumer.stop()
