"""Subscriptions a service makes at start-up, kept trying while the bus is away.

A service started while Kafka is unreachable (down, restarting, a wrong
`KAFKA_BOOTSTRAP_SERVERS`) or its topics are not created yet must not die with a
traceback: it serves `/livez`, fails readiness, and subscribes as soon as the bus takes
it, as the gateway's listeners do. `RetriedSubscriptions` does that for history's event
consumer and inference's request lanes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog

from switchyard.common.backoff import Backoff
from switchyard.common.bus.base import Subscription
from switchyard.common.tasks import cancel_and_wait

log = structlog.get_logger("switchyard.common.bus")

# Between attempts to subscribe while the bus is away (read when an attempt fails, so a
# test may make it quicker).
STARTUP_BACKOFF = Backoff(initial_s=0.25, max_s=5.0)

Subscribe = Callable[[], Awaitable[Subscription]]


class RetriedSubscriptions:
    """The subscriptions `subscribes` make, in order, each once: all made by `start` if
    the bus takes them then, else the rest retried in the background (a warning each
    time naming `what` is not consumed yet, with the error and the wait, then one line
    once it is), until `stop`.

    `subscriptions` holds those made so far; `consuming()` says whether all are."""

    def __init__(self, subscribes: Sequence[Subscribe], what: str) -> None:
        self._subscribes = subscribes
        self._what = what
        self.subscriptions: list[Subscription] = []
        self._retrying: asyncio.Task[None] | None = None

    def consuming(self) -> bool:
        """Whether every subscription is made."""
        return len(self.subscriptions) == len(self._subscribes)

    async def start(self) -> None:
        """Make every subscription now; if the bus refuses one, keep trying in the
        background. Never raises for the bus being away."""
        try:
            await self._subscribe_rest()
        except Exception as exc:  # noqa: BLE001 - Kafka down or topic missing: retried
            delay = self._failed(exc, 1)
            self._retrying = asyncio.create_task(self._retry(delay), name=f"subscribe-{self._what}")

    async def stop(self) -> None:
        """Stop trying, and stop the subscriptions made (the last made first)."""
        if self._retrying is not None:
            await cancel_and_wait(self._retrying)
        for subscription in reversed(self.subscriptions):
            await subscription.stop()

    async def _subscribe_rest(self) -> None:
        while not self.consuming():
            self.subscriptions.append(await self._subscribes[len(self.subscriptions)]())

    async def _retry(self, delay: float) -> None:
        attempt = 1
        while not self.consuming():
            await asyncio.sleep(delay)
            attempt += 1
            try:
                await self._subscribe_rest()
            except Exception as exc:  # noqa: BLE001 - Kafka down or topic missing: retried
                delay = self._failed(exc, attempt)
        log.info("consuming after the bus came back", what=self._what, attempts=attempt)

    def _failed(self, exc: Exception, attempt: int) -> float:
        """Log that attempt number `attempt` failed with `exc`; the wait before the next."""
        delay = STARTUP_BACKOFF.delay(attempt)
        log.warning(f"cannot consume {self._what} yet; retrying", error=repr(exc), retry_in_s=delay)
        return delay
