"""The in-memory bus behaves like the Kafka bus where a handler can tell."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from switchyard.common.bus import InMemoryBus, RetryPolicy
from switchyard.common.events import ChatRequestData, ChatRequested
from switchyard.common.testing.infra import async_wait_until


def request(n: int) -> ChatRequested:
    return ChatRequested(
        source="test",
        tenant="t",
        request_id=f"r{n}",
        data=ChatRequestData(
            api="openai.chat_completions", model="m", body={}, user_id="u",
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
    assert 0.05 <= policy.backoff(1) <= 0.1
    assert 0.5 <= policy.backoff(10) <= 1.0
    assert not policy.gives_up_after(1000)
    assert RetryPolicy(max_attempts=2).gives_up_after(2)
