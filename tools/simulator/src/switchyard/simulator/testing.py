"""Test support for suites that need a provider: the simulator served over real HTTP on a
free 127.0.0.1 port in a background thread, and a handle on its control API (`/_sim/`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import httpx

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
        `count`, `retry_after` seconds, `hang`, `model`, `stream_error_after`, `error_type`)."""
        self.control.post("/_sim/faults", json=fault).raise_for_status()

    def latency(self, latency_ms: float) -> None:
        """Set the simulator's base latency of every reply, in milliseconds."""
        self.control.put("/_sim/latency", json={"latency_ms": latency_ms}).raise_for_status()

    def reset(self) -> None:
        """Clear faults, counters and the prompt cache, and set latency back to 0."""
        self.control.post("/_sim/reset").raise_for_status()
        self.latency(0)


@contextmanager
def serve_simulator() -> Iterator[str]:
    """Run the simulator over real HTTP until the block ends; yields its root URL."""
    from switchyard.simulator.app import create_simulator_app

    with serve_app(create_simulator_app()) as root:
        yield root
