"""Composition root of the history service: wires the database into the recorder and
the queries. Tests build the same components against a temporary database."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common.db import create_engine
from switchyard.history.config import Settings
from switchyard.history.handlers import EventRecorder
from switchyard.history.queries import HistoryQueries

log = structlog.get_logger("switchyard.history")


@dataclass
class HistoryComponents:
    engine: AsyncEngine
    recorder: EventRecorder
    queries: HistoryQueries

    async def database_ready(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            log.warning("database not ready", error=repr(exc))
            return False
        return True

    async def close(self) -> None:
        await self.engine.dispose()


def build_components(settings: Settings) -> HistoryComponents:
    engine = create_engine(settings.database_url)
    return HistoryComponents(
        engine=engine, recorder=EventRecorder(engine), queries=HistoryQueries(engine)
    )
