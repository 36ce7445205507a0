"""Unit fixtures: a temporary SQLite database migrated with the real Alembic scripts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common.db import create_engine, upgrade
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE
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
    engine = create_engine(database_url)
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
