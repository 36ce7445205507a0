"""Fixtures of the inference unit tests: the provider simulator and a recording upstream,
each served for real over HTTP on a free 127.0.0.1 port (in a background thread, so it
outlives each test's event loop), reset before every test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from switchyard.common.testing.servers import serve_app
from switchyard.inference.testing import RecordingUpstream
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


@pytest.fixture(scope="session")
def recording_server() -> Iterator[tuple[RecordingUpstream, str]]:
    recorder = RecordingUpstream()
    with serve_app(recorder.app()) as root:
        yield recorder, root


@pytest.fixture
def recorder(recording_server: tuple[RecordingUpstream, str]) -> Iterator[RecordingUpstream]:
    """The recording upstream, with nothing recorded or scripted; `recorder.root` is its
    URL."""
    recorder, root = recording_server
    recorder.script()
    recorder.root = root
    yield recorder
    recorder.script()
