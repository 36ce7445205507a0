"""An in-memory bus that refuses its first subscriptions as a Kafka bus does while no
broker answers, for tests of a service started before the bus is reachable, and the
checks those tests share: the service is live at once and ready once the bus takes its
subscriptions, or not ready, naming the bus, while it never does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from typing_extensions import override

from switchyard.common.backoff import Backoff
from switchyard.common.bus import InMemoryBus, retrying
from switchyard.common.testing.infra import async_wait_until


class UnreachableBus(InMemoryBus):
    """`InMemoryBus` whose first `failures` calls of `subscribe` and `subscribe_batch`
    (counted together in `attempts`) raise ConnectionError, as aiokafka's do when no
    broker answers; later ones subscribe."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    def _attempt(self) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")

    @override
    async def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        self._attempt()
        return await super().subscribe(*args, **kwargs)

    @override
    async def subscribe_batch(self, *args: Any, **kwargs: Any) -> Any:
        self._attempt()
        return await super().subscribe_batch(*args, **kwargs)


def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `RetriedSubscriptions` retry within milliseconds (for the test's duration)."""
    monkeypatch.setattr(retrying, "STARTUP_BACKOFF", Backoff(initial_s=0.01, max_s=0.05))


@dataclass
class StartedService:
    """A service started on an `UnreachableBus`: a client of its HTTP API, and the bus."""

    client: httpx.AsyncClient
    bus: UnreachableBus

    async def assert_live_then_ready(self) -> None:
        """`/livez` answers 200 at once, and `/readyz` 200 within ten seconds (polled);
        raises AssertionError otherwise."""
        assert (await self.client.get("/livez")).status_code == 200

        async def ready() -> bool:
            return (await self.client.get("/readyz")).status_code == 200

        await async_wait_until(
            ready, timeout=10, interval=0.01, message=f"{self.client.base_url.host} ready"
        )

    async def assert_not_ready(self, attempts: int = 3) -> None:
        """Once the bus has refused `attempts` subscriptions (within ten seconds), `/readyz`
        answers 503 with its `bus` check false; raises AssertionError otherwise."""

        async def attempted() -> bool:
            return self.bus.attempts >= attempts

        await async_wait_until(
            attempted, timeout=10, interval=0.01, message=f"{attempts} subscription attempts"
        )
        ready = await self.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["bus"] is False


@asynccontextmanager
async def started(app: Any, bus: UnreachableBus, service: str) -> AsyncIterator[StartedService]:
    """Run the FastAPI `app` (built on `bus`) through its lifespan, and yield it with a
    client at `http://<service>`; stop `bus` afterwards."""
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url=f"http://{service}") as client,
        ):
            yield StartedService(client, bus)
    finally:
        await bus.stop()
