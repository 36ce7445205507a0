"""Topic administration: create every Switchyard topic with explicit partition counts
(the broker never auto-creates them), list and delete them."""

from __future__ import annotations

import asyncio
import time

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from switchyard.common.kafka_security import client_options
from switchyard.common.settings import DEFAULT_KAFKA_MAX_MESSAGE_BYTES
from switchyard.common.topics import Topics

log = structlog.get_logger("switchyard.topics")


async def create_topics(
    bootstrap_servers: str,
    topics: Topics,
    *,
    replication_factor: int = 1,
    partitions_override: int | None = None,
    max_message_bytes: int = DEFAULT_KAFKA_MAX_MESSAGE_BYTES,
) -> list[str]:
    """Create missing topics; return the names created. Existing topics are left alone.
    `max_message_bytes` sets each new topic's `max.message.bytes` (Kafka's default is
    about 1 MB, less than a model request may be)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        configs = {"max.message.bytes": str(max_message_bytes)}
        wanted = [
            NewTopic(
                name,
                partitions_override or spec.partitions,
                replication_factor,
                topic_configs={**configs, **dict(spec.configs)},
            )
            for name, spec in topics.all()
            if name not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another caller: fine
        for topic in wanted:
            log.info(
                "topic created",
                topic=topic.name,
                partitions=topic.num_partitions,
                replication_factor=replication_factor,
            )
        await _wait_for_leaders(admin, [name for name, _ in topics.all()])
        return [topic.name for topic in wanted]
    finally:
        await admin.close()


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30
) -> None:
    """Return once every partition of `names` has a leader, so the first publish succeeds."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        if all(
            item["error_code"] == 0
            and item["partitions"]
            and all(partition["leader"] >= 0 for partition in item["partitions"])
            for item in described
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics have no leader after {timeout_s}s: {names}")
        await asyncio.sleep(0.1)


async def list_topics(bootstrap_servers: str, prefix: str) -> dict[str, int]:
    """Topics under `prefix` and their partition counts."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options())
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith(prefix + ".")]
        described = await admin.describe_topics(names) if names else []
        return {item["topic"]: len(item["partitions"]) for item in described}
    finally:
        await admin.close()


async def partition_count(bootstrap_servers: str, topic: str) -> int | None:
    """How many partitions `topic` has on the cluster, or None when it does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options())
    try:
        await admin.start()
        if topic not in await admin.list_topics():
            return None
        [described] = await admin.describe_topics([topic])
        return len(described["partitions"]) or None
    finally:
        await admin.close()


async def delete_topics(bootstrap_servers: str, names: list[str]) -> None:
    """Delete the topics in `names` that exist on the cluster at `bootstrap_servers`
    (a comma-separated host:port list); names that do not exist are skipped."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [name for name in names if name in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
