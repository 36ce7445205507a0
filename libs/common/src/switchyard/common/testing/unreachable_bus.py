"""An in-memory bus that refuses its first subscriptions as a Kafka bus does while no
broker answers, for tests of a service started before the bus is reachable."""

from __future__ import annotations

from typing import Any

import pytest
from typing_extensions import override

from switchyard.common.backoff import Backoff
from switchyard.common.bus import InMemoryBus, retrying


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
