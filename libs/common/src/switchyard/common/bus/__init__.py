"""The event bus: one interface, a Kafka implementation and an in-memory one."""

from __future__ import annotations

from switchyard.common.bus.base import (
    BatchHandler,
    BusUnavailableError,
    EventBus,
    EventRejectedError,
    EventTooLargeError,
    Handler,
    HealthCheck,
    Offsets,
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
    "EventBus",
    "EventRejectedError",
    "EventTooLargeError",
    "Handler",
    "HealthCheck",
    "Offsets",
    "PublishOutcomeUnknownError",
    "InMemoryBus",
    "RetryPolicy",
    "Subscription",
    "delivery_may_repeat",
    "create_bus",
]


def create_bus(settings: ServiceSettings, client_id: str) -> EventBus:
    """The bus the settings ask for. Kafka is imported only when used."""
    topics = Topics(settings.topic_prefix)
    if settings.bus == "kafka":
        from switchyard.common.bus.kafka import KafkaBus

        return KafkaBus(
            settings.kafka_bootstrap_servers,
            client_id=client_id,
            deadletter_topic=topics.deadletter,
            max_message_bytes=settings.kafka_max_message_bytes,
            commit_interval_s=settings.kafka_commit_interval_ms / 1000,
        )
    return InMemoryBus()
