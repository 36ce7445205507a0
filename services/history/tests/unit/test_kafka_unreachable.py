"""History with the event bus unreachable at start-up (Kafka down, a wrong
KAFKA_BOOTSTRAP_SERVERS): it starts, answers /livez, fails /readyz, and keeps subscribing
in the background until the bus takes it, as the gateway's listeners do; it used to fail
its start-up with a traceback."""

from __future__ import annotations

import httpx
import pytest

from switchyard.common.testing.infra import async_wait_until
from switchyard.common.testing.unreachable_bus import UnreachableBus, quick_retries
from switchyard.history.app import create_app
from switchyard.history.config import Settings


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    quick_retries(monkeypatch)


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def test_history_starts_and_subscribes_once_the_bus_answers(
    service_settings: Settings,
) -> None:
    bus = UnreachableBus(failures=3)
    app = create_app(service_settings, bus=bus)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://history") as client,
    ):
        assert (await client.get("/livez")).status_code == 200
        await async_wait_until(
            lambda: _ready(client), timeout=10, interval=0.01, message="history ready"
        )
        assert bus.attempts == 4
        assert app.state.consumer.consuming()
    await bus.stop()


async def test_history_not_ready_while_the_bus_never_answers_and_stops_cleanly(
    service_settings: Settings,
) -> None:
    bus = UnreachableBus(failures=10**6)
    app = create_app(service_settings, bus=bus)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://history") as client,
    ):
        await async_wait_until(
            lambda: _attempted(bus, 3), timeout=10, interval=0.01, message="three attempts"
        )
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["bus"] is False
        # Reads still answer (from what is in the database) instead of waiting for a
        # consumer that is not there.
        assert await app.state.read_barrier() is False
    await bus.stop()


async def _attempted(bus: UnreachableBus, count: int) -> bool:
    return bus.attempts >= count
