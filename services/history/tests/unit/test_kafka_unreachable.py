"""History with the event bus unreachable at start-up (Kafka down, a wrong
KAFKA_BOOTSTRAP_SERVERS): it starts, answers /livez, fails /readyz, and keeps subscribing
in the background until the bus takes it, as the gateway's listeners do; it used to fail
its start-up with a traceback."""

from __future__ import annotations

import pytest

from switchyard.common.testing.unreachable_bus import UnreachableBus, quick_retries, started
from switchyard.history.app import create_app
from switchyard.history.config import Settings


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    quick_retries(monkeypatch)


async def test_history_starts_and_subscribes_once_the_bus_answers(
    service_settings: Settings,
) -> None:
    bus = UnreachableBus(failures=3)
    app = create_app(service_settings, bus=bus)
    async with started(app, bus, "history") as service:
        await service.assert_live_then_ready()
        assert bus.attempts == 4
        assert app.state.consumer.consuming()


async def test_history_not_ready_while_the_bus_never_answers_and_stops_cleanly(
    service_settings: Settings,
) -> None:
    bus = UnreachableBus(failures=10**6)
    app = create_app(service_settings, bus=bus)
    async with started(app, bus, "history") as service:
        await service.assert_not_ready()
        # Reads still answer (from what is in the database) instead of waiting for a
        # consumer that is not there.
        assert await app.state.read_barrier() is False
