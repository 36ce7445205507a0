"""Fixtures of the inference unit tests: the provider simulator served for real over HTTP
on a free 127.0.0.1 port (in a background thread, so it outlives each test's event loop),
reset before every test."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from switchyard.inference.simulator import create_simulator_app


@dataclass
class SimulatorHandle:
    root: str  # http://127.0.0.1:PORT
    control: httpx.Client

    @property
    def openai_url(self) -> str:
        return f"{self.root}/v1"

    def stats(self) -> dict[str, Any]:
        return self.control.get("/_sim/stats").raise_for_status().json()

    def calls(self, model: str | None = None) -> int:
        stats = self.stats()
        return stats["models"].get(model, 0) if model else stats["total"]

    def fault(self, **fault: Any) -> None:
        self.control.post("/_sim/faults", json=fault).raise_for_status()

    def latency(self, latency_ms: float) -> None:
        self.control.put("/_sim/latency", json={"latency_ms": latency_ms}).raise_for_status()


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="session")
def simulator_server() -> Iterator[str]:
    sock = _free_socket()
    config = uvicorn.Config(
        create_simulator_app(), log_level="warning", lifespan="on", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the simulator did not start")
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def simulator(simulator_server: str) -> Iterator[SimulatorHandle]:
    with httpx.Client(base_url=simulator_server, timeout=5) as control:
        control.post("/_sim/reset").raise_for_status()
        control.put("/_sim/latency", json={"latency_ms": 0}).raise_for_status()
        yield SimulatorHandle(simulator_server, control)
        control.post("/_sim/reset")
