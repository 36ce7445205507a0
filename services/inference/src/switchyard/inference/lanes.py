"""Priority lanes: batch work never delays interactive work.

The two request topics are consumed by two subscriptions (interactive with concurrency N,
batch with a smaller M), so a backlog of batch requests can never sit in front of an
interactive one. On top of that, `LaneGate` holds batch requests back while interactive
work uses more than `batch_yield_ratio` of its capacity: under interactive load the
replica's CPU, connections and deployment slots go to interactive requests, and batch
work resumes when the load falls. Batch work already running is not interrupted; the
per-deployment limiters also serve interactive waiters first
(`reliability.PriorityLimiter`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from switchyard.common.events import Priority
from switchyard.inference import metrics


class LaneGate:
    """The two priority lanes of one replica: at most `interactive_capacity` interactive and
    `batch_capacity` batch requests in flight, and a batch request starts only while fewer
    than `batch_yield_ratio` of the interactive slots are taken, so batch work yields to
    interactive traffic. In-flight counts are exported as `switchyard_inference_lane_in_flight`."""

    def __init__(
        self, interactive_capacity: int, batch_capacity: int, batch_yield_ratio: float = 0.5
    ) -> None:
        self.interactive_capacity = interactive_capacity
        self.batch_capacity = batch_capacity
        # Batch may start while interactive in-flight is below this (at least 1 slot).
        self.batch_threshold = max(1, int(interactive_capacity * batch_yield_ratio))
        self.interactive = 0
        self.batch = 0
        self._batch_waiters: deque[asyncio.Future[None]] = deque()
        self._interactive_gauge = metrics.LANE_IN_FLIGHT.labels("interactive")
        self._batch_gauge = metrics.LANE_IN_FLIGHT.labels("batch")

    def batch_may_start(self) -> bool:
        """Whether a waiting batch request may take a slot now."""
        return self.interactive < self.batch_threshold and self.batch < self.batch_capacity

    def _wake_next(self) -> None:
        if not self.batch_may_start():
            return
        while self._batch_waiters:
            future = self._batch_waiters.popleft()
            if not future.done():
                future.set_result(None)
                return

    async def _enter_batch(self) -> None:
        first_wait = True
        while not self.batch_may_start():
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            # A waiter woken too late (the gate closed again) keeps its place in line.
            if first_wait:
                self._batch_waiters.append(future)
            else:
                self._batch_waiters.appendleft(future)
            first_wait = False
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._wake_next()  # pass the wake-up on
                else:
                    self._batch_waiters.remove(future)
                raise
        self.batch += 1
        self._wake_next()  # there may be room for more than one

    @asynccontextmanager
    async def slot(self, priority: Priority) -> AsyncIterator[None]:
        """Hold a slot of the request's lane while it is handled. Batch waits (cancellably,
        e.g. by its deadline) until the gate lets it start."""
        batch = priority is Priority.BATCH
        if batch:
            await self._enter_batch()
        else:
            self.interactive += 1
        self._gauge()
        try:
            yield
        finally:
            if batch:
                self.batch -= 1
            else:
                self.interactive -= 1
            self._gauge()
            if self._batch_waiters:
                self._wake_next()

    def _gauge(self) -> None:
        self._interactive_gauge.set(self.interactive)
        self._batch_gauge.set(self.batch)
