"""`KafkaReplyLog`'s reading of reply partitions, on a fake consumer (no broker): what it
keeps of a partition stays true when the partition shrinks (a recreated topic), when a
read is interrupted, when the index drops records, and for a request whose records sit in
two partitions; a read that keeps getting records outlasts the read timeout, one that
stops does not."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections import namedtuple
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from switchyard.common.bus import BusUnavailableError
from switchyard.common.events import StreamEvent, encode_event
from switchyard.inference.publishing import chunk_records
from switchyard.inference.redelivery import KafkaReplyLog, OutcomeIndex
from switchyard.inference.testing import chat_request

TOPIC = "t.replies"
Record = namedtuple("Record", "key value headers offset")
OffsetAndTimestamp = namedtuple("OffsetAndTimestamp", "offset timestamp")


def chunk_of(request, pad: int = 0) -> bytes:
    events = [StreamEvent(data={"choices": [], "pad": "x" * pad})]
    record = chunk_records(request.request_id, request.id, request.tenant, "run")(0, events)
    return encode_event(record)


class FakeConsumer:
    """A consumer of one topic whose partitions are lists of records (every record is as
    recent as the lookup: `offsets_for_times` answers the first offset); `getmany` hands
    out `per_poll` records at a time, and `stall_at`, if set, is an offset it never gets
    past (a read that cannot finish in time)."""

    def __init__(self, per_poll: int = 10) -> None:
        self.partitions: dict[int, list[Record]] = {0: [], 1: []}
        self.per_poll = per_poll
        self.stall_at: int | None = None
        self.assigned: list[TopicPartition] = []
        self.positions: dict[TopicPartition, int] = {}
        self.read: list[int] = []  # offsets handed out, in order

    def append(self, partition: int, key: str, value: bytes, kind: bytes = b"chat.chunk") -> int:
        records = self.partitions[partition]
        records.append(Record(key.encode(), value, [("type", kind)], len(records)))
        return len(records) - 1

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def end_offsets(self, tps):
        return {tp: len(self.partitions[tp.partition]) for tp in tps}

    async def offsets_for_times(self, wanted):
        return {
            tp: OffsetAndTimestamp(0, 0) if self.partitions[tp.partition] else None for tp in wanted
        }

    def assign(self, tps) -> None:
        self.assigned = list(tps)

    def unsubscribe(self) -> None:
        self.assigned = []

    def seek(self, tp, offset: int) -> None:
        self.positions[tp] = offset

    async def position(self, tp) -> int:
        return self.positions[tp]

    async def getmany(self, tp, timeout_ms: int, max_records: int | None = None):
        records = self.partitions[tp.partition]
        at = self.positions[tp]
        if self.stall_at is not None and at >= self.stall_at:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        batch = records[at : at + self.per_poll]
        self.positions[tp] = at + len(batch)
        self.read += [r.offset for r in batch]
        return {tp: batch}


@contextlib.asynccontextmanager
async def running_log(consumer: FakeConsumer, **options: Any) -> AsyncIterator[KafkaReplyLog]:
    """A reply log reading through `consumer`, started, and stopped after use."""

    async def partition_count(topic: str) -> int:
        return 2

    log = KafkaReplyLog(
        "unused:9092",
        TOPIC,
        partition_count,
        lookback_s=600,
        consumer_factory=lambda: consumer,
        **options,
    )
    await log.start()
    try:
        yield log
    finally:
        await log.stop()


def on_partition(request, partition: int):
    from switchyard.common.events import ReplyAddress

    address = ReplyAddress(partition=partition, instance_id="gw-1")
    return request.model_copy(
        update={"data": request.data.model_copy(update={"reply_to": address})}
    )


async def test_a_partition_shorter_than_what_was_read_is_read_again_from_its_start() -> None:
    consumer = FakeConsumer()
    for _ in range(60):
        other = chat_request(model="m")
        consumer.append(0, other.request_id, chunk_of(other))
    async with running_log(consumer) as log:
        assert await log.lookup(on_partition(chat_request(model="m"), 0)) is None  # [0, 60)
        consumer.partitions[0] = []  # the topic was deleted and created again
        target = on_partition(chat_request(model="m", stream=True), 0)
        consumer.append(0, target.request_id, chunk_of(target))

        recorded = await log.lookup(target)

        assert recorded is not None and recorded.stream_started is not None


async def test_after_an_interrupted_read_of_what_lies_before_the_request_is_found() -> None:
    consumer = FakeConsumer(per_poll=5)
    early = on_partition(chat_request(model="m", stream=True), 0)
    consumer.append(0, early.request_id, chunk_of(early))
    for _ in range(49):
        other = chat_request(model="m")
        consumer.append(0, other.request_id, chunk_of(other, pad=2_000))
    # A small index: the first read keeps only its last records (the range moves up).
    async with running_log(consumer, read_timeout_s=0.5) as log:
        log.index.max_bytes = 20_000
        assert await log.lookup(on_partition(chat_request(model="m"), 0)) is None
        consumer.read.clear()
        consumer.stall_at = 20  # the read of what lies before stops there, in time
        with pytest.raises(BusUnavailableError):
            await log.lookup(early)
        consumer.stall_at = None
        consumer.read.clear()

        recorded = await log.lookup(early)

        assert recorded is not None and recorded.stream_started is not None
        assert recorded.stream_started.request_id == early.request_id


async def test_a_read_that_keeps_going_is_not_cut_short_by_the_read_timeout() -> None:
    consumer = SlowConsumer(per_poll=1)
    for _ in range(30):
        other = chat_request(model="m")
        consumer.append(0, other.request_id, chunk_of(other))
    target = on_partition(chat_request(model="m", stream=True), 0)
    consumer.append(0, target.request_id, chunk_of(target))
    # 31 polls of 20 ms: twice the read timeout, each poll well within it.
    async with running_log(consumer, read_timeout_s=0.3) as log:
        recorded = await log.lookup(target)

        assert recorded is not None and recorded.stream_started is not None
        assert consumer.read == list(range(31))


class SlowConsumer(FakeConsumer):
    """A consumer whose every poll takes 20 ms."""

    async def getmany(self, tp, timeout_ms: int, max_records: int | None = None):
        await asyncio.sleep(0.02)
        return await super().getmany(tp, timeout_ms)


def test_an_entry_read_from_two_partitions_tells_each_partition_of_its_eviction() -> None:
    evicted: list[tuple[int, int]] = []
    index = OutcomeIndex(600, max_bytes=1, on_evict=lambda p, o: evicted.append((p, o)))
    request = chat_request(model="m", stream=True)
    index.add_record(request.request_id, b"chat.chunk", chunk_of(request), partition=3, offset=7)
    # Dropped at once (1 byte budget), re-added from another partition, dropped again.
    index.add_record(request.request_id, b"chat.chunk", chunk_of(request), partition=5, offset=2)
    assert evicted == [(3, 7), (5, 2)]

    both = OutcomeIndex(600, on_evict=lambda p, o: evicted.append((p, o)))
    both.add_record("r", b"chat.chunk", b"{}", partition=3, offset=7)
    both.add_record("r", b"chat.completed", b"{}", partition=5, offset=2)
    evicted.clear()
    both.max_bytes = 0
    both.add_record("s", b"chat.chunk", b"{}", partition=1, offset=0)
    assert (3, 7) in evicted and (5, 2) in evicted


def test_a_record_under_a_requests_key_that_is_no_event_is_as_if_absent() -> None:
    # Written by a bad producer: a redelivered request must not fail on it.
    index = OutcomeIndex(600)
    index.add_record("r", b"chat.completed", b"not an event", b"\xff")
    v1_poison = b'{"type": "chat.requested", "schema_version": 1, "data": {"api": ["x"]}}'
    index.add_record("s", b"chat.chunk", v1_poison)
    assert index.get("r", "acme") is None
    assert index.get("s", "acme") is None


def test_kept_records_are_no_work_for_the_garbage_collector() -> None:
    # A full index holds tens of thousands of requests for up to the lookback: objects
    # the collector tracks would make every full collection of the replica walk them all.
    index = OutcomeIndex(600)
    for n in range(100):
        index.add_record(f"r{n}", b"chat.chunk", b"{}", partition=n % 3, offset=n)
        index.add_record(f"r{n}", b"chat.completed", b"{}", b"{}", partition=n % 3, offset=n + 1)
    index.add_record("told", b"chat.completed", b"{}", b"{}")  # written by this process
    gc.collect(0)
    gc.collect(1)
    entries = list(index._entries.values())
    assert len(entries) == 101
    assert not [entry for entry in entries if gc.is_tracked(entry)]
    assert index.get("r7", "acme") is None  # b"{}" is no event
    assert index.stream_started("r7") and not index.stream_started("told")


async def test_a_consumer_that_failed_to_start_is_stopped_before_the_next_is_made() -> None:
    """While the broker is away each attempt's consumer fails to start; each is stopped (it
    holds a client and connections), not left to the garbage collector's warning."""

    class Unstartable(FakeConsumer):
        made: list[Unstartable] = []
        second = asyncio.Event()

        def __init__(self) -> None:
            super().__init__()
            self.stopped = False
            Unstartable.made.append(self)
            if len(Unstartable.made) == 2:
                Unstartable.second.set()

        async def start(self) -> None:
            raise OSError("broker unreachable")

        async def stop(self) -> None:
            self.stopped = True

    log = KafkaReplyLog(
        "unused:9092",
        TOPIC,
        lambda topic: asyncio.sleep(0, 2),
        lookback_s=600,
        consumer_factory=Unstartable,
    )
    await log.start()
    try:
        async with asyncio.timeout(10):
            await Unstartable.second.wait()
    finally:
        await log.stop()

    assert all(consumer.stopped for consumer in Unstartable.made)
