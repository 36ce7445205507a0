"""The event bus: one interface, a Kafka implementation and an in-memory one."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Protocol, TypeVar

from switchyard.common.bus.base import (
    USAGE_HEADER,
    BatchHandler,
    BusUnavailableError,
    Carried,
    EventBus,
    EventRejectedError,
    EventTooLargeError,
    Handler,
    HealthCheck,
    KeyFilter,
    Offsets,
    Publication,
    PublishOutcomeUnknownError,
    RetryPolicy,
    Subscription,
    delivery_may_repeat,
)
from switchyard.common.bus.memory import InMemoryBus
from switchyard.common.settings import ServiceSettings
from switchyard.common.topics import Topics

__all__ = [
    "BatchHandler",
    "BusUnavailableError",
    "Carried",
    "EventBus",
    "EventRejectedError",
    "EventTooLargeError",
    "Handler",
    "HealthCheck",
    "KeyFilter",
    "Offsets",
    "Publication",
    "PublishOutcomeUnknownError",
    "InMemoryBus",
    "RetryPolicy",
    "Subscription",
    "USAGE_HEADER",
    "delivery_may_repeat",
    "create_bus",
    "enter_bus",
]


def create_bus(settings: ServiceSettings, client_id: str) -> EventBus:
    """The bus the settings ask for. Kafka is imported only when used."""
    topics = Topics(settings.topic_prefix)
    if settings.bus == "kafka":
        from switchyard.common import kafka_security as security
        from switchyard.common.bus.kafka import KafkaBus
        from switchyard.common.settings import kafka_security

        security.use(kafka_security(settings))
        return KafkaBus(
            settings.kafka_bootstrap_servers,
            client_id=client_id,
            deadletter_topic=topics.deadletter,
            max_message_bytes=settings.kafka_max_message_bytes,
            commit_interval_s=settings.kafka_commit_interval_ms / 1000,
        )
    return InMemoryBus()


class _Closable(Protocol):
    async def close(self) -> None: ...


_Built = TypeVar("_Built", bound=_Closable)


async def enter_bus(
    stack: AsyncExitStack,
    settings: ServiceSettings,
    given: EventBus | None,
    *,
    client_id: str,
    build: Callable[[EventBus], _Built],
) -> tuple[EventBus, _Built]:
    """The bus of a service's lifespan and what `build` makes on it (its composition
    root's components, which have an async `close`), both undone by `stack`.

    `given` is the caller's bus: used as it is, never started or stopped here. Without
    one, the bus `settings` ask for is made (`create_bus`, as `client_id`) and started
    after `build`; when `stack` unwinds it is stopped first, then the components closed.
    Raises what `build` and the bus's `start` raise."""
    bus = given or create_bus(settings, client_id=client_id)
    built = build(bus)
    stack.push_async_callback(built.close)
    if given is None:
        await bus.start()
        stack.push_async_callback(bus.stop)
    return bus, built
