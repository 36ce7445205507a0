"""An SQLite engine from `db.create_engine` keeps few connections open (each holds its
page cache and prepared statements), and more concurrent transactions than it keeps or
opens still all complete: they wait their turn in the pool's queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

from switchyard.common.db import SQLITE_MAX_OVERFLOW, SQLITE_POOL_SIZE, create_engine

WRITERS = 3 * (SQLITE_POOL_SIZE + SQLITE_MAX_OVERFLOW)


async def test_concurrent_writers_beyond_the_pool_all_commit_and_few_connections_stay_open(
    tmp_path: Path,
):
    engine = create_engine(f"sqlite:///{tmp_path / 'pool.db'}")
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE t (writer INTEGER)")

        async def write(writer: int) -> None:
            async with engine.begin() as connection:
                await connection.exec_driver_sql("INSERT INTO t VALUES (?)", (writer,))
                await asyncio.sleep(0.01)  # hold the connection while the others queue

        await asyncio.wait_for(asyncio.gather(*(write(n) for n in range(WRITERS))), 60)

        async with engine.connect() as connection:
            rows = (await connection.exec_driver_sql("SELECT writer FROM t")).scalars().all()
        assert sorted(rows) == list(range(WRITERS))
        # The connections opened beyond the pool were closed when returned.
        assert engine.pool.checkedin() <= SQLITE_POOL_SIZE  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


def test_an_in_memory_database_keeps_sqlalchemys_single_connection():
    # One in-memory database per connection: a pool of two would be two databases.
    engine = create_engine("sqlite:///:memory:")
    assert type(engine.pool).__name__ == "StaticPool"


def test_a_callers_pool_class_is_given_no_pool_size(tmp_path: Path):
    from sqlalchemy.pool import NullPool

    unpooled = create_engine(f"sqlite:///{tmp_path / 'x.db'}", poolclass=NullPool)
    assert type(unpooled.pool) is NullPool
