"""Test support for suites that need a provider: the simulator served over real HTTP on a
free 127.0.0.1 port in a background thread, and a handle on its control API (`/_sim/`).

Loaded into pytest through the `pytest11` entry point (`switchyard-simulator`), so every
suite has the fixtures `simulator_server` (the root URL of one simulator per session) and
`simulator` (a `SimulatorHandle` on it, reset before and after each test) without
declaring them. Suites whose simulator runs in another process (e2e, benchmarks) reach it
with `simulator_at(root)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import httpx
import pytest

from switchyard.common.testing.servers import serve_app


@dataclass
class SimulatorHandle:
    """A running simulator: its root URL and a client of its control API. `stats()` is
    the JSON of `/_sim/stats`; `fault(...)` posts one fault to `/_sim/faults`; every
    method raises httpx.HTTPStatusError when the simulator refuses the call."""

    root: str  # http://127.0.0.1:PORT
    control: httpx.Client

    @property
    def openai_url(self) -> str:
        """The base URL an OpenAI client uses for this simulator (`<root>/v1`)."""
        return f"{self.root}/v1"

    def stats(self) -> dict[str, Any]:
        """The counters of `/_sim/stats` (`routes`, `models`, `total`, faults, `latency_ms`)."""
        return cast(dict[str, Any], self.control.get("/_sim/stats").raise_for_status().json())

    def calls(self, model: str | None = None) -> int:
        """Calls the simulator served for `model`, or in total when `model` is None."""
        stats = self.stats()
        return cast(int, stats["models"].get(model, 0) if model else stats["total"])

    def fault(self, **fault: Any) -> None:
        """Queue one fault; keyword arguments are the fields of `/_sim/faults` (`status`,
        `count`, `retry_after` seconds, `should_retry`, `hang`, `model`, `stream_error_after`,
        `error_type`)."""
        self.control.post("/_sim/faults", json=fault).raise_for_status()

    def latency(self, latency_ms: float) -> None:
        """Set the simulator's base latency of every reply, in milliseconds."""
        self.control.put("/_sim/latency", json={"latency_ms": latency_ms}).raise_for_status()

    @contextmanager
    def slowed(self, latency_ms: float) -> Iterator[None]:
        """Every answer `latency_ms` late until the block ends, then prompt again."""
        self.latency(latency_ms)
        try:
            yield
        finally:
            self.latency(0)

    def reset(self) -> None:
        """Clear faults, counters and the prompt cache, and set latency back to 0."""
        self.control.post("/_sim/reset").raise_for_status()
        self.latency(0)


@contextmanager
def simulator_at(root: str, *, reset: bool = False) -> Iterator[SimulatorHandle]:
    """A handle on the simulator at `root` (http://host:port, no /v1) until the block ends;
    with `reset`, its faults, counts and latency are cleared before and after."""
    with httpx.Client(base_url=root, timeout=5) as control:
        handle = SimulatorHandle(root, control)
        if reset:
            handle.reset()
        try:
            yield handle
        finally:
            if reset:
                control.post("/_sim/reset")


@contextmanager
def serve_simulator() -> Iterator[str]:
    """Run the simulator over real HTTP until the block ends; yields its root URL."""
    from switchyard.simulator.app import create_simulator_app

    with serve_app(create_simulator_app()) as root:
        yield root


@pytest.fixture(scope="session")
def simulator_server() -> Iterator[str]:
    """The root URL of a simulator served for the whole session (in a background thread,
    so it outlives each test's event loop)."""
    with serve_simulator() as root:
        yield root


@pytest.fixture
def simulator(simulator_server: str) -> Iterator[SimulatorHandle]:
    """The session's simulator with no faults, counts or latency, reset again afterwards."""
    with simulator_at(simulator_server, reset=True) as handle:
        yield handle
