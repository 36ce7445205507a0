"""`db.read_only`: on SQLite a connection that only reads begins its transactions deferred,
so it neither waits for a write in progress nor holds up one, while the engine's own
connections still take the write lock at BEGIN."""

from __future__ import annotations

import asyncio
from pathlib import Path

from switchyard.common.db import create_engine, dispose_engine, read_only


async def test_a_read_only_connection_reads_past_a_writer_and_holds_none_up(tmp_path: Path):
    engine = create_engine(f"sqlite:///{tmp_path / 'read.db'}")
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            await connection.exec_driver_sql("INSERT INTO t VALUES (1)")

        async with engine.connect() as writer:
            # The write lock, held until the rollback below.
            await writer.exec_driver_sql("INSERT INTO t VALUES (2)")
            async with read_only(engine).connect() as reader:
                read = await asyncio.wait_for(reader.exec_driver_sql("SELECT x FROM t"), 2)
                assert read.scalars().all() == [1]  # the last commit, not the write
            await writer.rollback()

        async with read_only(engine).connect() as reader:
            # A read transaction left open...
            await reader.exec_driver_sql("SELECT x FROM t")
            # ...while a writer commits at once.
            async with engine.begin() as writer:
                await asyncio.wait_for(writer.exec_driver_sql("INSERT INTO t VALUES (3)"), 2)
            assert reader.in_transaction()

        async with engine.connect() as connection:
            await connection.exec_driver_sql("SELECT 1")
            # The engine's own connections still begin IMMEDIATE: a second one waits.
            assert await _write_lock_held(tmp_path / "read.db")
    finally:
        await dispose_engine(engine)


async def _write_lock_held(path: Path) -> bool:
    import sqlite3

    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        return True
    finally:
        other.close()
    return False
