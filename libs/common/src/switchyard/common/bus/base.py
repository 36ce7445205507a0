"""The event bus interface. Handlers receive decoded events and know nothing of the
implementation they run on (Kafka in production, memory in embedded mode and unit tests).

Two ways to receive events:
- `subscribe`: a consumer group. Each event goes to one member; the event counts as
  consumed only after the handler returned (Kafka commits the offset then), so a crash
  means redelivery, never loss. A handler that keeps failing is retried with backoff and,
  if its retry policy gives up, the event goes to the dead-letter topic.
- `listen`: every listener sees every new event (no group, no commits), e.g. a gateway
  replica reading the replies addressed to it.
"""

from __future__ import annotations

import abc
import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from switchyard.common.events import EnvelopeFields, Event

Handler = Callable[[Event], Awaitable[None]]
BatchHandler = Callable[[list[Event]], Awaitable[None]]


class BusUnavailableError(RuntimeError):
    """The bus did not accept an event in time (e.g. Kafka is unreachable)."""


class EventTooLargeError(BusUnavailableError):
    """The event is larger than the bus carries (Kafka's `max.message.bytes` of the topic,
    or the producer's limit, `SWITCHYARD_KAFKA_MAX_MESSAGE_BYTES`): retrying cannot help."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing handler is retried before its event is dead-lettered.

    `max_attempts=None` retries forever: right for a consumer whose only failure mode is
    a dependency being down (history and its database), where dead-lettering would lose
    the event from the store.
    """

    max_attempts: int | None = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 10.0

    def backoff(self, attempt: int) -> float:
        # Exponential backoff with full jitter, so replicas don't retry in lockstep.
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)

    def gives_up_after(self, attempt: int) -> bool:
        return self.max_attempts is not None and attempt >= self.max_attempts


class Subscription(abc.ABC):
    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop receiving; wait for handlers in progress and record their progress."""


class EventBus(abc.ABC):
    """Publish and receive events. Start before use, stop to flush and release."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def publish(
        self,
        topic: str,
        event: EnvelopeFields,
        *,
        key: str | None = None,
        partition: int | None = None,
    ) -> None:
        """Publish and wait until the bus has durably accepted the event.
        Raises BusUnavailableError if it cannot within its timeout."""

    @abc.abstractmethod
    async def subscribe(
        self,
        topics: Sequence[str],
        group: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        retry: RetryPolicy = RetryPolicy(),
    ) -> Subscription:
        """Join consumer group `group`; up to `concurrency` events are handled at once."""

    @abc.abstractmethod
    async def subscribe_batch(
        self,
        topics: Sequence[str],
        group: str,
        handler: BatchHandler,
        *,
        max_batch: int = 500,
        retry: RetryPolicy = RetryPolicy(max_attempts=None),
    ) -> Subscription:
        """Join consumer group `group` and receive events in batches (one at a time)."""

    @abc.abstractmethod
    async def listen(
        self, topic: str, handler: Handler, *, partitions: Sequence[int] | None = None
    ) -> Subscription:
        """Receive every event published from now on (optionally only some partitions)."""

    @abc.abstractmethod
    async def partition_count(self, topic: str) -> int: ...

    async def healthy(self) -> bool:
        return True

    async def caught_up(self, group: str, timeout: float) -> bool:
        """Wait at most `timeout` seconds until consumer group `group` of this process has
        handled every event published before the call; True if it has. A bus whose
        publishers live in other processes (Kafka) cannot tell and answers True at once."""
        return True


async def call_with_retry(
    handle: Callable[[], Awaitable[None]],
    retry: RetryPolicy,
    on_retry: Callable[[int, BaseException], None],
) -> BaseException | None:
    """Run `handle` until it succeeds or the policy gives up (then return the last error)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            await handle()
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any handler failure is retried, then dead-lettered
            if retry.gives_up_after(attempt):
                return exc
            on_retry(attempt, exc)
            await asyncio.sleep(retry.backoff(attempt))
