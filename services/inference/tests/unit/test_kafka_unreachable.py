"""Inference with the event bus unreachable at start-up (Kafka down, a wrong
KAFKA_BOOTSTRAP_SERVERS): it starts, answers /livez, fails /readyz, and keeps subscribing
to its request lanes in the background until the bus takes them, as the gateway's
listeners do; it used to fail its start-up with a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from switchyard.common.backoff import Backoff
from switchyard.common.bus import InMemoryBus
from switchyard.common.testing.infra import async_wait_until
from switchyard.inference import app as inference_app
from switchyard.inference.app import create_app
from switchyard.inference.config import Settings


class UnreachableBus(InMemoryBus):
    """An in-memory bus whose first `failures` subscriptions fail as aiokafka's do when
    no broker answers."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    async def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")
        return await super().subscribe(*args, **kwargs)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference_app, "STARTUP_BACKOFF", Backoff(initial_s=0.01, max_s=0.05))


def _settings(simulator: Any, tmp_path: Path) -> Settings:
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "models:\n  sim-small:\n    deployments:\n"
        "      - {name: sim, provider: openai, model: sim-small,"
        f" base_url: '{simulator.openai_url}'}}\n"
    )
    return Settings(
        topic_prefix="kafkadown", routing_file=str(routing), routing_reload_interval_s=0
    )


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def _attempted(bus: UnreachableBus, count: int) -> bool:
    return bus.attempts >= count


async def test_inference_starts_and_subscribes_both_lanes_once_the_bus_answers(
    simulator: Any, tmp_path: Path
) -> None:
    bus = UnreachableBus(failures=3)
    app = create_app(_settings(simulator, tmp_path), bus=bus)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://inference") as client,
    ):
        assert (await client.get("/livez")).status_code == 200
        await async_wait_until(
            lambda: _ready(client), timeout=10, interval=0.01, message="inference ready"
        )
        assert bus.attempts == 5  # three refused, then each lane once
        assert len(app.state.consumers.subscriptions) == 2
    await bus.stop()


async def test_inference_not_ready_while_the_bus_never_answers_and_stops_cleanly(
    simulator: Any, tmp_path: Path
) -> None:
    bus = UnreachableBus(failures=10**6)
    app = create_app(_settings(simulator, tmp_path), bus=bus)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://inference") as client,
    ):
        await async_wait_until(
            lambda: _attempted(bus, 3), timeout=10, interval=0.01, message="three attempts"
        )
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["bus"] is False
    await bus.stop()
