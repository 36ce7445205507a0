"""Checks of the `EventBus` contract that both buses must pass, for tests: each takes a
started bus and a topic of its own, so the in-memory bus's unit tests and the Kafka bus's
integration tests run the same scenario."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from unittest import mock

from switchyard.common import events
from switchyard.common.bus import USAGE_HEADER, Carried, EventBus, metrics
from switchyard.common.events import ChatRequestData, ChatRequested, ClientAPI, encode_event
from switchyard.common.offloop import OFF_LOOP_BYTES
from switchyard.common.testing.infra import async_wait_until


def numbered_request(n: int, event_id: str | None = None, **data: object) -> ChatRequested:
    """A `chat.requested` event of tenant `acme` for request `req-<n>` (body `{"n": n}`),
    with `event_id` as its id if given and `data` added to its `ChatRequestData`."""
    event = ChatRequested(
        source="test",
        tenant="acme",
        request_id=f"req-{n}",
        data=ChatRequestData(
            api=ClientAPI.OPENAI_CHAT_COMPLETIONS,
            model="sim-small",
            body={"n": n},
            user_id="u",
            deadline=datetime.now(UTC) + timedelta(seconds=60),
            **data,
        ),
    )
    return event if event_id is None else event.model_copy(update={"id": event_id})


async def carried_events_are_handed_over_first(
    bus: EventBus, topic: str, timeout: float = 30
) -> None:
    """A listener with `carried` gets the event a record carries in that header before the
    record's own event, for the keys both filters accept. A header that does not decode,
    or that carries another request's event, is skipped and counted; the record's own
    event is handled anyway. Raises AssertionError when the bus does otherwise."""
    seen: list[str] = []
    wanted_carried = {"req-1", "req-3"}

    async def on_reply(event: object) -> None:
        seen.append(f"reply {getattr(event, 'request_id', '?')}")

    async def on_carried(event: object) -> None:
        seen.append(f"carried {getattr(event, 'request_id', '?')}")

    await bus.listen(
        topic,
        on_reply,
        partitions=[0],
        key_filter=lambda key: key != "req-9",
        carried=Carried(USAGE_HEADER, on_carried, key_filter=wanted_carried.__contains__),
    )

    def carrying(n: int) -> dict[str, bytes]:
        # The record's own request's event (another event of the same request id).
        return {USAGE_HEADER: encode_event(numbered_request(n, f"carried-{n}"))}

    skipped = metrics.EVENTS_SKIPPED.labels(topic, "carried")
    before = skipped._value.get()
    await bus.publish(topic, numbered_request(1), key="req-1", partition=0, headers=carrying(1))
    await bus.publish(topic, numbered_request(2), key="req-2", partition=0, headers=carrying(2))
    # A header that does not decode is skipped; the record's own event is handled.
    await bus.publish(
        topic, numbered_request(3), key="req-3", partition=0, headers={USAGE_HEADER: b"{not json"}
    )
    # So is an event of another request: a record carries its own request's only.
    wanted_carried.add("req-5")
    await bus.publish(
        topic,
        numbered_request(5),
        key="req-5",
        partition=0,
        headers={USAGE_HEADER: encode_event(numbered_request(1, "forged"))},
    )
    await bus.publish(topic, numbered_request(9), key="req-9", partition=0, headers=carrying(9))
    await bus.publish(topic, numbered_request(4), key="req-4", partition=0)  # carries nothing
    await async_wait_until(lambda: asyncio.sleep(0, "reply req-4" in seen), timeout=timeout)
    assert seen == [
        "carried req-1",
        "reply req-1",
        "reply req-2",  # its carried event is not wanted: never decoded
        "reply req-3",
        "reply req-5",
        "reply req-4",
    ]
    assert skipped._value.get() == before + 2


async def large_events_are_decoded_off_the_loop(
    bus: EventBus, topic: str, timeout: float = 30
) -> None:
    """A group member, a batch subscriber and a listener (with the event its record
    carries) decode an event larger than `OFF_LOOP_BYTES` in a worker thread, and a small
    one on the event loop's thread; every one arrives whole. Raises AssertionError when
    the bus does otherwise."""
    large = numbered_request(1)
    large = large.model_copy(
        update={"data": large.data.model_copy(update={"body": {"prompt": "x" * OFF_LOOP_BYTES}})}
    )
    small = numbered_request(2)
    got: dict[str, list[ChatRequested]] = {"group": [], "batch": [], "listener": [], "carried": []}
    # (was the input large, was it decoded on the loop's thread), one per decoding.
    decoded: list[tuple[bool, bool]] = []
    loop_thread = threading.current_thread()
    real = events.decode_event

    def recorded(raw: bytes | str) -> events.Event:
        decoded.append((len(raw) > OFF_LOOP_BYTES, threading.current_thread() is loop_thread))
        return real(raw)

    def collect(into: str) -> Callable[[object], Awaitable[None]]:
        async def handler(event: object) -> None:
            assert isinstance(event, ChatRequested)
            got[into].append(event)

        return handler

    async def collect_batch(batch: list[events.Event]) -> None:
        for event in batch:
            await collect("batch")(event)

    with mock.patch.object(events, "decode_event", recorded):
        await bus.subscribe([topic], "off-loop-group", collect("group"))
        await bus.subscribe_batch([topic], "off-loop-batch", collect_batch, max_batch=1)
        await bus.listen(
            topic, collect("listener"), carried=Carried(USAGE_HEADER, collect("carried"))
        )
        await bus.publish(topic, large, headers={USAGE_HEADER: encode_event(large)})
        await bus.publish(topic, small)
        await async_wait_until(
            lambda: asyncio.sleep(
                0, all(len(got[name]) == 2 for name in ("group", "batch", "listener"))
            ),
            timeout=timeout,
        )
    for name in ("group", "batch", "listener"):
        assert sorted(got[name], key=lambda event: event.request_id) == [large, small], name
    assert got["carried"] == [large]
    assert sorted(decoded) == [(False, True)] * 3 + [(True, False)] * 4


async def handled_events_are_let_go(bus: EventBus, topic: str, timeout: float = 30) -> None:
    """A group member, a batch subscriber and a listener let go of an event once handled:
    while they wait for the next, nothing of theirs refers to it (a request of megabytes
    kept by each idle worker is memory, and work for every full garbage collection).
    Raises AssertionError when the bus keeps one."""
    import gc

    seen: dict[str, list[events.Event]] = {"group": [], "batch": [], "listener": []}

    def collect(into: str) -> Callable[[events.Event], Awaitable[None]]:
        async def handler(event: events.Event) -> None:
            seen[into].append(event)

        return handler

    async def collect_batch(batch: list[events.Event]) -> None:
        seen["batch"].extend(batch)

    await bus.subscribe([topic], "let-go-group", collect("group"), concurrency=2)
    await bus.subscribe_batch([topic], "let-go-batch", collect_batch, max_batch=10)
    await bus.listen(topic, collect("listener"))
    await bus.publish(topic, numbered_request(1))
    await async_wait_until(
        lambda: asyncio.sleep(0, all(len(got) == 1 for got in seen.values())), timeout=timeout
    )
    await asyncio.sleep(0.3)  # every worker back at its queue or poll
    gc.collect()
    for name, [event] in seen.items():
        holders = [holder for holder in gc.get_referrers(event) if holder is not seen[name]]
        assert holders == [], (name, holders)


async def skipped_types_are_passed_over_unread(
    bus: EventBus, topic: str, timeout: float = 30
) -> None:
    """A batch subscriber given `skip_types` never sees, nor decodes, an event of those
    types, and its group is not behind for them: they are acknowledged with the rest.
    Raises AssertionError when the bus does otherwise."""
    from switchyard.common.events import ChatChunk, ChatChunkData, StreamEvent

    chunk = ChatChunk(
        source="test",
        tenant="acme",
        request_id="req-2",
        data=ChatChunkData(sequence=0, run="r", events=[StreamEvent(data={"n": 2})]),
    )
    got: list[events.Event] = []
    decoded: list[str] = []
    real = events.decode_event

    def recorded(raw: bytes | str) -> events.Event:
        event = real(raw)
        decoded.append(event.type)
        return event

    async def collect_batch(batch: list[events.Event]) -> None:
        got.extend(batch)

    skipped = metrics.EVENTS_SKIPPED.labels(topic, "unread_type")
    skipped_before = skipped._value.get()
    with mock.patch.object(events, "decode_event", recorded):
        await bus.subscribe_batch(
            [topic], "skipping-batch", collect_batch, max_batch=10, skip_types=[chunk.type]
        )
        for event in (numbered_request(1), chunk, chunk, numbered_request(3)):
            await bus.publish(topic, event)
        await async_wait_until(lambda: asyncio.sleep(0, len(got) == 2), timeout=timeout)

        async def caught_up() -> bool:
            return await bus.consumer_lag("skipping-batch", [topic]) == 0

        await async_wait_until(caught_up, timeout=timeout)
    assert [event.request_id for event in got] == ["req-1", "req-3"]
    assert chunk.type not in decoded
    assert skipped._value.get() == skipped_before + 2  # counted, as skipped by design
