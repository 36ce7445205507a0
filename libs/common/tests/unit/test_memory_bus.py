"""The in-memory bus behaves like the Kafka bus where a handler can tell."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry import propagate

from switchyard.common import tracing
from switchyard.common.bus import (
    BusUnavailableError,
    EventRejectedError,
    InMemoryBus,
    RetryPolicy,
    memory,
)
from switchyard.common.bus.base import handle_batch_isolating, is_outage, serialise
from switchyard.common.events import ChatRequestData, ChatRequested
from switchyard.common.testing.bus_contract import (
    carried_events_are_handed_over_first,
    handled_events_are_let_go,
    large_events_are_decoded_off_the_loop,
    skipped_types_are_passed_over_unread,
)
from switchyard.common.testing.infra import async_wait_until

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def request(n: int) -> ChatRequested:
    return ChatRequested(
        source="test",
        tenant="t",
        request_id=f"r{n}",
        data=ChatRequestData(
            api="openai.chat_completions",
            model="m",
            body={},
            user_id="u",
            deadline=datetime.now(UTC) + timedelta(seconds=5),
        ),
    )


async def test_group_members_share_the_work_and_every_group_gets_everything():
    bus = InMemoryBus()
    seen_a1, seen_a2, seen_b = [], [], []

    async def collect(into):
        async def handler(event):
            into.append(event.request_id)
            await asyncio.sleep(0)

        return handler

    await bus.subscribe(["topic"], "a", await collect(seen_a1))
    await bus.subscribe(["topic"], "a", await collect(seen_a2))
    await bus.subscribe(["topic"], "b", await collect(seen_b))
    for n in range(20):
        await bus.publish("topic", request(n))
    await async_wait_until(
        lambda: asyncio.sleep(0, len(seen_a1) + len(seen_a2) == 20 and len(seen_b) == 20)
    )
    assert sorted(seen_a1 + seen_a2) == sorted(f"r{n}" for n in range(20))
    assert seen_a1 and seen_a2
    await bus.stop()


async def test_listeners_see_events_in_order_and_filter_partitions():
    bus = InMemoryBus()
    got, other = [], []

    async def on(event):
        got.append(event.request_id)

    async def on_other(event):
        other.append(event.request_id)

    await bus.listen("replies", on, partitions=[0])
    await bus.listen("replies", on_other, partitions=[1])
    for n in range(5):
        await bus.publish("replies", request(n), partition=0)
    await async_wait_until(lambda: asyncio.sleep(0, len(got) == 5))
    assert got == [f"r{n}" for n in range(5)]
    assert other == []
    await bus.stop()


async def test_failing_handler_is_retried_then_dead_lettered():
    bus = InMemoryBus()
    attempts = []

    async def broken(event):
        attempts.append(event.request_id)
        raise RuntimeError("boom")

    await bus.subscribe(
        ["topic"], "g", broken, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.001)
    )
    await bus.publish("topic", request(1))
    await async_wait_until(lambda: asyncio.sleep(0, bus.dead_letters))
    assert attempts == ["r1", "r1", "r1"]
    assert bus.dead_letters[0].event.request_id == "r1"
    assert "boom" in bus.dead_letters[0].error
    await bus.stop()


async def test_batch_subscriber_gets_events_in_batches():
    bus = InMemoryBus()
    batches = []

    async def record(events):
        batches.append([event.request_id for event in events])

    await bus.subscribe_batch(["topic"], "history", record, max_batch=4)
    for n in range(10):
        await bus.publish("topic", request(n))
    await async_wait_until(lambda: asyncio.sleep(0, sum(map(len, batches)) == 10))
    assert [rid for batch in batches for rid in batch] == [f"r{n}" for n in range(10)]
    assert max(map(len, batches)) <= 4
    await bus.stop()


def test_retry_backoff_grows_and_is_capped():
    policy = RetryPolicy(max_attempts=None, initial_backoff_s=0.1, max_backoff_s=1.0)
    assert 0 <= policy.backoff(1) <= 0.1
    assert 0 <= policy.backoff(10) <= 1.0
    assert not policy.gives_up_after(1000)
    assert RetryPolicy(max_attempts=2).gives_up_after(2)


async def test_a_poison_event_in_a_batch_is_dead_lettered_and_the_others_are_handled():
    bus = InMemoryBus(batch_linger_s=0.05)
    stored: list[str] = []

    async def record(events):
        if any(event.request_id == "r5" for event in events):
            raise TypeError("Recursion limit reached")  # r5 can never be serialised
        stored.extend(event.request_id for event in events)

    async def database_works() -> bool:
        return True

    await bus.subscribe_batch(
        ["topic"],
        "history",
        record,
        max_batch=100,
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.001),
        healthy=database_works,
    )
    for n in range(10):
        await bus.publish("topic", request(n))
    await async_wait_until(lambda: asyncio.sleep(0, len(stored) == 9 and bus.dead_letters))

    assert stored == [f"r{n}" for n in range(10) if n != 5]  # in order, none lost
    assert [dead.event.request_id for dead in bus.dead_letters] == ["r5"]
    assert "Recursion limit" in bus.dead_letters[0].error
    await bus.stop()


async def test_a_failing_batch_during_an_outage_waits_for_the_end_of_it_and_condemns_nothing():
    bus = InMemoryBus(batch_linger_s=0.05)
    stored: list[str] = []
    database = {"up": False}
    calls = []

    async def record(events):
        calls.append(len(events))
        if not database["up"]:
            raise ConnectionError("connection refused")
        stored.extend(event.request_id for event in events)

    async def database_works() -> bool:
        return database["up"]

    await bus.subscribe_batch(
        ["topic"],
        "history",
        record,
        retry=RetryPolicy(max_attempts=1, initial_backoff_s=0.001, max_backoff_s=0.01),
        healthy=database_works,
    )
    for n in range(8):
        await bus.publish("topic", request(n))
    await async_wait_until(lambda: asyncio.sleep(0, calls))
    await asyncio.sleep(0.5)
    tried_while_down = len(calls)
    assert await bus.consumer_lag("history", ["topic"]) == 8  # nothing recorded yet
    database["up"] = True
    await async_wait_until(lambda: asyncio.sleep(0, len(stored) == 8), timeout=5)

    assert stored == [f"r{n}" for n in range(8)]
    assert not bus.dead_letters
    assert set(calls) == {8}  # an outage never splits the batch
    assert tried_while_down == 1  # nothing retried in vain while the database is down
    assert await bus.consumer_lag("history", ["topic"]) == 0
    await bus.stop()


async def test_handler_failures_while_the_bus_is_down_never_dead_letter_the_event():
    bus = InMemoryBus()
    attempts = []

    async def replies_cannot_be_published(event):
        attempts.append(event.request_id)
        if len(attempts) < 6:
            raise RuntimeError("reply not published") from BusUnavailableError("Kafka is down")

    await bus.subscribe(
        ["topic"],
        "inference",
        replies_cannot_be_published,
        retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.001, max_backoff_s=0.005),
    )
    await bus.publish("topic", request(1))
    await async_wait_until(lambda: asyncio.sleep(0, len(attempts) == 6))
    await asyncio.sleep(0.05)

    assert not bus.dead_letters  # handled on the 6th attempt, once the bus was back
    await bus.stop()


async def test_an_event_refused_by_the_bus_itself_is_not_an_outage():
    assert is_outage(RuntimeError("a bug")) is False
    assert is_outage(BusUnavailableError("unreachable")) is True
    assert is_outage(EventRejectedError("too large")) is False
    try:
        try:
            raise BusUnavailableError("timed out")
        except BusUnavailableError as exc:
            raise RuntimeError("publish failed") from exc
    except RuntimeError as wrapped:
        assert is_outage(wrapped) is True


async def test_a_failed_listener_or_worker_makes_the_bus_unhealthy():
    bus = InMemoryBus()

    async def fine(event):
        return None

    subscription = await bus.subscribe(["topic"], "g", fine)
    assert await bus.healthy()
    subscription._tasks[0].cancel()  # a worker that died
    await asyncio.sleep(0)
    assert not await bus.healthy()
    await bus.stop()


async def test_handle_batch_isolating_keeps_order_and_splits_only_while_healthy():
    handled: list[list[int]] = []
    dead: list[int] = []

    async def handle(items: list[int]) -> None:
        handled.append(list(items))
        if 3 in items or 6 in items:
            raise ValueError("bad item")

    async def dead_letter(item: int, error: BaseException) -> None:
        dead.append(item)

    async def healthy() -> bool:
        return True

    count = await handle_batch_isolating(
        list(range(8)),
        handle,
        RetryPolicy(max_attempts=2, initial_backoff_s=0.0001),
        healthy=healthy,
        dead_letter=dead_letter,
        on_retry=lambda *args: None,
    )

    assert count == 2 and dead == [3, 6]
    succeeded = [batch for batch in handled if 3 not in batch and 6 not in batch]
    assert [item for batch in succeeded for item in batch] == [0, 1, 2, 4, 5, 7]


async def test_consumers_get_the_event_back_from_the_bytes_kafka_would_carry():
    bus = InMemoryBus()
    received, heard = [], []

    async def handler(event):
        received.append(event)

    async def listener(event):
        heard.append(event)

    await bus.subscribe(["topic"], "g", handler)
    await bus.listen("topic", listener)
    sent = request(1)
    await bus.publish("topic", sent)
    await async_wait_until(lambda: asyncio.sleep(0, bool(received and heard)))

    # Each consumer decoded its own copy of the serialised event, as from Kafka.
    assert received[0] == sent and received[0] is not sent
    assert heard[0] == sent and heard[0] is not received[0]
    assert received[0].model_dump_json() == serialise(sent).decode()
    await bus.stop()


async def test_a_listener_with_a_key_filter_decodes_only_the_keys_it_accepts():
    bus = InMemoryBus()
    decoded: list[str] = []
    decode = bus._decode

    def counting(topic, raw):
        decoded.append(topic)
        return decode(topic, raw)

    bus._decode = counting  # type: ignore[method-assign]
    wanted = {"r1"}
    seen = []

    async def listener(event):
        seen.append(event.request_id)

    await bus.listen("usage", listener, key_filter=wanted.__contains__)
    await bus.publish("usage", request(1), key="r1")
    await bus.publish("usage", request(2), key="r2")  # not wanted
    await bus.publish("usage", request(3))  # keyed by its request id, as on Kafka
    wanted.add("r4")  # asked when the event is read, as on Kafka
    await bus.publish("usage", request(4), key="r4")
    await async_wait_until(lambda: asyncio.sleep(0, len(seen) >= 2))
    await asyncio.sleep(0.05)
    assert seen == ["r1", "r4"]
    assert len(decoded) == 2
    await bus.stop()


async def test_an_event_that_cannot_be_serialised_is_refused_at_publish_as_on_kafka():
    bus = InMemoryBus()
    body: dict = {}
    inner = body
    for _ in range(400):  # deeper than the JSON serialiser goes
        inner["a"] = {}
        inner = inner["a"]
    too_deep = request(1).model_copy(
        update={"data": request(1).data.model_copy(update={"body": body})}
    )

    try:
        await bus.publish("topic", too_deep)
    except EventRejectedError as exc:
        assert "cannot be serialised" in str(exc)
    else:
        raise AssertionError("the in-memory bus accepted an event Kafka's publish refuses")
    assert bus.published["topic"] == 0


async def test_bytes_no_consumer_can_decode_are_dead_lettered_and_the_rest_handled():
    bus = InMemoryBus(batch_linger_s=0.01)
    handled, batched = [], []

    async def handler(event):
        handled.append(event.request_id)

    async def batch(events):
        batched.extend(event.request_id for event in events)

    await bus.subscribe(["topic"], "one", handler)
    await bus.subscribe_batch(["topic"], "many", batch)
    # A schema version no consumer supports serialises fine but does not decode.
    unreadable = request(1).model_copy(update={"schema_version": 99})
    await bus.publish("topic", unreadable)
    await bus.publish("topic", request(2))
    await async_wait_until(lambda: asyncio.sleep(0, bool(handled and batched)))

    assert handled == ["r2"] and batched == ["r2"]
    assert [(dead.topic, dead.event) for dead in bus.dead_letters] == [("topic", None)] * 2
    assert b'"schema_version":99' in bus.dead_letters[0].raw
    assert await bus.consumer_lag("one", ["topic"]) == 0
    await bus.stop()


async def test_stopping_a_batch_subscription_writes_the_batch_it_was_gathering():
    # A long batch wait (embedded history's) must not turn a shutdown into lost events.
    bus = InMemoryBus()
    recorded: list[str] = []

    async def record(events):
        recorded.extend(event.request_id for event in events)

    await bus.subscribe_batch(["topic"], "history", record, max_batch_wait_ms=60_000)
    for n in range(3):
        await bus.publish("topic", request(n))
    await asyncio.sleep(0.05)  # the worker holds the first event and waits for more
    assert recorded == []

    async with asyncio.timeout(5):
        await bus.stop()

    assert recorded == ["r0", "r1", "r2"]


async def test_a_full_batch_is_handled_at_once_without_waiting_for_more():
    # Lingering with a full batch queued capped a group at `max_batch` events per wait:
    # embedded history fell behind a busy gateway and the backlog piled up in memory.
    bus = InMemoryBus()
    batches: list[list[str]] = []

    async def record(events):
        batches.append([event.request_id for event in events])

    await bus.subscribe_batch(["topic"], "history", record, max_batch=5, max_batch_wait_ms=60_000)
    for n in range(12):
        await bus.publish("topic", request(n))

    # The two full batches come well before the 60 s wait; the last two events wait for it.
    async with asyncio.timeout(5):
        await async_wait_until(lambda: asyncio.sleep(0, len(batches) == 2))
    assert batches == [[f"r{n}" for n in range(5)], [f"r{n}" for n in range(5, 10)]]
    await asyncio.sleep(0.05)
    assert len(batches) == 2

    async with asyncio.timeout(5):
        await bus.stop()
    assert batches[2] == ["r10", "r11"]


async def test_hurry_writes_the_batch_being_gathered_and_those_right_after_at_once():
    # A reader that needs what was just published (history's read barrier) must not wait
    # for a batch's whole wait, nor for the next one's: a request's events come moments
    # apart.
    bus = InMemoryBus()
    batches: list[list[str]] = []

    async def record(events):
        batches.append([event.request_id for event in events])

    subscription = await bus.subscribe_batch(
        ["topic"], "history", record, max_batch=100, max_batch_wait_ms=60_000
    )
    await bus.publish("topic", request(0))
    await asyncio.sleep(0.05)  # the batch is gathering now
    subscription.hurry()
    async with asyncio.timeout(5):
        await async_wait_until(lambda: asyncio.sleep(0, len(batches) == 1))
    await bus.publish("topic", request(1))
    async with asyncio.timeout(5):
        await async_wait_until(lambda: asyncio.sleep(0, len(batches) == 2))
    assert batches == [["r0"], ["r1"]]
    await bus.stop()


async def test_a_store_that_falls_behind_holds_new_work_back_instead_of_memory():
    # Memory is embedded mode's only buffer: new requests wait for a store that cannot
    # keep up, then are refused (as Kafka does when the broker takes nothing), never
    # dropped; what follows accepted work (replies) always flows.
    bus = InMemoryBus(admission_topics=["requests"], max_pending=3, publish_wait_s=0.2)
    release = asyncio.Event()
    recorded: list[str] = []

    async def slow_store(events):
        await release.wait()
        recorded.extend(event.request_id for event in events)

    async def worker(event):
        pass

    await bus.subscribe_batch(["requests", "replies"], "history", slow_store, max_batch=1)
    await bus.subscribe(["requests"], "inference", worker)  # never a reason to wait
    await bus.publish("requests", request(0))
    await asyncio.sleep(0.05)  # the store took r0 and waits in its handler
    for n in range(1, 4):
        await bus.publish("requests", request(n))

    with pytest.raises(BusUnavailableError, match="history is 3 events or more behind"):
        await bus.publish("requests", request(4))
    assert bus.published["requests"] == 4  # refused: not half-delivered to inference
    async with asyncio.timeout(1):  # not an admission topic: never held back
        await bus.publish("replies", request(100))

    waiting = asyncio.create_task(bus.publish("requests", request(5)))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    release.set()
    async with asyncio.timeout(5):
        await waiting
        await async_wait_until(lambda: asyncio.sleep(0, len(recorded) == 6))
    assert recorded == ["r0", "r1", "r2", "r3", "r100", "r5"]
    await bus.stop()


async def test_publishers_held_back_go_on_as_soon_as_the_store_takes_events():
    bus = InMemoryBus(admission_topics=["requests"], max_pending=2, publish_wait_s=5)
    first_batch_taken = asyncio.Event()
    release = asyncio.Event()
    never = asyncio.Event()
    writes = 0

    async def store(events):
        nonlocal writes
        writes += 1
        first_batch_taken.set()
        # Slow writes: the first until released, the second for ever. Room is made when
        # events are taken, not when they are written.
        await (release if writes == 1 else never).wait()

    await bus.subscribe_batch(["requests"], "history", store, max_batch=2)
    for n in range(2):
        await bus.publish("requests", request(n))
    async with asyncio.timeout(5):
        await first_batch_taken.wait()
    for n in range(2, 4):
        await bus.publish("requests", request(n))
    waiting = asyncio.create_task(bus.publish("requests", request(4)))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # two queued behind the batch being written
    release.set()  # the first write ends; the worker takes the next two and writes them
    async with asyncio.timeout(1):
        await waiting
    await bus.stop()


async def test_a_stopped_store_holds_nobody_back():
    bus = InMemoryBus(admission_topics=["requests"], max_pending=1, publish_wait_s=30)
    stuck = asyncio.Event()

    async def store(events):
        await stuck.wait()

    subscription = await bus.subscribe_batch(["requests"], "history", store, max_batch=1)
    await bus.publish("requests", request(0))
    await asyncio.sleep(0.05)
    await bus.publish("requests", request(1))
    waiting = asyncio.create_task(bus.publish("requests", request(2)))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    async with asyncio.timeout(10):
        await subscription.stop()  # drains for at most STOP_DRAIN_S, then gives up
        await waiting
    await bus.stop()


async def test_work_entering_without_a_request_topic_waits_for_room_like_a_request():
    # A response cache hit is answered at once and its events are published afterwards,
    # on the replies topic: it asks for room first, held back like a new request.
    bus = InMemoryBus(admission_topics=["requests"], max_pending=1, publish_wait_s=0.2)
    release = asyncio.Event()

    async def store(events):
        await release.wait()

    await bus.subscribe_batch(["requests", "replies"], "history", store, max_batch=1)
    async with asyncio.timeout(1):
        await bus.wait_for_room("replies")  # nothing behind: at once
    await bus.publish("replies", request(0))
    await asyncio.sleep(0.05)  # the store took r0 and waits in its handler
    await bus.publish("replies", request(1))  # what follows accepted work is never held

    with pytest.raises(BusUnavailableError, match="history is 1 events or more behind"):
        await bus.wait_for_room("replies")
    waiting = asyncio.create_task(bus.wait_for_room("replies"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    release.set()
    async with asyncio.timeout(1):
        await waiting
    await bus.stop()


@pytest.mark.parametrize(
    "carrier",
    [{}, {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}],
    ids=["tracing off", "tracing on"],
)
async def test_queued_events_leave_the_collectors_care(monkeypatch, carrier):
    # A backlog of tens of thousands of events (history catching up after a burst) must
    # not be objects every full collection walks: such collections paused answering.
    monkeypatch.setattr(tracing, "current_trace_carrier", lambda: dict(carrier))
    bus = InMemoryBus()
    release = asyncio.Event()

    async def slow_store(events):
        await release.wait()

    async def listener(event):
        await release.wait()

    await bus.subscribe_batch(["requests"], "history", slow_store, max_batch=1)
    await bus.listen("requests", listener)
    for n in range(50):
        await bus.publish("requests", request(n))
    await asyncio.sleep(0.05)  # each worker holds its first event, the rest are queued

    gc.collect(0)
    queued = [*bus._groups["history"].queue._queue]  # type: ignore[attr-defined]
    queued += [
        item
        for listeners in bus._listeners.values()
        for queue, _ in listeners
        for item in queue._queue  # type: ignore[attr-defined]
    ]
    assert len(queued) == 2 * 49
    assert not [item for item in queued if gc.is_tracked(item)]
    release.set()
    await bus.stop()


async def test_a_handler_runs_in_the_publishers_trace(monkeypatch):
    monkeypatch.setattr(tracing, "_enabled", True)
    published = {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}
    monkeypatch.setattr(tracing, "current_trace_carrier", lambda: dict(published))
    parents: list[dict[str, str]] = []

    def process_span(topic, group, event, parent):
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=parent)
        parents.append(carrier)
        return contextlib.nullcontext()

    monkeypatch.setattr(tracing, "process_span", process_span)
    bus = InMemoryBus()
    seen: list[str] = []

    async def handler(event):
        seen.append(event.request_id)

    await bus.subscribe(["requests"], "inference", handler)
    await bus.listen("requests", handler)
    await bus.publish("requests", request(1))
    await async_wait_until(lambda: asyncio.sleep(0, len(seen) == 2))
    assert parents == [published, published]
    await bus.stop()


async def test_dead_letters_kept_in_memory_are_bounded(monkeypatch):
    monkeypatch.setattr(memory, "MAX_DEAD_LETTERS", 3)
    bus = InMemoryBus()

    async def refuse(event):
        raise EventRejectedError("no")

    await bus.subscribe(["requests"], "store", refuse, retry=RetryPolicy(max_attempts=1))
    for n in range(5):
        await bus.publish("requests", request(n))
    await async_wait_until(lambda: asyncio.sleep(0, bus.published["requests"] == 5))
    await async_wait_until(
        lambda: asyncio.sleep(
            0, [d.event.request_id for d in bus.dead_letters] == ["r2", "r3", "r4"]
        )
    )
    await bus.stop()


async def test_a_listener_hands_over_the_events_records_carry_in_a_header_first():
    """As on Kafka: embedded mode's gateway settles a reply's usage from the reply itself,
    before its client has the answer, not moments later from the usage topic."""
    bus = InMemoryBus()
    try:
        await carried_events_are_handed_over_first(bus, "replies", timeout=5)
    finally:
        await bus.stop()


async def test_a_large_event_is_decoded_off_the_event_loop():
    bus = InMemoryBus()
    try:
        await large_events_are_decoded_off_the_loop(bus, "requests", timeout=5)
    finally:
        await bus.stop()


async def test_no_worker_keeps_an_event_it_handled_while_it_waits_for_the_next():
    bus = InMemoryBus()
    try:
        await handled_events_are_let_go(bus, "requests", timeout=5)
    finally:
        await bus.stop()


async def test_a_batch_group_passes_over_the_types_it_skips_unread():
    bus = InMemoryBus()
    try:
        await skipped_types_are_passed_over_unread(bus, "replies", timeout=5)
        assert await bus.settled("skipping-batch", timeout=1)
    finally:
        await bus.stop()
