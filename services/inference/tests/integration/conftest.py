"""Fixtures of the inference integration tests: the provider simulator over HTTP on a
free 127.0.0.1 port (real Kafka comes from `switchyard.common.testing`)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from switchyard.simulator.testing import SimulatorHandle, serve_simulator


@pytest.fixture(scope="session")
def simulator_server() -> Iterator[str]:
    with serve_simulator() as root:
        yield root


@pytest.fixture
def simulator(simulator_server: str) -> Iterator[SimulatorHandle]:
    with httpx.Client(base_url=simulator_server, timeout=5) as control:
        handle = SimulatorHandle(simulator_server, control)
        handle.reset()
        yield handle
        control.post("/_sim/reset")
