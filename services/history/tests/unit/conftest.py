"""Unit fixtures: a temporary SQLite database migrated with the real Alembic scripts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common.bus import InMemoryBus
from switchyard.common.db import upgrade
from switchyard.common.testing.infra import async_wait_until
from switchyard.common.topics import Topics
from switchyard.history.app import create_app
from switchyard.history.bootstrap import history_engine
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE, Settings
from switchyard.history.handlers import EventRecorder
from switchyard.history.models import events_table, requests_table
from switchyard.history.queries import HistoryQueries


@pytest.fixture
def database_url(tmp_path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
    upgrade(MIGRATIONS_DIR, url, VERSION_TABLE)
    return url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = history_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def recorder(engine: AsyncEngine) -> EventRecorder:
    return EventRecorder(engine)


@pytest.fixture
def queries(engine: AsyncEngine) -> HistoryQueries:
    return HistoryQueries(engine)


class Tables:
    """What is in the database, read directly, to assert on stored state."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def requests(self) -> dict[str, dict]:
        async with self.engine.connect() as connection:
            rows = (await connection.execute(select(requests_table))).mappings().all()
        return {row["request_id"]: dict(row) for row in rows}

    async def request(self, request_id: str) -> dict:
        return (await self.requests())[request_id]

    async def event_ids(self) -> list[str]:
        async with self.engine.connect() as connection:
            return list((await connection.execute(select(events_table.c.event_id))).scalars())

    async def event_count(self) -> int:
        async with self.engine.connect() as connection:
            return (
                await connection.execute(select(func.count()).select_from(events_table))
            ).scalar_one()


@pytest.fixture
def tables(engine: AsyncEngine) -> Tables:
    return Tables(engine)


TOKEN = "test-internal-token"


@dataclass
class RunningService:
    bus: InMemoryBus
    client: httpx.AsyncClient
    topics: Topics
    app: Any = None

    @property
    def components(self):
        return self.app.state.history

    @staticmethod
    def headers(tenant: str = "acme", user_id: str = "alice", role: str = "user") -> dict[str, str]:
        return {
            "x-switchyard-internal-token": TOKEN,
            "x-switchyard-tenant": tenant,
            "x-switchyard-user-id": user_id,
            "x-switchyard-role": role,
        }

    async def publish(self, *events) -> None:
        for event in events:
            topic = {
                "chat.requested": self.topics.requests_batch
                if event.type == "chat.requested" and event.data.priority == "batch"
                else self.topics.requests_interactive,
                "usage.recorded": self.topics.usage,
            }.get(event.type, self.topics.replies)
            await self.bus.publish(topic, event, key=event.request_id)

    async def wait_for(self, request_id: str, status: str, **identity: str) -> dict:
        async def current() -> dict | None:
            response = await self.client.get(
                f"/v1/history/{request_id}", headers=self.headers(**identity)
            )
            return (
                response.json()
                if response.status_code == 200 and response.json()["status"] == status
                else None
            )

        return await async_wait_until(current, timeout=10, message=f"{request_id} to be {status}")


@pytest.fixture
def token() -> str:
    return TOKEN


@pytest.fixture
def service_settings(database_url: str) -> Settings:
    # The sweeper never runs by itself during a test (its first round is an interval after
    # start-up); tests that want it call it themselves (their requests' deadlines are long
    # past).
    # No gateway: replays are sent without admission unless a test fakes one.
    return Settings(
        database_url=database_url,
        internal_token=TOKEN,
        topic_prefix="t1",
        sweep_interval_s=3600,
        gateway_url="",
    )


@contextlib.asynccontextmanager
async def running_service(settings: Settings, **adapters: Any) -> AsyncIterator[RunningService]:
    """The history app on its own in-memory bus, with a client calling it in-process;
    `adapters` (e.g. `admission=`) are passed to `create_app`, hence to `build`."""
    bus = InMemoryBus()
    app = create_app(settings, bus=bus, **adapters)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://history") as client:
            yield RunningService(
                bus=bus, client=client, topics=Topics(settings.topic_prefix), app=app
            )
    await bus.stop()


@pytest.fixture
def start_service():
    return running_service


@pytest.fixture
async def service(service_settings: Settings) -> AsyncIterator[RunningService]:
    async with running_service(service_settings) as running:
        yield running
