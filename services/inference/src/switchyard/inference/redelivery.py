"""What a request delivered again already did: its reply partition, read back.

A request topic's offset is committed only after the request's reply was published, so a
replica killed between the two hands its partition to another replica, which receives the
request again. The client may already have received its reply (a JSON 200), or part of
its stream. Calling the upstream again would bill a second call the client never sees,
and a second run of a stream cannot continue the one the client holds. What the client
may have seen is exactly what its reply partition holds, so that is where a replica looks:

- a `chat.chunk` record of the request: its client may hold part of a stream run;
- a terminal event (`chat.completed` / `chat.failed`): its client may have its reply. The
  terminal record carries the request's `usage.recorded` event in its `USAGE_HEADER`
  header, written in the same record, so the two are found together or not at all.

Before running a request, the handler asks `OutcomeLog.lookup`: a request whose terminal
event is there gets it and its usage event published again, with the same ids (consumers
deduplicate them), and the upstream is not called; a stream that had started but has no
terminal event cannot be resumed (the client's stream ends when another run begins), so
it ends as `chat.failed` 502 `stream_interrupted`, which is what the client saw; anything
else runs normally (its client has received nothing yet).

A record on the reply partition is the request's only when its event, and the usage event
it carries, name the request's own tenant and request id: a record a bad producer wrote
under the request's key (another tenant's reply, a chunk) is passed over, and so is a
reply carrying such a usage event. Up to `MAX_CANDIDATES` chunk and terminal records are
kept per request id, each checked only when the request is looked up, so records written
there before the request's own cannot hide it (beyond that many, the request runs again,
as when nothing was recorded).

Nothing is written for this beyond the reply itself: the record the client waits for is
the record. Only a request the bus says an earlier owner of its partition may have
handled (`delivery_may_repeat`) is looked up, so the partition is read only after a
replica died or a rebalance moved partitions, never while requests simply flow.

`KafkaReplyLog` reads the request's reply partition (the gateway replica's, or the one
its request id's key hashes to when nobody waits), from shortly before the request was
made up to the end the broker gives at the start of the lookup (a read barrier: a record
written by a replica that died a moment ago is never missed), and keeps what it read for
`lookback_s` within a memory bound, with the range of offsets it still holds, so a
later lookup reads only what its own range lacks and the redeliveries of one rebalance
read each partition about once.
`LocalOutcomeLog` is told what this process writes (the in-memory bus of embedded mode and
tests, where one process holds every request), and keeps it only until the request is
handled (`settled`): that bus delivers an event again only to retry a failing handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Protocol, cast

import structlog
from typing_extensions import override

from switchyard.common.bus import USAGE_HEADER, BusUnavailableError
from switchyard.common.events import (
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRequested,
    EnvelopeFields,
    EventDecodeError,
    UsageRecorded,
    decode_event,
    encode_event,
)
from switchyard.common.kafka_security import client_options
from switchyard.common.tasks import cancel_and_wait

_CHUNK = b"chat.chunk"
_TERMINAL = (b"chat.completed", b"chat.failed")

log = structlog.get_logger("switchyard.inference.redelivery")


@dataclass
class Recorded:
    """What a request's reply partition holds about it: the first chunk record of a stream
    run, the terminal event and the usage event it carries, each if written."""

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

# How many chunk records, and how many terminal records, are kept per request id: the
# request's own is told apart from what others wrote under its key only when it is
# looked up (decoding every record read would cost the consumer far more).
MAX_CANDIDATES = 4


# One request's records as their encoded bytes (decoded only when looked up), in a plain
# tuple: its chunk records, its terminal records and the usage records they carry (each
# field None, one record, or a tuple of up to `MAX_CANDIDATES` in the rare case there are
# more: see `_candidates`; a usage record may be None), when the first of them was read
# (`time.monotonic()`), then where they were read: partition, highest offset, partition,
# highest offset... (none when this process told them). CPython's collector stops
# tracking a tuple of bytes and numbers at its first collection, where an object stays
# tracked for life: a full index holds tens of thousands of entries, which every full
# collection would otherwise walk (a tuple within the tuple would keep it tracked longer).
_Entry = tuple[Any, ...]
_STREAM_STARTED, _REPLY, _USAGE, _SEEN_AT, _OFFSETS = range(5)


def _candidates(field: Any, count: int) -> tuple[Any, ...]:
    """The `count` records an entry's field holds: one is kept bare, more as a tuple."""
    if count == 0:
        return ()
    return (field,) if count == 1 else cast(tuple[Any, ...], field)


def _field(records: tuple[Any, ...]) -> Any:
    """`records` as an entry's field keeps them (`_candidates` reads them back)."""
    if not records:
        return None
    return records[0] if len(records) == 1 else records


def _count(field: Any) -> int:
    """How many records a chunk or terminal field holds (never None among them)."""
    if field is None:
        return 0
    return len(field) if isinstance(field, tuple) else 1


def _entry_records(entry: _Entry) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]:
    """An entry's chunk, terminal and usage records, each as a tuple."""
    replies = _count(entry[_REPLY])
    return (
        _candidates(entry[_STREAM_STARTED], _count(entry[_STREAM_STARTED])),
        _candidates(entry[_REPLY], replies),
        _candidates(entry[_USAGE], replies),
    )


def _entry_size(entry: _Entry) -> int:
    return _ENTRY_OVERHEAD_BYTES + sum(
        len(record) for records in _entry_records(entry) for record in records if record is not None
    )


def _owned(event: Any, request_id: str, tenant: str) -> bool:
    """Whether `event` (decoded, or None) names the request `request_id` of `tenant`."""
    return (
        event is not None
        and getattr(event, "request_id", None) == request_id
        and getattr(event, "tenant", None) == tenant
    )


def _entry_offsets(entry: _Entry) -> dict[int, int]:
    """Partition to the highest offset its records were read at."""
    return dict(zip(entry[_OFFSETS::2], entry[_OFFSETS + 1 :: 2], strict=True))


class OutcomeIndex:
    """The records of reply partitions read so far, by request id, kept for `lookback_s`
    seconds after they were read, within `max_bytes` of encoded records (the oldest go
    first when either bound is reached, so a replica's memory stays bounded whatever the
    traffic). A redelivery older than what is kept has its partition read again
    (`KafkaReplyLog`), or runs again where nothing can be read back (`LocalOutcomeLog`).

    Records are kept encoded (as on the topic) and decoded only by `get`, which is rare
    (only a request delivered again is looked up): a decoded reply costs several times
    its encoded size in memory.

    `on_evict(partition, offset)`, if given, is called for each request dropped whose
    records were read from a partition, with the highest offset among them: the reader
    then knows that range is no longer all kept."""

    def __init__(
        self,
        lookback_s: float,
        max_bytes: int = 64 * 1024 * 1024,
        on_evict: Callable[[int, int], None] | None = None,
    ) -> None:
        self.lookback_s = lookback_s
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._on_evict = on_evict

    def __len__(self) -> int:
        return len(self._entries)

    def stream_started(self, request_id: str) -> bool:
        """True when a `chat.chunk` record under `request_id` is kept."""
        entry = self._entries.get(request_id)
        return entry is not None and entry[_STREAM_STARTED] is not None

    def add(self, event: EnvelopeFields, usage: EnvelopeFields | None = None) -> None:
        """Index one event written to a reply partition (encoded here), with the usage
        event its record carries. Events other than chunks and terminal events are
        ignored, and so is a chunk when one of its request is kept already."""
        if isinstance(event, ChatChunk):
            if not self.stream_started(event.request_id):
                self.add_record(event.request_id, _CHUNK, encode_event(event))
        elif isinstance(event, ChatCompleted | ChatFailed):
            self.add_record(
                event.request_id,
                event.type.encode(),
                encode_event(event),
                encode_event(usage) if usage is not None else None,
            )

    def add_record(
        self,
        request_id: str,
        event_type: bytes,
        raw: bytes,
        usage: bytes | None = None,
        *,
        partition: int | None = None,
        offset: int = -1,
    ) -> None:
        """Index one record of a reply partition as it is on the topic: the request id
        (its key), the event type (its `type` header), its value and its `USAGE_HEADER`,
        and where it was read (`partition`, `offset`). Records of other types are
        ignored; of a request id's chunk records and terminal records, the first
        `MAX_CANDIDATES` of each are kept (whose they are is judged by `get`)."""
        is_chunk = event_type == _CHUNK
        if not is_chunk and event_type not in _TERMINAL:
            return
        entry = self._entries.get(request_id)
        chunks: tuple[bytes, ...]
        replies: tuple[bytes, ...]
        usages: tuple[bytes | None, ...]
        if entry is None:
            chunks = replies = usages = ()
            seen_at, offsets = time.monotonic(), {}
        else:
            self.bytes -= _entry_size(entry)
            chunks, replies, usages = _entry_records(entry)
            seen_at = entry[_SEEN_AT]
            offsets = _entry_offsets(entry)
        if is_chunk:
            if len(chunks) < MAX_CANDIDATES:
                chunks = (*chunks, raw)
        elif len(replies) < MAX_CANDIDATES:
            replies, usages = (*replies, raw), (*usages, usage)
        if partition is not None:
            offsets[partition] = max(offsets.get(partition, -1), offset)
        entry = (
            _field(chunks),
            _field(replies),
            _field(usages),
            seen_at,
            *chain.from_iterable(offsets.items()),
        )
        self._entries[request_id] = entry
        self.bytes += _entry_size(entry)
        self._prune()

    def get(self, request_id: str, tenant: str) -> Recorded | None:
        """What is recorded for the request `request_id` of `tenant`, decoded: its first
        chunk record, and its first terminal record with the usage event it carries, of
        those kept whose events name that tenant and request id (a record another
        producer wrote under the key is passed over, and logged). None: nothing kept."""
        entry = self._entries.get(request_id)
        if entry is None:
            return None

        def owned(raw: bytes | None) -> Any:
            if raw is None:
                return None
            try:
                event = decode_event(raw)
            except EventDecodeError as exc:
                # A record under the request's key that is no event (a bad producer):
                # as if it were not there, never a reason to fail the request.
                log.warning("reply log skipped an undecodable record", error=str(exc)[:300])
                return None
            if _owned(event, request_id, tenant):
                return event
            log.warning(
                "reply log skipped a record of another request under its key",
                request_id=request_id,
                event_type=event.type,
                event_request_id=event.request_id[:64],
            )
            return None

        chunks, replies, usages = _entry_records(entry)
        stream_started = next(filter(None, map(owned, chunks)), None)
        reply = usage = None
        for raw_reply, raw_usage in zip(replies, usages, strict=True):
            reply = owned(raw_reply)
            if reply is not None:
                # A reply carrying a usage event that is not its own is the request's
                # outcome all the same, but not one that can be published again as it is.
                usage = owned(raw_usage)
                break
        if stream_started is None and reply is None:
            return None
        return Recorded(
            stream_started=stream_started, reply=reply, usage=usage, seen_at=entry[_SEEN_AT]
        )

    def discard(self, request_id: str) -> None:
        """Forget what is kept of `request_id` (nothing if nothing is)."""
        dropped = self._entries.pop(request_id, None)
        if dropped is not None:
            self._dropped(dropped)

    def _dropped(self, dropped: _Entry) -> None:
        self.bytes -= _entry_size(dropped)
        if self._on_evict is not None:
            for partition, offset in _entry_offsets(dropped).items():
                self._on_evict(partition, offset)

    def _prune(self) -> None:
        cutoff = time.monotonic() - self.lookback_s
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest[_SEEN_AT] >= cutoff and self.bytes <= self.max_bytes:
                return
            _, dropped = self._entries.popitem(last=False)
            self._dropped(dropped)


class OutcomeLog(Protocol):
    """Where what a request's client may have seen is found before the request is run."""

    async def start(self) -> None:
        """Get ready to read (in the background: the broker may not be reachable)."""
        ...

    async def stop(self) -> None:
        """Stop reading and release the log's connections."""
        ...

    def healthy(self) -> bool:
        """False while the log cannot be read (readiness)."""
        ...

    def written(self, event: EnvelopeFields, usage: EnvelopeFields | None = None) -> None:
        """Told of each event this process is about to write to a reply partition, with
        the usage event a terminal event carries. A log that reads the partitions itself
        ignores it."""
        ...

    async def lookup(self, request: ChatRequested) -> Recorded | None:
        """What was recorded for `request` (None: nothing). Raises BusUnavailableError
        when the log cannot be read up to date (the handler is then retried like during
        any outage)."""
        ...

    def settled(self, request_id: str) -> None:
        """Told when no event of the request `request_id` is being handled here any more
        and the last one's handler returned (its outcome is on the bus, which will not
        deliver that event again): a log of what this process wrote may forget it. A log
        that reads the partitions itself ignores it (another replica may yet be handed
        the request)."""
        ...


class LocalOutcomeLog(OutcomeLog):
    """What this process wrote to reply partitions, as it told it (`written`): enough where
    one process handles every request (the in-memory bus)."""

    def __init__(self, lookback_s: float, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.index = OutcomeIndex(lookback_s, max_bytes)

    @override
    async def start(self) -> None:
        return None

    @override
    async def stop(self) -> None:
        return None

    @override
    def healthy(self) -> bool:
        return True

    @override
    def written(self, event: EnvelopeFields, usage: EnvelopeFields | None = None) -> None:
        self.index.add(event, usage)

    @override
    async def lookup(self, request: ChatRequested) -> Recorded | None:
        return self.index.get(request.request_id, request.tenant)

    @override
    def settled(self, request_id: str) -> None:
        # The in-memory bus delivers an event again only while its handler fails (a
        # retry) or after a restart (when this memory is gone): once handled, nothing here
        # can ask for the request again, so its records go now rather than fill the
        # index (embedded mode's peak memory).
        self.index.discard(request_id)


@dataclass
class _Scanned:
    """What is kept of one reply partition: every record from offset `start` up to
    `position` (the next offset to read) is in the index."""

    start: int
    position: int


def _merged(first: Recorded | None, second: Recorded | None) -> Recorded | None:
    """What either holds (the records of one request read at two times)."""
    if first is None or second is None:
        return first or second
    return Recorded(
        stream_started=first.stream_started or second.stream_started,
        reply=first.reply or second.reply,
        usage=first.usage or second.usage,
        seen_at=min(first.seen_at, second.seen_at),
    )


class KafkaReplyLog(OutcomeLog):
    """The replies topic read back from Kafka, one partition at a time, by one consumer of
    its own (no group, nothing assigned between lookups, so it fetches nothing while
    requests simply flow).

    `lookup(request)` reads the request's reply partition from `clock_skew_s` before the
    request's `time` (records carry their writer's clock; `lookback_s` back at most) up to
    the end offset the broker gives at the start of the lookup; when `read_timeout_s` pass
    without the read moving on (the broker does not answer, or the lookup waits that long
    for its turn), the log is unavailable: BusUnavailableError. A long read that keeps
    moving is never cut short, so a lookup over more records than the index keeps ends
    (the end offset is fixed when it starts).
    What was read is kept (`OutcomeIndex`) and so is, per partition, the range of offsets
    all of whose records are still kept: a later lookup reads only what is missing from
    its own range (what was written since, what lies before, or all of it when the range
    kept is older than the request), so the redeliveries of one rebalance read each
    partition about once. The request's own records found in a read are used even if the
    index had to drop them. Lookups take turns."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partition_count: Callable[[str], Awaitable[int]],
        *,
        lookback_s: float,
        max_bytes: int = 64 * 1024 * 1024,
        client_id: str = "switchyard-inference-replies",
        max_message_bytes: int = 1_048_576,
        read_timeout_s: float = 10.0,
        clock_skew_s: float = 10.0,
        consumer_factory: Callable[[], Any] | None = None,
    ) -> None:
        """`consumer_factory`: makes the (not yet started) consumer; by default an
        AIOKafkaConsumer of `bootstrap_servers` with no group."""
        self.bootstrap_servers = bootstrap_servers
        self._consumer_factory = consumer_factory or self._kafka_consumer
        self.topic = topic
        self._partition_count = partition_count
        self.client_id = client_id
        self.max_message_bytes = max_message_bytes
        self.read_timeout_s = read_timeout_s
        self.clock_skew_s = clock_skew_s
        self.index = OutcomeIndex(lookback_s, max_bytes, on_evict=self._evicted)
        self._consumer: Any = None  # an AIOKafkaConsumer while open
        self._scanned: dict[int, _Scanned] = {}
        self._turn = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._broken = asyncio.Event()

    @override
    async def start(self) -> None:
        """Connect in the background (Kafka may not be reachable yet)."""
        self._task = asyncio.create_task(self._run(), name="reply-log")

    @override
    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        await self._close()

    @override
    def healthy(self) -> bool:
        return self._ready.is_set()

    @override
    def written(self, event: EnvelopeFields, usage: EnvelopeFields | None = None) -> None:
        return None  # read back from the partition itself

    @override
    def settled(self, request_id: str) -> None:
        return None  # a rebalance may hand the request to another replica, which reads it

    def _evicted(self, partition: int, offset: int) -> None:
        scanned = self._scanned.get(partition)
        if scanned is not None and offset >= scanned.start:
            # Past the position only while the batch holding it is being indexed.
            scanned.start = offset + 1

    async def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._ready.clear()
        self._scanned.clear()  # a new consumer reads again from the start of the window
        if consumer is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await consumer.stop()

    def _kafka_consumer(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(
            **client_options(),
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.max_message_bytes,
        )

    async def _open(self) -> None:
        consumer = self._consumer_factory()
        try:
            await consumer.start()
        except BaseException:
            # A consumer that did not start still holds its client and connections: closed
            # here, or each failed attempt while the broker is away leaves one behind.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await consumer.stop()
            raise
        self._consumer = consumer
        self._ready.set()

    async def _run(self) -> None:
        """Keep a consumer open: open it, and open another when a lookup found it broken."""
        attempt = 0
        while True:
            try:
                await self._open()
                attempt = 0
                await self._broken.wait()
                self._broken.clear()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reopened: the broker may be back later
                attempt += 1
                if attempt == 1:
                    log.warning("replies topic unreadable; retrying", error=repr(exc))
                await asyncio.sleep(min(5.0, 0.2 * 2 ** min(attempt, 5)))
            await self._close()

    async def partition_of(self, request: ChatRequested) -> int:
        """The reply partition of `request`: its gateway replica's, or, when nobody waits,
        the one the producer's default partitioner gives its request id among the topic's
        partitions now (so, after partitions were added, not always the one it had).
        Raises BusUnavailableError when the partition count cannot be read."""
        if request.data.reply_to is not None:
            return request.data.reply_to.partition
        from aiokafka.partitioner import DefaultPartitioner

        count = await self._partition_count(self.topic)
        partitions = list(range(count))
        return int(DefaultPartitioner()(request.request_id.encode(), partitions, partitions))

    @override
    async def lookup(self, request: ChatRequested) -> Recorded | None:
        now = time.time()
        since = max(request.time.timestamp() - self.clock_skew_s, now - self.index.lookback_s)
        consumer = None
        try:
            # A deadline the read pushes back whenever its position moves on: a long read
            # that keeps going finishes however long it takes, a read that stops does not.
            async with asyncio.timeout(self.read_timeout_s) as deadline:
                await self._ready.wait()
                partition = await self.partition_of(request)
                async with self._turn:
                    consumer = self._consumer
                    found = await self._read(
                        consumer, partition, int(since * 1000), request, deadline
                    )
        except TimeoutError as exc:
            raise BusUnavailableError("the replies topic could not be read up to date") from exc
        except BusUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - Kafka errors: this consumer is replaced
            if consumer is not None and consumer is self._consumer:
                self._broken.set()
            raise BusUnavailableError(f"the replies topic cannot be read: {exc!r}") from exc
        return _merged(found, self.index.get(request.request_id, request.tenant))

    async def _read(
        self,
        consumer: Any,
        partition: int,
        since_ms: int,
        request: ChatRequested,
        deadline: asyncio.Timeout,
    ) -> Recorded | None:
        """Read what is missing of `partition` between the first record at or after
        `since_ms` and its end offset now, indexing every record, `deadline` moved to
        `read_timeout_s` from each poll that moved the position on; returns the records of
        `request` met on the way (None: none)."""
        from aiokafka import TopicPartition

        assert consumer is not None
        tp = TopicPartition(self.topic, partition)
        end = (await consumer.end_offsets([tp]))[tp]
        found = (await consumer.offsets_for_times({tp: since_ms})).get(tp)
        start = found.offset if found is not None else end
        own = OutcomeIndex(float("inf"), max_bytes=1 << 62)  # the request's own: all kept
        key = request.request_id.encode()
        scanned = self._scanned.get(partition)
        if scanned is None or start > scanned.position or end < scanned.position:
            # Nothing kept of this partition, only what is older than the request, or a
            # range the partition no longer has (the topic was recreated or truncated).
            scanned = self._scanned[partition] = _Scanned(start, start)
            await self._read_range(consumer, tp, start, end, key, own, scanned, deadline)
        else:
            if start < scanned.start:  # what lies before the range kept
                kept_from, scanned.start = scanned.start, start
                lower = _Scanned(start, start)
                try:
                    await self._read_range(
                        consumer, tp, start, kept_from, key, own, lower, deadline
                    )
                except BaseException:
                    # Keep what the lower read got (evictions meanwhile moved
                    # `scanned.start`), so that a retry goes on from there.
                    if scanned.start < lower.position:
                        self._scanned[partition] = _Scanned(scanned.start, lower.position)
                    else:
                        del self._scanned[partition]
                    raise
            await self._read_range(consumer, tp, scanned.position, end, key, own, scanned, deadline)
        return own.get(request.request_id, request.tenant)

    async def _read_range(
        self,
        consumer: Any,
        tp: Any,
        begin: int,
        stop: int,
        key: bytes,
        own: OutcomeIndex,
        progress: _Scanned,
        deadline: asyncio.Timeout,
    ) -> None:
        """Read `tp` from offset `begin` until the consumer's position reaches `stop`,
        advancing `progress.position` and pushing `deadline` back whenever it advances;
        records keyed `key` also go to `own`."""
        if begin >= stop:
            return
        from switchyard.common.bus.kafka import RecordReader, skipping_unreadable

        loop = asyncio.get_running_loop()
        # A record the Kafka client cannot parse (a header key that is not UTF-8) is no
        # outcome of ours: stepped over, never the end of every lookup on its partition.
        reader = RecordReader(
            skipping_unreadable(log, "reply records the Kafka client cannot read were skipped")
        )
        consumer.assign([tp])
        consumer.seek(tp, begin)
        try:
            while progress.position < stop:
                batches = await reader.getmany(consumer, tp, timeout_ms=200)
                for record in batches.get(tp, ()):
                    self._index(record, tp.partition, key, own)
                position = await consumer.position(tp)
                if position > progress.position:
                    progress.position = position
                    deadline.reschedule(loop.time() + self.read_timeout_s)
        finally:
            consumer.unsubscribe()  # fetch nothing until the next lookup

    def _index(self, record: Any, partition: int, key: bytes, own: OutcomeIndex) -> None:
        """Index one record (an aiokafka ConsumerRecord); nothing is decoded here: every
        event's record names its type in a header."""
        if record.key is None or record.value is None:
            return
        headers = dict(record.headers or ())
        event_type = headers.get("type")
        if event_type is None:
            return
        request_id = record.key.decode(errors="replace")
        usage = headers.get(USAGE_HEADER)
        self.index.add_record(
            request_id, event_type, record.value, usage, partition=partition, offset=record.offset
        )
        if record.key == key:
            own.add_record(request_id, event_type, record.value, usage)
