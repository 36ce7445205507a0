"""Stopping the in-memory bus's subscriptions as the Kafka consumer stops at a clean
shutdown (docs/operations.md, "Graceful shutdown"): a consumer group member takes no new
event and lets the handlers in progress finish within a bound, then cancels what still
runs. Embedded mode's SIGTERM used to cancel them at once: a batch job's provider call was
cut short, and ran again once history published the job again at the next start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable

import httpx
import pytest
from fastapi import FastAPI

from switchyard.common.bus import EventBus, InMemoryBus, memory
from switchyard.common.bus.kafka import _GroupSubscription
from switchyard.common.dev import run_embedded
from switchyard.common.events import ChatRequested, Event
from switchyard.common.plugins import ServicePlugin
from switchyard.common.settings import ServiceSettings
from switchyard.common.testing.events import chat_requested
from switchyard.common.testing.processes import free_port


def request(n: int) -> ChatRequested:
    return chat_requested(request_id=f"r{n}")


class SlowHandler:
    """A handler taking `delay_s` per event; records what it started, finished, and what
    was cancelled in the middle."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.running = asyncio.Event()

    async def __call__(self, event: Event) -> None:
        assert isinstance(event, ChatRequested)
        self.started.append(event.request_id)
        self.running.set()
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled.append(event.request_id)
            raise
        self.finished.append(event.request_id)


async def stop_timed(stop: Awaitable[None]) -> float:
    """How long (s) `stop` took; it must end within 10 s."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with asyncio.timeout(10):
        await stop
    return loop.time() - began


# Shorter and longer than the moment after which the wait is logged (DRAIN_QUIET_S).
@pytest.mark.parametrize("delay_s", [0.3, 1.0])
async def test_a_handler_in_progress_finishes_when_it_needs_less_than_the_bound(
    delay_s: float,
) -> None:
    bus = InMemoryBus(handler_drain_s=5.0)
    handler = SlowHandler(delay_s=delay_s)
    subscription = await bus.subscribe(["requests"], "inference", handler)
    await bus.publish("requests", request(0))
    await asyncio.wait_for(handler.running.wait(), timeout=5)

    took = await stop_timed(subscription.stop())

    assert handler.finished == ["r0"]
    assert handler.cancelled == []
    # Waited for the rest of the call, not for the bound.
    assert delay_s - 0.1 < took < delay_s + 1.0
    assert await bus.consumer_lag("inference", ["requests"]) == 0
    await bus.stop()


@pytest.mark.parametrize("bound_s", [0.2, 0.8])
async def test_a_handler_past_the_bound_is_cancelled_at_the_bound(bound_s: float) -> None:
    bus = InMemoryBus(handler_drain_s=bound_s)
    handler = SlowHandler(delay_s=60.0)
    subscription = await bus.subscribe(["requests"], "inference", handler)
    await bus.publish("requests", request(0))
    await asyncio.wait_for(handler.running.wait(), timeout=5)

    took = await stop_timed(subscription.stop())

    assert handler.cancelled == ["r0"]
    assert handler.finished == []
    assert bound_s - 0.05 < took < bound_s + 1.0
    await bus.stop()


async def test_an_idle_subscription_stops_at_once_whatever_the_bound() -> None:
    bus = InMemoryBus()  # the real bound, 10 s
    handler = SlowHandler(delay_s=0.0)
    subscription = await bus.subscribe(["requests"], "inference", handler, concurrency=4)
    await bus.publish("requests", request(0))
    await asyncio.sleep(0.05)
    assert handler.finished == ["r0"]  # handled; every worker waits for the next event

    assert await stop_timed(subscription.stop()) < 0.5
    listener = await bus.listen("replies", handler)
    assert await stop_timed(listener.stop()) < 0.5
    assert await stop_timed(bus.stop()) < 0.5


async def test_only_the_busy_workers_are_waited_for() -> None:
    bus = InMemoryBus(handler_drain_s=5.0)
    handler = SlowHandler(delay_s=0.3)
    subscription = await bus.subscribe(["requests"], "inference", handler, concurrency=8)
    await bus.publish("requests", request(0))
    await asyncio.wait_for(handler.running.wait(), timeout=5)

    took = await stop_timed(subscription.stop())

    assert handler.finished == ["r0"]
    assert took < 1.5


async def test_events_not_started_are_not_handled_once_stopping_begins() -> None:
    bus = InMemoryBus(handler_drain_s=5.0)
    handler = SlowHandler(delay_s=0.3)
    subscription = await bus.subscribe(["requests"], "inference", handler, concurrency=2)
    for n in range(5):
        await bus.publish("requests", request(n))
    await asyncio.sleep(0.05)
    assert handler.started == ["r0", "r1"]

    stopping = asyncio.create_task(subscription.stop())
    await asyncio.sleep(0)
    await bus.publish("requests", request(5))  # published while the group member stops
    async with asyncio.timeout(5):
        await stopping

    assert handler.started == ["r0", "r1"]
    assert sorted(handler.finished) == ["r0", "r1"]
    assert await bus.consumer_lag("inference", ["requests"]) == 4
    await asyncio.sleep(0.4)
    assert handler.started == ["r0", "r1"]
    await bus.stop()


async def test_stopping_the_bus_waits_for_its_handlers_in_progress() -> None:
    bus = InMemoryBus(handler_drain_s=5.0)
    handler = SlowHandler(delay_s=0.3)
    await bus.subscribe(["requests"], "inference", handler)
    await bus.publish("requests", request(0))
    await asyncio.wait_for(handler.running.wait(), timeout=5)

    await stop_timed(bus.stop())

    assert handler.finished == ["r0"]


async def test_cut_short_ends_the_wait_and_cancels_the_handlers_in_progress() -> None:
    # Embedded mode's second Ctrl+C: nothing held is waited for any more.
    cut_short = asyncio.Event()
    bus = InMemoryBus(handler_drain_s=30.0, cut_short=cut_short)
    handler = SlowHandler(delay_s=60.0)
    subscription = await bus.subscribe(["requests"], "inference", handler)
    await bus.publish("requests", request(0))
    await asyncio.wait_for(handler.running.wait(), timeout=5)

    stopping = asyncio.create_task(stop_timed(subscription.stop()))
    await asyncio.sleep(0.2)
    assert not stopping.done()  # waiting for the handler
    cut_short.set()
    took = await asyncio.wait_for(stopping, timeout=5)

    assert handler.cancelled == ["r0"]
    assert took < 1.0

    # Once cut short, a later stop does not wait at all.
    later = SlowHandler(delay_s=60.0)
    await bus.subscribe(["requests"], "later", later)
    await bus.publish("requests", request(1))
    await asyncio.wait_for(later.running.wait(), timeout=5)
    assert await stop_timed(bus.stop()) < 1.0
    assert later.cancelled == ["r1"]


async def test_cut_short_ends_a_batch_groups_drain_too() -> None:
    cut_short = asyncio.Event()
    bus = InMemoryBus(cut_short=cut_short)
    stuck = asyncio.Event()

    async def store(events: list[Event]) -> None:
        await stuck.wait()

    subscription = await bus.subscribe_batch(["requests"], "history", store, max_batch=1)
    await bus.publish("requests", request(0))
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(stop_timed(subscription.stop()))
    await asyncio.sleep(0.1)
    cut_short.set()

    assert await asyncio.wait_for(stopping, timeout=5) < memory.STOP_DRAIN_S - 0.5
    await bus.stop()


async def test_a_cancelled_stop_leaves_no_handler_running() -> None:
    bus = InMemoryBus(handler_drain_s=30.0)
    handler = SlowHandler(delay_s=60.0)
    subscription = await bus.subscribe(["requests"], "inference", handler)
    await bus.publish("requests", request(0))
    await asyncio.wait_for(handler.running.wait(), timeout=5)

    stopping = asyncio.create_task(subscription.stop())
    await asyncio.sleep(0.1)
    stopping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopping
    await asyncio.sleep(0.05)

    assert handler.cancelled == ["r0"]
    await bus.stop()


def test_the_bound_is_the_kafka_consumers_grace() -> None:
    # docs/operations.md: "event handlers in progress get 10 s", on either bus.
    assert memory.HANDLER_DRAIN_S == _GroupSubscription.revoke_grace_s == 10.0


def consumer_plugin(port: int, handler: SlowHandler) -> ServicePlugin:
    """A service consuming the `requests` topic of embedded mode's bus, as inference does:
    its lifespan subscribes and, at shutdown, stops the subscription."""

    def create_app(bus: EventBus | None = None, **_: object) -> FastAPI:
        assert bus is not None

        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            subscription = await bus.subscribe(["requests"], "consumer", handler)
            yield
            await subscription.stop()

        app = FastAPI(lifespan=lifespan)

        @app.post("/submit/{n}")
        async def submit(n: int) -> dict[str, str]:
            await bus.publish("requests", request(n))
            return {"submitted": str(n)}

        return app

    made = ServicePlugin(
        "consumer", port, "consumer", ServiceSettings, factory="unused:x", start_order=10
    )
    object.__setattr__(made, "create_app", create_app)
    return made


async def test_sigterm_in_embedded_mode_lets_the_handlers_in_progress_finish() -> None:
    """The tester's case: a job's provider call in progress when `switchyard dev` got
    SIGTERM was cancelled, and called again after the restart."""
    handler = SlowHandler(delay_s=1.0)
    port = free_port()
    runner = asyncio.create_task(run_embedded("127.0.0.1", [consumer_plugin(port, handler)], False))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(500):
            assert not runner.done(), runner.result()
            with contextlib.suppress(httpx.TransportError):
                await client.post(f"{url}/submit/0")
                break
            await asyncio.sleep(0.02)
    await asyncio.wait_for(handler.running.wait(), timeout=5)
    await asyncio.sleep(0.3)

    os.kill(os.getpid(), signal.SIGTERM)

    assert await asyncio.wait_for(runner, timeout=10) is True
    assert handler.started == ["r0"]
    assert handler.finished == ["r0"]
    assert handler.cancelled == []
