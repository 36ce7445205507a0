"""A SQLite connection SQLAlchemy terminates while its task is cancelled closes without
outliving the event loop: `asyncio.run` (and every service's shutdown) ends.

aiosqlite's `close()` (0.22.1), cancelled before its worker thread answered, waits in a
`finally` for a stop the already stopped thread never runs; SQLAlchemy cancels exactly
that close when it force-closes a connection whose task was cancelled, and the loop's
shutdown then waits for it for ever. `switchyard.common.db` replaces that close."""

from __future__ import annotations

import asyncio
from pathlib import Path

from switchyard.common.db import create_engine


async def test_a_graceful_close_cancelled_before_its_worker_answers_ends(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            adapter = raw.dbapi_connection
            # What SQLAlchemy's terminate does for a connection of a cancelled task: the
            # graceful close as its own task, at once the force close, and later (the
            # loop shutting down) a cancellation of the graceful close.
            graceful = asyncio.ensure_future(adapter._terminate_graceful_close())
            await asyncio.sleep(0)
            adapter._terminate_force_close()
            graceful.cancel()
            async with asyncio.timeout(3):
                await asyncio.gather(graceful, return_exceptions=True)
            assert graceful.done()
            # The worker thread ends (and answers on this loop, which must still run).
            worker = raw.driver_connection._thread
            await asyncio.to_thread(worker.join, 5)
            assert not worker.is_alive()
            await connection.invalidate()
    finally:
        await engine.dispose()


async def test_an_invalidated_connection_is_closed_and_its_worker_thread_ends(
    tmp_path: Path,
) -> None:
    # The common path (no cancellation): a connection invalidated, e.g. after a
    # disconnect, is closed on its thread, which then ends.
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            await connection.invalidate()
            await asyncio.to_thread(driver._thread.join, 5)
            assert not driver._thread.is_alive()
            assert driver._connection is None
        # The engine goes on with a new connection.
        async with engine.connect() as connection:
            assert (await connection.exec_driver_sql("SELECT 1")).scalar() == 1
    finally:
        await engine.dispose()
