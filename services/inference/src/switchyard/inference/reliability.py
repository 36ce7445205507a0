"""What keeps a replica useful when upstreams misbehave: retry backoff, a circuit breaker
per deployment, per-deployment concurrency limits that serve interactive work first.

State lives per (public model, deployment name) for the life of the process, so it
survives routing reloads that keep a deployment; the Prometheus gauge
`switchyard_inference_circuit_state` shows each breaker (0 closed, 1 open, 2 half-open).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum

# The retries of one deployment wait by the common policy (full jitter, capped).
from switchyard.common.backoff import Backoff as Backoff
from switchyard.common.events import Priority
from switchyard.common.routing import Deployment
from switchyard.inference import metrics


class CircuitState(IntEnum):
    """A circuit breaker's state, as `switchyard_inference_circuit_state` exports it: 0
    closed, 1 open, 2 half-open."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True)
class BreakerPolicy:
    """When a deployment's circuit opens: after `failure_threshold` consecutive failures,
    for `cooldown_s` seconds before a probe call is let through."""

    failure_threshold: int = 5
    cooldown_s: float = 30.0


class CircuitBreaker:
    """Closed: calls pass; `failure_threshold` consecutive failures open it. Open: calls
    are refused for `cooldown_s`; then one call (the probe) is let through, half-open. The
    probe's success closes the circuit, its failure opens it for another cool-down.

    A caller that got `allow() == True` must end with `success()`, `failure()` or
    `release()` (neither: e.g. the call was cancelled), so a probe never stays claimed."""

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self.policy = policy
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probe_out = False
        self._clock = clock
        self._on_change = on_change

    def _set(self, state: CircuitState) -> None:
        if state is not self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

    def allow(self) -> bool:
        """Whether a call may go to the deployment now: always while closed; while open, not
        until the cool-down is over, then once (the half-open probe) until it ends."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if self._clock() - self.opened_at < self.policy.cooldown_s:
                return False
            self._set(CircuitState.HALF_OPEN)
        if self._probe_out:
            return False
        self._probe_out = True
        return True

    def success(self) -> None:
        """A call answered: reset the failure count and close the circuit."""
        self._probe_out = False
        self.failures = 0
        self._set(CircuitState.CLOSED)

    def failure(self) -> None:
        """A call failed as an outage would (5xx, timeout, connection): count it, and open
        the circuit at the threshold or when the half-open probe failed."""
        self._probe_out = False
        self.failures += 1
        if self.state is CircuitState.HALF_OPEN or self.failures >= self.policy.failure_threshold:
            self.opened_at = self._clock()
            self._set(CircuitState.OPEN)

    def release(self) -> None:
        """A call allowed ended without saying anything of the deployment (cancelled, not
        sent): free the probe slot, leaving the state as it is."""
        self._probe_out = False

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when not open)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self.policy.cooldown_s - (self._clock() - self.opened_at))


class PriorityLimiter:
    """A semaphore whose waiters are served interactive first, then batch, each in order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: dict[Priority, deque[asyncio.Future[None]]] = {
            Priority.INTERACTIVE: deque(),
            Priority.BATCH: deque(),
        }

    @property
    def full(self) -> bool:
        """Whether every slot is taken (a new call would wait)."""
        return self.in_use >= self.capacity

    def _waiting(self) -> int:
        return sum(len(queue) for queue in self._waiters.values())

    async def acquire(self, priority: Priority = Priority.INTERACTIVE) -> None:
        """Wait for a slot for a request of `priority`: interactive waiters are served
        before batch ones, each in arrival order. A cancelled waiter gives its place (or
        the slot it was just handed) back."""
        if self.in_use < self.capacity and not self._waiting():
            self.in_use += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiters[priority]
        queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over as we were cancelled
            else:
                queue.remove(future)
            raise

    def release(self) -> None:
        """Free a slot: hand it to the first waiter (interactive first), else count it free."""
        for priority in (Priority.INTERACTIVE, Priority.BATCH):
            queue = self._waiters[priority]
            while queue:
                future = queue.popleft()
                if not future.done():
                    future.set_result(None)  # the slot passes to the waiter
                    return
        self.in_use -= 1

    @asynccontextmanager
    async def slot(self, priority: Priority = Priority.INTERACTIVE) -> AsyncIterator[None]:
        """Hold a slot of `priority` for the duration of the `async with` block."""
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()


class DeploymentState:
    """Breaker and concurrency limit of one deployment of one model."""

    def __init__(
        self,
        model: str,
        deployment: Deployment,
        policy: BreakerPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.name = deployment.name
        self.limiter = (
            PriorityLimiter(deployment.max_concurrency) if deployment.max_concurrency else None
        )
        gauge = metrics.CIRCUIT_STATE.labels(model, deployment.name)
        gauge.set(CircuitState.CLOSED)
        self.breaker = CircuitBreaker(policy, clock=clock, on_change=lambda state: gauge.set(state))

    @property
    def full(self) -> bool:
        """Whether the deployment's concurrency limit is reached (never without one)."""
        return self.limiter is not None and self.limiter.full

    def update(self, deployment: Deployment) -> None:
        """Follow a reloaded `max_concurrency` (calls holding the old limiter keep it)."""
        capacity = deployment.max_concurrency
        if capacity is None:
            self.limiter = None
        elif self.limiter is None or self.limiter.capacity != capacity:
            self.limiter = PriorityLimiter(capacity)

    @asynccontextmanager
    async def slot(self, priority: Priority) -> AsyncIterator[None]:
        """Hold one of the deployment's `max_concurrency` slots for the block (at once when
        unlimited)."""
        limiter = self.limiter
        if limiter is None:
            yield
            return
        async with limiter.slot(priority):
            yield


class DeploymentStates:
    """Every deployment's state, created on first use; `clock` (seconds, monotonic) times
    the breakers' cool-downs."""

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._states: dict[tuple[str, str], DeploymentState] = {}

    def get(self, model: str, deployment: Deployment) -> DeploymentState:
        """The state of `deployment` of public `model`, created on first use and following
        the deployment's reloaded settings after."""
        key = (model, deployment.name)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = DeploymentState(model, deployment, self.policy, self._clock)
        else:
            state.update(deployment)
        return state

    def order(self, model: str, deployments: list[Deployment]) -> list[Deployment]:
        """Within each run of equal priority, deployments with free capacity first."""
        if len(deployments) < 2:
            return deployments
        states = [self.get(model, deployment) for deployment in deployments]
        if not any(state.full for state in states):
            return deployments
        result: list[Deployment] = []
        group: list[tuple[Deployment, DeploymentState]] = []
        group_key: object = None
        for position, (deployment, state) in enumerate(zip(deployments, states, strict=True)):
            key = deployment.priority if deployment.priority is not None else ("pos", position)
            if group and key != group_key:
                result += [d for d, s in group if not s.full] + [d for d, s in group if s.full]
                group = []
            group_key = key
            group.append((deployment, state))
        result += [d for d, s in group if not s.full] + [d for d, s in group if s.full]
        return result
