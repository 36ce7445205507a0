"""The events of cache hits are gathered for a moment and published together: none is
published before the window ends, all of them in one turn when it does, in order per hit,
and a stop publishes what is still gathering."""

from __future__ import annotations

import asyncio

from switchyard.common.events import (
    ChatCompleted,
    ChatCompletedData,
    ChatRequestData,
    ChatRequested,
    ClientAPI,
    TokenUsage,
    UsageData,
    UsageRecorded,
    utcnow,
)
from switchyard.gateway import hit_events as hit_events_module
from switchyard.gateway.hit_events import HitEvents, HitRecord

API = ClientAPI.OPENAI_CHAT_COMPLETIONS


def hit(request_id: str) -> HitRecord:
    envelope = {"source": "gateway", "tenant": "t1", "request_id": request_id}
    now = utcnow()
    return HitRecord(
        request_id,
        (
            "replies",
            ChatRequested(
                **envelope,
                id=f"{request_id}.request",
                data=ChatRequestData(
                    api=API,
                    model="m",
                    body={"model": "m"},
                    user_id="u1",
                    deadline=now,
                    reply_to=None,
                ),
            ),
        ),
        (
            "replies",
            ChatCompleted(
                **envelope,
                id=f"{request_id}.reply",
                data=ChatCompletedData(
                    api=API,
                    response={"id": "x"},
                    provider="cache",
                    deployment="cache",
                    usage=TokenUsage(),
                    latency_ms=0,
                ),
            ),
        ),
        (
            "usage",
            UsageRecorded(
                **envelope,
                id=f"{request_id}.usage",
                data=UsageData(
                    api=API,
                    model="m",
                    provider="cache",
                    deployment="cache",
                    user_id="u1",
                    status="completed",
                    usage=TokenUsage(),
                    cost_usd=0,
                    latency_ms=0,
                    upstream_calls=0,
                    cache_hit=True,
                ),
            ),
        ),
    )


class Recorder:
    """A bus that takes every event and notes when (loop time) and in which order."""

    def __init__(self) -> None:
        self.published: list[tuple[float, str]] = []

    async def publish(self, topic: str, event, key: str) -> None:
        self.published.append((asyncio.get_running_loop().time(), event.id))


async def test_hits_within_the_window_are_published_together_when_it_ends():
    bus = Recorder()
    events = HitEvents(bus.publish, linger_s=0.2)
    started = asyncio.get_running_loop().time()
    for n in range(5):
        events.add(hit(f"r{n}"))
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert bus.published == []  # nothing between the answers
    for _ in range(100):  # the window ends at 0.2 s; a loaded machine may take longer
        await asyncio.sleep(0.05)
        if len(bus.published) == 15:
            break
    assert len(bus.published) == 15
    times = [at for at, _ in bus.published]
    assert min(times) - started >= 0.2
    assert max(times) - min(times) < 0.1  # one go, not one hit at a time


async def test_a_hits_request_is_published_before_its_reply():
    bus = Recorder()
    events = HitEvents(bus.publish, linger_s=0.01)
    for n in range(3):
        events.add(hit(f"r{n}"))
    await events.stop()
    order = [event_id for _, event_id in bus.published]
    for n in range(3):
        assert order.index(f"r{n}.request") < order.index(f"r{n}.reply")
    assert {f"r{n}.usage" for n in range(3)} <= set(order)


async def test_no_window_publishes_each_hit_at_once():
    bus = Recorder()
    events = HitEvents(bus.publish, linger_s=0)
    events.add(hit("r1"))
    await asyncio.sleep(0.01)
    assert len(bus.published) == 3


async def test_a_full_window_is_published_without_waiting(monkeypatch):
    monkeypatch.setattr(hit_events_module, "MAX_GATHERING", 4)
    bus = Recorder()
    events = HitEvents(bus.publish, linger_s=60)
    for n in range(4):
        events.add(hit(f"r{n}"))
    await asyncio.sleep(0.05)
    assert len(bus.published) == 12


async def test_a_stop_publishes_the_hits_still_gathering():
    bus = Recorder()
    events = HitEvents(bus.publish, linger_s=60)
    events.add(hit("r1"))
    events.add(hit("r2"))
    await events.stop()
    assert len(bus.published) == 6
