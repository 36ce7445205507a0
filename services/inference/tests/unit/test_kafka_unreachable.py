"""Inference with the event bus unreachable at start-up (Kafka down, a wrong
KAFKA_BOOTSTRAP_SERVERS): it starts, answers /livez, fails /readyz, and keeps subscribing
to its request lanes in the background until the bus takes them, as the gateway's
listeners do; it used to fail its start-up with a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from switchyard.common.testing.unreachable_bus import UnreachableBus, quick_retries, started
from switchyard.inference.app import create_app
from switchyard.inference.config import Settings


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    quick_retries(monkeypatch)


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


async def test_inference_starts_and_subscribes_both_lanes_once_the_bus_answers(
    simulator: Any, tmp_path: Path
) -> None:
    bus = UnreachableBus(failures=3)
    app = create_app(_settings(simulator, tmp_path), bus=bus)
    async with started(app, bus, "inference") as service:
        await service.assert_live_then_ready()
        assert bus.attempts == 5  # three refused, then each lane once
        assert len(app.state.consumers.subscriptions) == 2


async def test_inference_not_ready_while_the_bus_never_answers_and_stops_cleanly(
    simulator: Any, tmp_path: Path
) -> None:
    bus = UnreachableBus(failures=10**6)
    app = create_app(_settings(simulator, tmp_path), bus=bus)
    async with started(app, bus, "inference") as service:
        await service.assert_not_ready()
