"""What a request delivered again already did: the outcomes log.

A request topic's offset is committed only after the request's reply was published, so a
replica killed between the two hands its partition to another replica, which receives the
request again. The client may already have received its reply (a JSON 200), or part of
its stream. Calling the upstream again would bill a second call the client never sees,
and a second run of a stream cannot continue the one the client holds. So inference
writes what it is about to tell the client to the outcomes topic (`<prefix>.outcomes`,
keyed by request id) before telling it:

- the first `chat.chunk` record of a stream run, before it goes to the replies topic: from
  then on the client may hold part of this run's stream (the stream-started marker);
- the terminal event (`chat.completed` / `chat.failed`) and the `usage.recorded` event,
  before the terminal event goes to the replies topic.

Before running a request, the handler asks `OutcomeLog.lookup`: a request whose terminal
and usage events are recorded gets them published again, with the same ids (consumers
deduplicate them), and the upstream is not called; a stream that had started but has no
recorded outcome cannot be resumed (the client's stream ends when another run begins), so
it ends as `chat.failed` 502 `stream_interrupted`, which is what the client saw; anything
else runs normally (its client has received nothing yet).

Whichever replica receives the request again must see records another replica wrote, so
`KafkaOutcomeLog` reads the whole topic: it starts `lookback_s` back in time and follows
the topic, keeping the records of the last `lookback_s` in memory, and a lookup first
waits until it has read everything the topic held when the lookup began (a read barrier:
one ListOffsets round trip), so a record written by a replica that died a moment ago is
never missed. The records are the events inference publishes anyway, with their usual
contracts; nothing here is Kafka-specific except `KafkaOutcomeLog`. `ListenedOutcomeLog`
does the same over any bus's `listen` (the in-memory bus of embedded mode and tests, where
one process holds every request).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from typing_extensions import override

from switchyard.common.bus import BusUnavailableError, EventBus, Subscription
from switchyard.common.events import (
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRequested,
    Event,
    EventDecodeError,
    UsageRecorded,
    decode_event,
    encode_event,
)
from switchyard.common.tasks import cancel_and_wait

log = structlog.get_logger("switchyard.inference.redelivery")


@dataclass
class Recorded:
    """What the outcomes log holds about one request: the first chunk record of a stream
    run, the terminal event and the usage event, each if written."""

    stream_started: ChatChunk | None = None
    reply: ChatCompleted | ChatFailed | None = None
    usage: UsageRecorded | None = None
    seen_at: float = field(default_factory=time.monotonic)

    @property
    def answered(self) -> bool:
        """True when the outcome is complete: it can be published again as it was."""
        return self.reply is not None and self.usage is not None


# Per indexed request, beyond its records' bytes: the dict slot, the id and the entry.
_ENTRY_OVERHEAD_BYTES = 300


@dataclass
class _Entry:
    """One request's records as their encoded bytes (decoded only when looked up)."""

    stream_started: bytes | None = None
    reply: bytes | None = None
    usage: bytes | None = None
    seen_at: float = field(default_factory=time.monotonic)

    def size(self) -> int:
        records = (self.stream_started, self.reply, self.usage)
        return _ENTRY_OVERHEAD_BYTES + sum(len(r) for r in records if r is not None)


class OutcomeIndex:
    """The records of the outcomes log read so far, by request id, kept for `lookback_s`
    seconds after they were read, within `max_bytes` of encoded records (the oldest go
    first when either bound is reached, so a replica's memory stays bounded whatever the
    traffic; a redelivery older than what is kept runs again).

    Records are kept encoded (as on the topic) and decoded only by `get`, which is rare
    (only a request delivered again is looked up): a decoded reply costs several times
    its encoded size in memory."""

    def __init__(self, lookback_s: float, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.lookback_s = lookback_s
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, event: Event, raw: bytes | None = None) -> None:
        """Index one record of the outcomes topic: `event` decoded, `raw` its bytes on the
        topic (encoded here when not given). Other event types are ignored."""
        if not isinstance(event, ChatChunk | ChatCompleted | ChatFailed | UsageRecorded):
            return
        if raw is None:
            raw = encode_event(event)
        entry = self._entries.get(event.request_id)
        if entry is None:
            entry = self._entries[event.request_id] = _Entry()
        else:
            self.bytes -= entry.size()
        if isinstance(event, ChatChunk):
            entry.stream_started = entry.stream_started or raw
        elif isinstance(event, UsageRecorded):
            entry.usage = raw
        else:
            entry.reply = raw
        self.bytes += entry.size()
        self._prune()

    def get(self, request_id: str) -> Recorded | None:
        """What is recorded for `request_id`, decoded (None: nothing kept)."""
        entry = self._entries.get(request_id)
        if entry is None:
            return None

        def decoded(raw: bytes | None) -> Any:
            return decode_event(raw) if raw is not None else None

        return Recorded(
            stream_started=decoded(entry.stream_started),
            reply=decoded(entry.reply),
            usage=decoded(entry.usage),
            seen_at=entry.seen_at,
        )

    def _prune(self) -> None:
        cutoff = time.monotonic() - self.lookback_s
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.seen_at >= cutoff and self.bytes <= self.max_bytes:
                return
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped.size()


class OutcomeLog(Protocol):
    """Where a request's outcome is recorded before its client is told, and looked up
    before the request is run."""

    async def start(self) -> None:
        """Start reading the log (in the background: the broker may not be reachable)."""
        ...

    async def stop(self) -> None:
        """Stop reading and release the log's connections."""
        ...

    def healthy(self) -> bool:
        """False while the log cannot be read (readiness)."""
        ...

    async def lookup(self, request: ChatRequested) -> Recorded | None:
        """What was recorded for `request` (None: nothing). Raises BusUnavailableError
        when the log cannot be read up to date (the handler is then retried like during
        any outage)."""
        ...


class ListenedOutcomeLog(OutcomeLog):
    """The outcomes log read through the bus's `listen`: every record published after
    `start`. Enough where one process handles every request (the in-memory bus)."""

    def __init__(
        self, bus: EventBus, topic: str, lookback_s: float, max_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self.bus, self.topic = bus, topic
        self.index = OutcomeIndex(lookback_s, max_bytes)
        self._subscription: Subscription | None = None

    @override
    async def start(self) -> None:
        async def add(event: Event) -> None:
            self.index.add(event)

        self._subscription = await self.bus.listen(self.topic, add)

    @override
    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.stop()

    @override
    def healthy(self) -> bool:
        return self._subscription is not None

    @override
    async def lookup(self, request: ChatRequested) -> Recorded | None:
        return self.index.get(request.request_id)


class KafkaOutcomeLog(OutcomeLog):
    """The outcomes log read from Kafka by one consumer of its own (no group), assigned
    every partition of the topic (`partition_count(topic)`, the bus's), starting
    `lookback_s` back in time.

    `lookup` waits until the consumer has read every partition up to the end offsets the
    broker gives at the start of the lookup, at most `barrier_timeout_s`; beyond it the
    log is unavailable (BusUnavailableError)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partition_count: Callable[[str], Awaitable[int]],
        *,
        lookback_s: float,
        max_bytes: int = 64 * 1024 * 1024,
        client_id: str = "switchyard-inference-outcomes",
        max_message_bytes: int = 1_048_576,
        barrier_timeout_s: float = 5.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self._partition_count = partition_count
        self.client_id = client_id
        self.max_message_bytes = max_message_bytes
        self.barrier_timeout_s = barrier_timeout_s
        self.index = OutcomeIndex(lookback_s, max_bytes)
        self._consumer: Any = None  # an AIOKafkaConsumer while open
        self._partitions: list[Any] = []
        self._positions: dict[Any, int] = {}
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @override
    async def start(self) -> None:
        """Start reading in the background (Kafka may not be reachable yet)."""
        self._task = asyncio.create_task(self._run(), name="outcomes-log")

    @override
    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        await self._close()

    async def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._ready.clear()
        if consumer is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await consumer.stop()

    async def _open(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from switchyard.common.bus.kafka import LISTENER_FETCH_MAX_WAIT_MS

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=LISTENER_FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=self.max_message_bytes,
        )
        await consumer.start()
        try:
            async with asyncio.timeout(15):
                count = await self._partition_count(self.topic)
            tps = [TopicPartition(self.topic, p) for p in range(count)]
            consumer.assign(tps)
            if self._positions:
                for tp in tps:  # a replaced consumer resumes where the last one stopped
                    if tp in self._positions:
                        consumer.seek(tp, self._positions[tp])
                    else:
                        await consumer.seek_to_beginning(tp)
            else:
                # The ends are taken first: a partition with no record of the lookback
                # window starts at its end as it was then, so a record written while this
                # opens is read, not skipped (`seek_to_end` would resolve the end later).
                ends = await consumer.end_offsets(tps)
                since_ms = int((time.time() - self.index.lookback_s) * 1000)
                found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
                for tp in tps:
                    if found.get(tp) is not None:
                        consumer.seek(tp, found[tp].offset)
                    else:
                        consumer.seek(tp, ends[tp])
            for tp in tps:
                self._positions[tp] = await consumer.position(tp)
        except BaseException:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await consumer.stop()
            raise
        self._consumer, self._partitions = consumer, tps
        self._ready.set()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                if self._consumer is None:
                    await self._open()
                    log.info("reading the outcomes log", topic=self.topic)
                    attempt = 0
                consumer = self._consumer
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        self._index(record)
                for tp in self._partitions:
                    self._positions[tp] = await consumer.position(tp)
                self._advanced.set()
                self._advanced = asyncio.Event()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reopened: the broker may be back later
                attempt += 1
                if attempt == 1:
                    log.warning("outcomes log unreadable; retrying", error=repr(exc))
                await self._close()
                await asyncio.sleep(min(5.0, 0.2 * 2 ** min(attempt, 5)))

    @override
    def healthy(self) -> bool:
        return self._ready.is_set()

    def _index(self, record: Any) -> None:  # an aiokafka ConsumerRecord
        if record.value is None:
            return
        try:
            self.index.add(decode_event(record.value), record.value)
        except EventDecodeError as exc:
            log.warning("outcomes log record skipped", offset=record.offset, error=str(exc)[:300])

    @override
    async def lookup(self, request: ChatRequested) -> Recorded | None:
        try:
            async with asyncio.timeout(self.barrier_timeout_s):
                await self._ready.wait()
                consumer = self._consumer
                assert consumer is not None
                ends = await consumer.end_offsets(self._partitions)
                while any(self._positions.get(tp, 0) < end for tp, end in ends.items()):
                    await self._advanced.wait()
        except TimeoutError as exc:
            raise BusUnavailableError("the outcomes log could not be read up to date") from exc
        except Exception as exc:  # noqa: BLE001 - Kafka errors, or the consumer being replaced
            raise BusUnavailableError(f"the outcomes log cannot be read: {exc!r}") from exc
        return self.index.get(request.request_id)
