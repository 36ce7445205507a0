"""The Kafka bus on a real broker: round trips, redelivery after a crash, dead letters,
listeners, a broker that cannot be reached, and recovery from what aiokafka does not
recover from by itself (a producer with a sequence gap, a consumer whose loop failed)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from switchyard.common.bus import (
    BusUnavailableError,
    RetryPolicy,
    delivery_may_repeat,
)
from switchyard.common.bus.kafka import KafkaBus
from switchyard.common.events import encode_event
from switchyard.common.testing.bus_contract import (
    carried_events_are_handed_over_first,
    handled_events_are_let_go,
    large_events_are_decoded_off_the_loop,
    numbered_request,
    skipped_types_are_passed_over_unread,
)
from switchyard.common.testing.infra import async_wait_until
from switchyard.common.testing.kafka_records import produce_with_unreadable

pytestmark = pytest.mark.integration


request = numbered_request


async def started_bus(servers, topics) -> KafkaBus:
    bus = KafkaBus(servers, deadletter_topic=topics.deadletter)
    await bus.start()
    return bus


async def read_all(servers: str, topic: str, expected: int, timeout: float = 20) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for items in batch.values():
                records.extend(items)
    finally:
        await consumer.stop()
    return records


async def test_publish_and_consume_round_trip(kafka_servers, kafka_topics):
    bus = await started_bus(kafka_servers, kafka_topics)
    received = []

    async def handler(event):
        received.append(event)

    await bus.subscribe([kafka_topics.requests_interactive], "round-trip", handler, concurrency=4)
    sent = [request(n) for n in range(10)]
    for event in sent:
        await bus.publish(kafka_topics.requests_interactive, event)
    await async_wait_until(lambda: asyncio.sleep(0, len(received) == 10), timeout=30)
    assert sorted(received, key=lambda e: e.request_id) == sorted(sent, key=lambda e: e.request_id)
    await bus.stop()


async def test_events_carry_type_and_request_id_headers(kafka_servers, kafka_topics):
    bus = await started_bus(kafka_servers, kafka_topics)
    await bus.publish(kafka_topics.usage, request(1), headers={"usage": b'{"n": 1}'})
    [record] = await read_all(kafka_servers, kafka_topics.usage, 1)
    headers = dict(record.headers)
    assert headers["usage"] == b'{"n": 1}'  # the publisher's own, in the same record
    assert headers["type"] == b"chat.requested"
    assert headers["request_id"] == b"req-1"
    assert headers["schema_version"] == b"2"
    assert record.key == b"req-1"
    await bus.stop()


CRASHING_CONSUMER = textwrap.dedent("""
    import asyncio, sys
    from switchyard.common.bus.kafka import KafkaBus

    async def main(servers, topic, group):
        bus = KafkaBus(servers)
        await bus.start()

        async def handler(event):
            print("HANDLING", event.request_id, flush=True)
            await asyncio.sleep(3600)  # killed before it finishes, so before any commit

        await bus.subscribe([topic], group, handler)
        await asyncio.sleep(3600)

    asyncio.run(main(*sys.argv[1:]))
""")


async def test_consumer_killed_before_commit_gets_the_event_redelivered(
    kafka_servers, kafka_topics
):
    topic, group = kafka_topics.requests_interactive, "crash-test"
    bus = await started_bus(kafka_servers, kafka_topics)
    await bus.publish(topic, request(42))

    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_CONSUMER, kafka_servers, topic, group],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:

        async def handling_line() -> str:
            while True:  # skip the child's log lines
                line = await asyncio.to_thread(process.stdout.readline)
                if not line or line.startswith("HANDLING"):
                    return line.strip()

        assert await asyncio.wait_for(handling_line(), timeout=60) == "HANDLING req-42"
    finally:
        process.kill()  # SIGKILL: no shutdown hooks, no commit
        process.wait()

    redelivered = []
    may_repeat = {}

    async def handler(event):
        redelivered.append(event.request_id)
        may_repeat[event.request_id] = delivery_may_repeat.get()

    # The broker hands the partition over once the dead member's session times out.
    await bus.subscribe([topic], group, handler)
    await async_wait_until(
        lambda: asyncio.sleep(0, redelivered), timeout=60, message="redelivery after the crash"
    )
    assert redelivered == ["req-42"]
    # The heir is told which event an earlier owner may have handled, and which is new.
    await bus.publish(topic, request(43))
    await async_wait_until(
        lambda: asyncio.sleep(0, "req-43" in may_repeat), timeout=30, message="a new event"
    )
    assert may_repeat == {"req-42": True, "req-43": False}
    await bus.stop()


async def test_a_replayed_dead_letter_is_handled_as_a_delivery_that_may_repeat(
    kafka_servers, kafka_topics
):
    """A record `switchyard deadletter replay` wrote (it carries `deadletter.replayed_from`)
    may have been handled before: inference looks it up like a redelivery."""
    from switchyard.common.bus.base import serialise
    from switchyard.common.bus.kafka import REPLAYED_FROM_HEADER

    topic, group = kafka_topics.requests_interactive, "replay-test"
    bus = await started_bus(kafka_servers, kafka_topics)
    may_repeat = {}

    async def handler(event):
        may_repeat[event.request_id] = delivery_may_repeat.get()

    await bus.subscribe([topic], group, handler)
    await bus.publish(topic, request(1))
    await async_wait_until(lambda: asyncio.sleep(0, "req-1" in may_repeat), timeout=30)
    replayed = request(2)
    await bus.publish_raw(
        topic,
        serialise(replayed),
        key=b"req-2",
        partition=None,
        headers=[("type", b"chat.requested"), (REPLAYED_FROM_HEADER, b"0:3")],
    )
    await async_wait_until(lambda: asyncio.sleep(0, "req-2" in may_repeat), timeout=30)
    await bus.publish(topic, request(3))
    await async_wait_until(lambda: asyncio.sleep(0, "req-3" in may_repeat), timeout=30)
    # req-1 only shows the partition is owned (it may predate the assignment).
    assert (may_repeat["req-2"], may_repeat["req-3"]) == (True, False)
    await bus.stop()


async def test_committed_events_are_not_redelivered(kafka_servers, kafka_topics):
    topic, group = kafka_topics.requests_interactive, "commit-test"
    bus = await started_bus(kafka_servers, kafka_topics)
    first, second = [], []

    async def into(target):
        async def handler(event):
            target.append(event.request_id)

        return handler

    subscription = await bus.subscribe([topic], group, await into(first))
    await bus.publish(topic, request(1))
    await async_wait_until(lambda: asyncio.sleep(0, first), timeout=30)
    await subscription.stop()  # graceful: commits what was handled

    await bus.subscribe([topic], group, await into(second))
    await bus.publish(topic, request(2))
    await async_wait_until(lambda: asyncio.sleep(0, second), timeout=30)
    await asyncio.sleep(1)
    assert second == ["req-2"]
    await bus.stop()


# A version 1 event whose `api` is a list: its upgrade once raised TypeError, which no
# consumer caught (each crashed on it, again after every restart).
V1_POISON = (
    b'{"id": "p1", "type": "chat.requested", "source": "gateway", "time": '
    b'"2026-12-01T00:00:00Z", "tenant": "t", "request_id": "req-p", "schema_version": 1, '
    b'"data": {"api": ["openai"], "model": "m"}}'
)


async def test_a_listener_skips_what_does_not_decode_counts_it_and_goes_on(
    kafka_servers, kafka_topics
):
    from switchyard.common.bus import metrics

    topic = kafka_topics.replies
    bus = await started_bus(kafka_servers, kafka_topics)
    handled = []

    async def handler(event):
        handled.append(event.request_id)

    before = metrics.EVENTS_SKIPPED.labels(topic, "undecodable")._value.get()
    await bus.listen(topic, handler, partitions=[0])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_servers)
    await producer.start()
    await asyncio.sleep(1)  # the listener starts at the end of the partition
    for value in (V1_POISON, b"{this is not json", encode_event(request(4))):
        await producer.send_and_wait(topic, value, partition=0)
    await producer.stop()
    await async_wait_until(lambda: asyncio.sleep(0, handled), timeout=30)
    assert handled == ["req-4"]
    assert metrics.EVENTS_SKIPPED.labels(topic, "undecodable")._value.get() == before + 2
    await bus.stop()


async def test_malformed_and_unknown_version_events_are_dead_lettered_and_skipped(
    kafka_servers, kafka_topics
):
    topic = kafka_topics.requests_interactive
    bus = await started_bus(kafka_servers, kafka_topics)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_servers)
    await producer.start()
    future_version = encode_event(request(2)).replace(b'"schema_version":2', b'"schema_version":99')
    # All on one partition, so the good event is behind the bad ones.
    await producer.send_and_wait(topic, b"{this is not json", key=b"k", partition=0)
    await producer.send_and_wait(topic, future_version, key=b"k", partition=0)
    await producer.send_and_wait(topic, V1_POISON, key=b"k", partition=0)
    await producer.send_and_wait(topic, encode_event(request(3)), key=b"k", partition=0)
    await producer.stop()

    handled = []

    async def handler(event):
        handled.append(event.request_id)

    await bus.subscribe([topic], "dlq-test", handler)
    await async_wait_until(lambda: asyncio.sleep(0, handled), timeout=30)
    assert handled == ["req-3"]

    dead = await read_all(kafka_servers, kafka_topics.deadletter, 3)
    assert [record.value for record in dead] == [b"{this is not json", future_version, V1_POISON]
    headers = dict(dead[0].headers)
    assert headers["deadletter.topic"] == topic.encode()
    assert headers["deadletter.partition"] == b"0"
    assert headers["deadletter.offset"] == b"0"
    assert headers["deadletter.group"] == b"dlq-test"
    assert b"undecodable" in headers["deadletter.reason"]
    await bus.stop()


async def test_handler_that_keeps_failing_is_dead_lettered(kafka_servers, kafka_topics):
    bus = await started_bus(kafka_servers, kafka_topics)
    attempts = []

    async def broken(event):
        attempts.append(event.request_id)
        raise RuntimeError("provider exploded")

    await bus.subscribe(
        [kafka_topics.requests_interactive],
        "failing",
        broken,
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01),
    )
    await bus.publish(kafka_topics.requests_interactive, request(7))
    [dead] = await read_all(kafka_servers, kafka_topics.deadletter, 1, timeout=30)
    assert attempts == ["req-7"] * 3
    assert b"provider exploded" in dict(dead.headers)["deadletter.reason"]
    await bus.stop()


async def test_listener_sees_only_new_events_of_its_partition(kafka_servers, kafka_topics):
    bus = await started_bus(kafka_servers, kafka_topics)
    await bus.publish(
        kafka_topics.replies, request(0), partition=1
    )  # before the listener: not seen
    seen = []

    async def on_reply(event):
        seen.append(event.request_id)

    await bus.listen(kafka_topics.replies, on_reply, partitions=[1])
    await bus.publish(kafka_topics.replies, request(1), partition=1)
    await bus.publish(kafka_topics.replies, request(2), partition=2)  # another replica's partition
    await bus.publish(kafka_topics.replies, request(3), partition=1)
    await async_wait_until(lambda: asyncio.sleep(0, len(seen) >= 2), timeout=30)
    await asyncio.sleep(0.5)
    assert seen == ["req-1", "req-3"]
    assert await bus.partition_count(kafka_topics.replies) == 3
    await bus.stop()


async def test_a_listener_with_a_key_filter_decodes_only_the_keys_it_accepts(
    kafka_servers, kafka_topics, monkeypatch
):
    import switchyard.common.bus.kafka as kafka_bus

    decoded: list[int] = []
    decode = kafka_bus._decode

    def counting(record):
        decoded.append(record.offset)
        return decode(record)

    monkeypatch.setattr(kafka_bus, "_decode", counting)
    bus = await started_bus(kafka_servers, kafka_topics)
    wanted = {"req-1"}
    seen = []

    async def on_usage(event):
        seen.append(event.request_id)

    usage = kafka_topics.usage
    await bus.listen(usage, on_usage, partitions=[0], key_filter=wanted.__contains__)
    await bus.publish(usage, request(1), key="req-1", partition=0)
    await bus.publish(usage, request(2), key="req-2", partition=0)  # not wanted
    await bus.publish(usage, request(3), partition=0)  # keyed by its request id: not wanted
    wanted.add("req-4")  # asked when the event is read, not when listening started
    await bus.publish(usage, request(4), key="req-4", partition=0)
    await async_wait_until(lambda: asyncio.sleep(0, len(seen) >= 2), timeout=30)
    await asyncio.sleep(0.5)
    assert seen == ["req-1", "req-4"]
    assert len(decoded) == 2  # the other two were skipped without decoding
    await bus.stop()


@pytest.mark.parametrize(
    ("check", "topic"),
    [
        # A listener hands over the events records carry in a header first.
        (carried_events_are_handed_over_first, "replies"),
        # A large event is decoded off the event loop.
        (large_events_are_decoded_off_the_loop, "requests_interactive"),
        # No consumer keeps an event it handled.
        (handled_events_are_let_go, "requests_interactive"),
        # A batch group passes over the types it skips, unread.
        (skipped_types_are_passed_over_unread, "replies"),
    ],
    ids=["carried-first", "large-off-loop", "let-go", "skip-types"],
)
async def test_the_bus_contract_shared_with_the_in_memory_bus(
    kafka_servers, kafka_topics, check, topic
):
    bus = await started_bus(kafka_servers, kafka_topics)
    try:
        await check(bus, getattr(kafka_topics, topic))
    finally:
        await bus.stop()


async def test_a_listener_that_accepts_a_delay_gets_every_event_within_it(
    kafka_servers, kafka_topics
):
    bus = await started_bus(kafka_servers, kafka_topics)
    arrived: list[float] = []

    async def on_usage(event):
        arrived.append(time.monotonic())

    subscription = await bus.listen(kafka_topics.usage, on_usage, partitions=[0], max_delay_ms=300)
    consumer = subscription.consumer
    assert consumer is not None
    # The broker holds each fetch for a full batch or the delay (light load: the delay).
    assert consumer._fetcher._fetch_min_bytes == 1024 * 1024
    assert consumer._fetcher._fetch_max_wait_ms == 300
    published = time.monotonic()
    for n in range(5):
        await bus.publish(kafka_topics.usage, request(n), partition=0)
    await async_wait_until(lambda: asyncio.sleep(0, len(arrived) == 5), timeout=30)
    assert max(arrived) - published < 5
    await bus.stop()


async def test_unreachable_broker_fails_publish_fast():
    bus = KafkaBus("127.0.0.1:1", publish_timeout_s=1.5)
    started = time.monotonic()
    await bus.start()
    with pytest.raises(BusUnavailableError):
        await bus.publish("anything", request(1))
    assert not await bus.healthy()
    await bus.stop()
    # start() waits at most a few seconds for a broker; publish refuses at once.
    assert time.monotonic() - started < 8


async def test_listener_without_partitions_reads_every_partition(kafka_servers, kafka_topics):
    bus = await started_bus(kafka_servers, kafka_topics)
    seen = []

    async def on_event(event):
        seen.append(event.request_id)

    await bus.listen(kafka_topics.control, on_event)
    for partition in range(3):
        await bus.publish(kafka_topics.control, request(partition), partition=partition)
    await async_wait_until(lambda: asyncio.sleep(0, len(seen) == 3), timeout=30)
    assert sorted(seen) == ["req-0", "req-1", "req-2"]
    await bus.stop()


async def test_a_producer_whose_sequence_has_a_gap_is_replaced_and_publishing_resumes(
    kafka_servers, kafka_topics
):
    # What a broker restart leaves behind: a batch given up on during the outage leaves a
    # gap in the idempotent producer's sequence, and the broker refuses every later batch
    # of that partition with OutOfOrderSequenceNumber. aiokafka never recovers from that.
    topic = kafka_topics.usage
    bus = await started_bus(kafka_servers, kafka_topics)
    await bus.publish(topic, request(1), partition=0)
    producer = bus._producer
    producer._txn_manager.increment_sequence_number(TopicPartition(topic, 0), 5)

    with pytest.raises(BusUnavailableError, match="OutOfOrderSequenceNumber"):
        await bus.publish(topic, request(2), partition=0)
    ready_while_broken = await bus.healthy()
    started = time.monotonic()

    async def publishes() -> bool:
        try:
            await bus.publish(topic, request(3), partition=0)
        except BusUnavailableError:
            return False
        return True

    await async_wait_until(publishes, timeout=10, interval=0.1, message="publishing again")
    recovered_in = time.monotonic() - started

    assert not ready_while_broken
    assert bus._producer is not producer and recovered_in < 5
    assert await bus.healthy()
    records = await read_all(kafka_servers, topic, 2)
    assert [r.key for r in records if r.partition == 0] == [b"req-1", b"req-3"]
    await bus.stop()


async def test_a_consumer_whose_loop_fails_is_replaced_and_misses_nothing(
    kafka_servers, kafka_topics
):
    bus = await started_bus(kafka_servers, kafka_topics)
    listened, consumed = [], []

    async def on_listen(event):
        listened.append(event.request_id)

    async def on_consume(event):
        consumed.append(event.request_id)

    topic = kafka_topics.control
    listener = await bus.listen(topic, on_listen, partitions=[0])
    group = await bus.subscribe([topic], "replaced", on_consume)
    await bus.publish(topic, request(1), partition=0)
    await async_wait_until(lambda: asyncio.sleep(0, len(listened) == len(consumed) == 1))

    # The replacements wait for `reopen`, so the test sees them under way (a replacement
    # can take less than one poll of `async_wait_until`).
    reopen = asyncio.Event()
    for subscription in (listener, group):

        async def broken(*args, **kwargs):
            raise RuntimeError("the consumer broke")

        async def held_open(opening=subscription._open):
            await reopen.wait()
            return await opening()

        subscription._open = held_open
        subscription.consumer.getmany = broken
    await async_wait_until(
        lambda: asyncio.sleep(0, not listener.healthy() and not group.healthy()), timeout=10
    )
    assert not await bus.healthy()
    for n in range(2, 5):  # published while the consumers are being replaced
        await bus.publish(topic, request(n), partition=0)
    reopen.set()
    await async_wait_until(
        lambda: asyncio.sleep(0, len(listened) == 4 and len(set(consumed)) == 4),
        timeout=40,
        message="every event after the replacement",
    )

    assert listened == ["req-1", "req-2", "req-3", "req-4"]  # in order, none twice
    assert sorted(set(consumed)) == ["req-1", "req-2", "req-3", "req-4"]
    await async_wait_until(bus.healthy, timeout=10, message="ready again")
    await bus.stop()


async def test_consumer_lag_counts_what_the_whole_group_has_not_handled(
    kafka_servers, kafka_topics
):
    bus = await started_bus(kafka_servers, kafka_topics)
    topics = [kafka_topics.requests_interactive, kafka_topics.replies]
    for n in range(5):
        await bus.publish(topics[n % 2], request(n))
    before = await bus.consumer_lag("lag-test", topics)
    caught_up_before = await bus.caught_up("lag-test", topics, wait_s=0.5)
    handled = []

    async def handler(events):
        handled.extend(events)

    await bus.subscribe_batch(topics, "lag-test", handler)
    await async_wait_until(lambda: asyncio.sleep(0, len(handled) == 5), timeout=30)
    marker = await bus.end_offsets(topics)
    await bus.publish(topics[0], request(6))  # after the marker: not waited for

    assert before == 5 and not caught_up_before
    assert await bus.caught_up("lag-test", topics, wait_s=10)
    assert await bus.consumer_lag("lag-test", topics, until=marker) == 0
    await bus.stop()

    unreachable = KafkaBus("127.0.0.1:1")
    with pytest.raises(BusUnavailableError):
        await unreachable.consumer_lag("lag-test", topics)
    with pytest.raises(BusUnavailableError):
        await unreachable.caught_up("lag-test", topics)
    await unreachable.stop()


async def test_a_poison_event_is_dead_lettered_with_its_coordinates_and_the_batch_goes_on(
    kafka_servers, kafka_topics
):
    bus = await started_bus(kafka_servers, kafka_topics)
    topic = kafka_topics.requests_interactive
    stored: list[str] = []

    async def record(events):
        if any(event.request_id == "req-5" for event in events):
            raise TypeError("Recursion limit reached")
        stored.extend(event.request_id for event in events)

    async def database_works() -> bool:
        return True

    for n in range(10):
        await bus.publish(topic, request(n), partition=0)
    await bus.subscribe_batch(
        [topic],
        "poison",
        record,
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01),
        healthy=database_works,
    )
    [dead] = await read_all(kafka_servers, kafka_topics.deadletter, 1, timeout=30)
    await async_wait_until(lambda: asyncio.sleep(0, len(stored) == 9), timeout=30)

    assert stored == [f"req-{n}" for n in range(10) if n != 5]
    headers = dict(dead.headers)
    assert dead.key == b"req-5"
    assert (headers["deadletter.topic"], headers["deadletter.partition"]) == (
        topic.encode(),
        b"0",
    )
    assert headers["deadletter.offset"] == b"5"
    assert b"Recursion limit" in headers["deadletter.reason"]
    await bus.stop()


async def test_a_batch_gathers_what_arrives_within_its_wait_across_topics_then_goes_on(
    kafka_servers, kafka_topics
):
    """A batch consumer pauses its partitions for the batch wait after a first event and
    then fetches what arrived meanwhile, on every topic, at once; nothing is left behind
    by the pause, and after an idle spell the next event is handed over (the partitions
    were resumed)."""
    bus = await started_bus(kafka_servers, kafka_topics)
    topics = [kafka_topics.requests_interactive, kafka_topics.usage]
    batches: list[list[str]] = []

    async def record(events) -> None:
        batches.append([event.request_id for event in events])

    await bus.subscribe_batch(topics, "gather", record, max_batch_wait_ms=600)
    await bus.publish(topics[0], request(0))  # the group is joined and reading
    await async_wait_until(lambda: asyncio.sleep(0, len(batches) == 1), timeout=60)
    await asyncio.sleep(1.0)  # the first batch's wait is over

    for n in range(1, 7):  # spread over about 100 ms, on both topics, several partitions
        await bus.publish(topics[n % 2], request(n))
        await asyncio.sleep(0.02)
    await async_wait_until(lambda: asyncio.sleep(0, sum(map(len, batches)) == 7), timeout=30)
    assert sorted(batches[1]) == [f"req-{n}" for n in range(1, 7)]  # one batch for all

    await asyncio.sleep(1.0)  # idle
    await bus.publish(topics[1], request(7))
    await async_wait_until(lambda: asyncio.sleep(0, sum(map(len, batches)) == 8), timeout=30)
    assert batches[-1] == ["req-7"]
    await bus.stop()


async def test_hurry_ends_a_batch_wait_at_once(kafka_servers, kafka_topics):
    """A reader needing what was just published (`hurry`) gets the batch being gathered
    written at once, not after its wait."""
    bus = await started_bus(kafka_servers, kafka_topics)
    topic = kafka_topics.requests_interactive
    batches: list[list[str]] = []

    async def record(events) -> None:
        batches.append([event.request_id for event in events])

    subscription = await bus.subscribe_batch([topic], "hurried", record, max_batch_wait_ms=1000)
    await bus.publish(topic, request(0))  # the group is joined and reading
    await async_wait_until(lambda: asyncio.sleep(0, len(batches) == 1), timeout=60)
    await asyncio.sleep(1.5)  # the first batch's wait is over

    # The wait is 1 s (the most history allows); the hurried batch is written well within.
    waits = []
    for n in range(1, 4):
        await bus.publish(topic, request(n))
        await asyncio.sleep(0.1)  # the batch is gathering now
        started = time.monotonic()
        subscription.hurry()
        await async_wait_until(lambda n=n: asyncio.sleep(0, len(batches) == n + 1), timeout=30)
        waits.append(time.monotonic() - started)
    await bus.stop()
    assert batches[1:] == [["req-1"], ["req-2"], ["req-3"]]
    assert min(waits) < 0.5, waits


async def test_hurry_and_wait_returns_once_everything_published_before_is_handled(
    kafka_servers, kafka_topics
):
    """History's read barrier: a reader of what was just published waits until this member
    handled every event published before the call, and the batch wait does not hold it."""
    bus = await started_bus(kafka_servers, kafka_topics)
    topics = [kafka_topics.requests_interactive, kafka_topics.usage]
    handled: list[str] = []

    async def record(events) -> None:
        await asyncio.sleep(0.05)  # a write takes a moment
        handled.extend(event.request_id for event in events)

    subscription = await bus.subscribe_batch(topics, "read-barrier", record, max_batch_wait_ms=1000)
    await bus.publish(topics[0], request(0))  # the group is joined and reading
    await async_wait_until(lambda: asyncio.sleep(0, handled == ["req-0"]), timeout=60)
    await asyncio.sleep(1.5)  # the first batch's wait is over

    waits = []
    for n in range(1, 4):
        published = [f"req-{n}-{i}" for i in range(3)]
        for i, request_id in enumerate(published):  # several partitions, both topics
            await bus.publish(
                topics[i % 2], request(0).model_copy(update={"request_id": request_id})
            )
        started = time.monotonic()
        await subscription.hurry_and_wait(10)
        waits.append(time.monotonic() - started)
        assert set(published) <= set(handled)
    await bus.stop()
    assert min(waits) < 0.9, waits  # not the batch's whole wait


def around_an_unreadable_one() -> list[bytes]:
    """req-1 and req-2, an unreadable record (req-99), then req-3."""
    return [encode_event(request(n)) for n in (1, 2, 99, 3)]


async def subscribe_noting(bus, topic: str, group: str, batch: bool) -> list[str]:
    """Subscribe `group` to `topic`, one event or (`batch`) one batch at a time; the list
    the request ids it handles are appended to."""
    handled: list[str] = []

    async def handler(event):
        handled.append(event.request_id)

    async def batch_handler(events):
        handled.extend(event.request_id for event in events)

    if batch:
        await bus.subscribe_batch([topic], group, batch_handler)
    else:
        await bus.subscribe([topic], group, handler)
    return handled


async def handled_after_a_restart(servers, topics, topic: str, group: str, batch: bool) -> list:
    """What `group`, started again on a new bus, handles of `topic` within 3 s: nothing,
    once it has committed past everything."""
    again = await started_bus(servers, topics)
    try:
        more = await subscribe_noting(again, topic, group, batch)
        await asyncio.sleep(3)
    finally:
        await again.stop()
    return more


@pytest.mark.parametrize("batch", [False, True])
async def test_a_record_the_client_cannot_parse_is_parked_and_the_partition_moves_on(
    kafka_servers, kafka_topics, batch
):
    """A header key that is not UTF-8 made aiokafka fail every poll of its partition, and
    the replaced consumer reopened on it again, for ever: now the records before it
    (fetched with it, and dropped with the error) are handled, it is parked as a stub with
    its coordinates, and the ones after it follow."""
    topic = kafka_topics.requests_interactive
    produce_with_unreadable(kafka_servers, topic, around_an_unreadable_one(), bad=2)
    group = "unreadable-batch" if batch else "unreadable"
    bus = await started_bus(kafka_servers, kafka_topics)
    try:
        handled = await subscribe_noting(bus, topic, group, batch)
        await async_wait_until(lambda: asyncio.sleep(0, len(handled) >= 3), timeout=30)
        [dead] = await read_all(kafka_servers, kafka_topics.deadletter, 1, timeout=30)
    finally:
        await bus.stop()
    assert handled == ["req-1", "req-2", "req-3"]
    headers = dict(dead.headers)
    assert (headers["deadletter.topic"], headers["deadletter.offset"]) == (topic.encode(), b"2")
    assert b"unreadable" in headers["deadletter.reason"] and dead.value == b""
    # A stub, never replayed as if it were the record.
    assert b"could not parse" in headers["deadletter.left_out"]
    # Committed past it: the group, started again, reads nothing more.
    assert await handled_after_a_restart(kafka_servers, kafka_topics, topic, group, batch) == []
    assert len(await read_all(kafka_servers, kafka_topics.deadletter, 2, timeout=3)) == 1


@pytest.mark.parametrize("batch", [False, True], ids=["group", "batch-group"])
async def test_an_unreadable_record_loses_nothing_fetched_with_it_from_other_partitions(
    kafka_servers, kafka_topics, batch
):
    """aiokafka takes each partition's fetched records in turn, moving its position, and
    lost those it had taken when a later partition's record failed to parse: a group
    starting on a backlog (a restart) skipped real events and committed past them. Every
    one is handled now, the unreadable one parked once, and a restart parks it no more."""
    topic = kafka_topics.requests_interactive
    producer = AIOKafkaProducer(bootstrap_servers=kafka_servers)
    await producer.start()
    try:
        for partition in (1, 2):  # the test topics have 3 partitions
            for n in range(10):
                number = 100 * partition + n
                await producer.send_and_wait(
                    topic, encode_event(request(number)), partition=partition
                )
    finally:
        await producer.stop()
    produce_with_unreadable(kafka_servers, topic, around_an_unreadable_one(), bad=2)
    expected = {f"req-{100 * p + n}" for p in (1, 2) for n in range(10)} | {
        "req-1",
        "req-2",
        "req-3",
    }
    group = "unreadable-others-batch" if batch else "unreadable-others"
    bus = await started_bus(kafka_servers, kafka_topics)
    try:
        handled = await subscribe_noting(bus, topic, group, batch)
        await async_wait_until(
            lambda: asyncio.sleep(0, set(handled) >= expected), timeout=30, message="every event"
        )
        await asyncio.sleep(1)  # its commit
    finally:
        await bus.stop()
    assert set(handled) == expected
    assert await handled_after_a_restart(kafka_servers, kafka_topics, topic, group, batch) == []
    dead = await read_all(kafka_servers, kafka_topics.deadletter, 2, timeout=3)
    assert len(dead) == 1  # parked once, not again by the restarted group


async def test_what_follows_an_unreadable_record_in_its_batch_is_parked_with_it(
    kafka_servers, kafka_topics
):
    """aiokafka parses a record batch from its start, so nothing after an unreadable record
    in the same batch (one producer's) can be read: each is parked by its coordinates."""
    topic = kafka_topics.requests_interactive
    values = [encode_event(request(n)) for n in (1, 98, 99, 3)]
    produce_with_unreadable(kafka_servers, topic, values, bad=1, batches=[1, 2, 1])
    bus = await started_bus(kafka_servers, kafka_topics)
    handled: list[str] = []

    async def handler(event):
        handled.append(event.request_id)

    try:
        await bus.subscribe([topic], "unreadable-run", handler)
        await async_wait_until(lambda: asyncio.sleep(0, len(handled) >= 2), timeout=30)
        dead = await read_all(kafka_servers, kafka_topics.deadletter, 2, timeout=30)
    finally:
        await bus.stop()
    assert handled == ["req-1", "req-3"]
    assert sorted(dict(record.headers)["deadletter.offset"] for record in dead) == [b"1", b"2"]


async def test_a_listener_skips_a_record_the_client_cannot_parse(kafka_servers, kafka_topics):
    from switchyard.common.bus import metrics

    topic = kafka_topics.replies
    bus = await started_bus(kafka_servers, kafka_topics)
    handled: list[str] = []

    async def handler(event):
        handled.append(event.request_id)

    before = metrics.EVENTS_SKIPPED.labels(topic, "undecodable")._value.get()
    try:
        await bus.listen(topic, handler, partitions=[0])
        await asyncio.sleep(1)  # the listener starts at the end of the partition
        produce_with_unreadable(kafka_servers, topic, around_an_unreadable_one(), bad=2)
        await async_wait_until(lambda: asyncio.sleep(0, len(handled) >= 3), timeout=30)
    finally:
        await bus.stop()
    assert handled == ["req-1", "req-2", "req-3"]
    assert metrics.EVENTS_SKIPPED.labels(topic, "undecodable")._value.get() == before + 1


async def test_a_record_too_large_to_copy_is_parked_as_a_stub(kafka_servers, kafka_topics):
    """A record just under the size limit fits its topic but its dead-letter copy, with
    the added headers, does not: the copy was retried for ever, the partition stuck."""
    bus = KafkaBus(
        kafka_servers, deadletter_topic=kafka_topics.deadletter, max_message_bytes=64 * 1024
    )
    await bus.start()
    topic = kafka_topics.requests_interactive
    producer = AIOKafkaProducer(bootstrap_servers=kafka_servers)
    await producer.start()
    await producer.send_and_wait(topic, b"x" * (64 * 1024 - 200), key=b"k", partition=0)
    await producer.send_and_wait(topic, encode_event(request(5)), key=b"k", partition=0)
    await producer.stop()
    handled: list[str] = []

    async def handler(event):
        handled.append(event.request_id)

    try:
        await bus.subscribe([topic], "too-large", handler)
        await async_wait_until(lambda: asyncio.sleep(0, handled), timeout=30)
        [dead] = await read_all(kafka_servers, kafka_topics.deadletter, 1, timeout=30)
    finally:
        await bus.stop()
    assert handled == ["req-5"]
    headers = dict(dead.headers)
    assert (dead.value, headers["deadletter.offset"]) == (b"", b"0")
    assert b"the value (65336 bytes)" in headers["deadletter.left_out"]


async def test_the_dead_letter_listing_steps_over_a_record_it_cannot_parse(
    kafka_servers, kafka_topics
):
    """One unreadable record on the dead-letter topic made `switchyard deadletter list`
    and `replay --all` fail on every run: it is left out, the others listed."""
    from switchyard.common.deadletter import read_dead_letters

    values = [b"first", b"unreadable", b"third"]
    produce_with_unreadable(kafka_servers, kafka_topics.deadletter, values, bad=1)

    letters = await read_dead_letters(
        kafka_servers, kafka_topics.deadletter, max_message_bytes=1_048_576, timeout_s=30
    )

    assert [(letter.partition, letter.offset) for letter in letters] == [(0, 0), (0, 2)]


async def test_a_poison_record_s_own_deadletter_headers_cannot_pass_for_its_letter_s(
    kafka_servers, kafka_topics
):
    """A record carrying `deadletter.replay_of` was listed as a replay marker (its letter
    vanished, and the letter it named read as replayed); one carrying
    `deadletter.left_out` as a stub. The letter keeps them apart, and a replay gives the
    record back its own headers as they were."""
    from switchyard.common.deadletter import read_dead_letters

    topic = kafka_topics.requests_interactive
    headers = [
        ("deadletter.replay_of", b"0:0"),
        ("deadletter.left_out", b"spoofed"),
        ("original.x", b"1"),
        ("type", b"chat.requested"),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"not json", key=b"k", partition=0, headers=headers)
    finally:
        await producer.stop()
    bus = await started_bus(kafka_servers, kafka_topics)
    try:
        await subscribe_noting(bus, topic, "spoofed-headers", batch=False)
        await read_all(kafka_servers, kafka_topics.deadletter, 1, timeout=30)
    finally:
        await bus.stop()

    (letter,) = await read_dead_letters(
        kafka_servers, kafka_topics.deadletter, max_message_bytes=1_048_576, timeout_s=30
    )
    assert letter.topic == topic and letter.left_out is None and letter.replays == []
    assert letter.replayable() is None
    assert letter.headers == headers


async def test_a_batch_group_passes_over_no_event_by_its_header_alone(kafka_servers, kafka_topics):
    """History skips stream chunks unread by their `type` header: a request (or usage)
    record produced with a chunk's header, or with `type` twice, was never recorded."""
    from switchyard.common.bus.base import serialise
    from switchyard.common.events import ChatChunk, ChatChunkData, StreamEvent

    topic = kafka_topics.replies
    bus = await started_bus(kafka_servers, kafka_topics)
    got: list[tuple[str, str]] = []

    async def collect(batch):
        got.extend((event.type, event.request_id) for event in batch)

    chunk = ChatChunk(
        source="inference",
        tenant="acme",
        request_id="req-9",
        data=ChatChunkData(sequence=0, run="r", events=[StreamEvent(data={"n": 1})]),
    )
    try:
        await bus.subscribe_batch(
            [topic], "header-alone", collect, max_batch=10, skip_types=[chunk.type]
        )
        for headers, event in (
            ([("type", b"chat.chunk")], request(1)),
            ([("type", b"chat.chunk"), ("type", b"chat.requested")], request(2)),
            ([("type", b"chat.chunk")], chunk),  # a real chunk: passed over
            ([("type", b"chat.requested")], request(3)),
        ):
            await bus.publish_raw(
                topic,
                serialise(event),
                key=event.request_id.encode(),
                partition=0,
                headers=headers,
            )
        await async_wait_until(lambda: asyncio.sleep(0, len(got) >= 3), timeout=30)
        await asyncio.sleep(0.5)
        assert sorted(got) == [
            ("chat.requested", "req-1"),
            ("chat.requested", "req-2"),
            ("chat.requested", "req-3"),
        ]
    finally:
        await bus.stop()
