"""A SQLite connection SQLAlchemy terminates while its task is cancelled closes without
outliving the event loop: `asyncio.run` (and every service's shutdown) ends.

aiosqlite's `close()` (0.22.1), cancelled before its worker thread answered, waits in a
`finally` for a stop the already stopped thread never runs; SQLAlchemy cancels exactly
that close when it force-closes a connection whose task was cancelled, and the loop's
shutdown then waits for it for ever. `switchyard.common.db` replaces that close."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.util.concurrency import greenlet_spawn

from switchyard.common.db import _set_wal, create_engine, dispose_engine


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


class LockedCursor:
    """A cursor whose `PRAGMA journal_mode=WAL` is refused `locked` times first."""

    def __init__(self, locked: int, error: str = "database is locked") -> None:
        self.locked, self.error, self.calls = locked, error, 0

    def execute(self, sql: str) -> None:
        self.calls += 1
        if self.calls <= self.locked:
            raise sqlite3.OperationalError(self.error)


async def test_wal_mode_is_tried_again_while_the_database_is_briefly_locked() -> None:
    # Seen when a connection opens as another closes the database (its checkpoint holds
    # an exclusive lock): refused at once, without SQLite's busy handler.
    cursor = LockedCursor(locked=3)
    await greenlet_spawn(_set_wal, cursor)
    assert cursor.calls == 4

    other = LockedCursor(locked=1, error="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        await greenlet_spawn(_set_wal, other)
    assert other.calls == 1


def _run_in_a_loop_then_close_it(main: Any) -> list[BaseException]:
    """Run `main()` in a new event loop (closed after, as `asyncio.run` does), wait for
    every SQLite worker thread to end, and return what those threads raised."""
    raised: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: raised.append(args.exc_value)  # type: ignore[assignment]
    try:
        asyncio.run(main())
        for thread in threading.enumerate():
            if "_connection_worker_thread" in thread.name:
                thread.join(5)
    finally:
        threading.excepthook = previous
    return raised


def test_a_connection_whose_open_was_cancelled_ends_before_the_loop_closes(
    tmp_path: Path,
) -> None:
    # A service stopping during its first statement: the task opening the engine's first
    # connection is cancelled while aiosqlite's thread opens it. The thread then opens and
    # closes that connection on its own and hands both results to the loop; a loop already
    # closed made the thread die with "Event loop is closed" (seen in the gateway's
    # tests as an unhandled thread exception). `dispose_engine` waits for it.
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"

    async def main() -> None:
        engine = create_engine(url)

        async def first_statement() -> None:
            async with engine.begin() as connection:
                await connection.execute(text("SELECT 1"))

        task = asyncio.create_task(first_statement())
        await asyncio.sleep(0)  # the open is on its way to the worker thread
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await dispose_engine(engine)

    for _ in range(5):
        assert _run_in_a_loop_then_close_it(main) == []


def test_disposing_waits_only_as_long_as_a_connection_checked_out_elsewhere_allows(
    tmp_path: Path,
) -> None:
    # A connection still in use when its engine is disposed keeps its thread: the wait is
    # bounded, and the engine's other connections are closed meanwhile.
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"

    async def main() -> None:
        engine = create_engine(url)
        connection = await engine.connect()
        await connection.execute(text("SELECT 1"))
        started = time.monotonic()
        await dispose_engine(engine, wait_s=0.3)
        assert 0.25 < time.monotonic() - started < 4
        await connection.close()
        await dispose_engine(engine)

    assert _run_in_a_loop_then_close_it(main) == []


async def test_closing_a_connection_with_a_statement_under_way_releases_its_locks(
    tmp_path: Path,
) -> None:
    # A task cancelled while its SELECT runs leaves the cursor stepped but never fetched
    # nor closed, and SQLAlchemy terminates the connection. sqlite3 closing a connection
    # with a statement under way keeps the database open, with the lock of that statement
    # and its transaction, until the cursor is garbage-collected: every other connection
    # waited out its busy timeout (15 s), longer than shutdown waits for the threads.
    path = tmp_path / "db.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (x INTEGER)"))
            await connection.execute(text("INSERT INTO t VALUES (1), (2), (3)"))
        async with engine.connect() as connection:
            await connection.begin()  # BEGIN IMMEDIATE: the write lock
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection  # aiosqlite.Connection
            cursor = await driver.cursor()
            await cursor.execute("SELECT x FROM t")  # one row stepped, the rest pending
            await connection.invalidate()  # what a cancelled task's connection gets
            await asyncio.to_thread(driver._thread.join, 5)
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")  # "database is locked" while held
                other.execute("COMMIT")
            finally:
                other.close()
            del cursor
    finally:
        await dispose_engine(engine)
