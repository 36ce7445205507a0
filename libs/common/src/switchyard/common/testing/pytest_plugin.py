"""pytest fixtures for real-infrastructure tests (registered as the `switchyard` plugin)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

from switchyard.common.testing.infra import (
    database_url,
    kafka_bootstrap_servers,
    temporary_database,
    unique_prefix,
)

if TYPE_CHECKING:
    from switchyard.common.topics import Topics


@pytest.fixture
def kafka_servers() -> str:
    """Bootstrap servers of the real broker (fails or skips if none is configured)."""
    return kafka_bootstrap_servers()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database on the real server, dropped afterwards."""
    with temporary_database(database_url()) as url:
        yield url


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses, so tests never see each other's events."""
    return unique_prefix()


@pytest.fixture
async def kafka_topics(kafka_servers: str, topic_prefix: str) -> AsyncIterator[Topics]:
    """Every Switchyard topic created under a unique prefix; deleted afterwards."""
    from switchyard.common.kafka_admin import create_topics, delete_topics
    from switchyard.common.topics import Topics

    topics = Topics(topic_prefix)
    await create_topics(kafka_servers, topics, partitions_override=3)
    yield topics
    await delete_topics(kafka_servers, [name for name, _ in topics.all()])
