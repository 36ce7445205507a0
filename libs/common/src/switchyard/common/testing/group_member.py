"""A Kafka consumer-group member (the Kafka bus's `_GroupSubscription`) on a fake consumer,
for unit tests of what it does between polls, commits and rebalances without a broker."""

from __future__ import annotations

from typing import Any

from switchyard.common.bus.base import Handler, RetryPolicy
from switchyard.common.bus.kafka import KafkaBus, _GroupSubscription


def group_member(consumer: Any, handler: Handler, **options: Any) -> _GroupSubscription:
    """A member of group `g` on topic `requests` handling up to 4 events at once with
    `handler`, its dependencies always healthy, reading from `consumer` (a fake with the
    `AIOKafkaConsumer` methods the test needs). `options` go to `_GroupSubscription`
    (e.g. `commit_interval_s`). Its bus never connects (`127.0.0.1:1`)."""

    async def healthy() -> bool:
        return True

    member = _GroupSubscription(
        KafkaBus("127.0.0.1:1"),
        ["requests"],
        "g",
        handler,
        concurrency=4,
        retry=RetryPolicy(),
        dependencies=healthy,
        **options,
    )
    member.consumer = consumer
    return member
