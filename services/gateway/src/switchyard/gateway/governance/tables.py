"""The limit ledger's tables in the gateway's database (migration 0001), as the SQLite
ledger reads and writes them, and the check that a database has them: a gateway whose
database was never migrated (`switchyard db upgrade --service gateway` not run) would
otherwise count no budget and no rate limit, and say so only in a warning per request."""

from __future__ import annotations

import asyncio

from sqlalchemy import Column, DateTime, Float, MetaData, String, Table, Text, TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common.db import probe_schema, read_only
from switchyard.common.tasks import LEFT, LeftWork, wait_or_leave
from switchyard.gateway.governance.ledger import LedgerUnavailable

LEDGER_METADATA = MetaData()
counters_table = Table(
    "governance_counters",
    LEDGER_METADATA,
    Column("scope", Text, primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("window_start", Float(53), nullable=False),
    Column("window_end", Float(53)),
    Column("limit_value", Float(53), nullable=False),
    Column("committed", Float(53), nullable=False),
    Column("spent", Float(53), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
leases_table = Table(
    "governance_leases",
    LEDGER_METADATA,
    Column("replica", Text, primary_key=True),
    Column("scope", Text, primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("window_start", Float(53), nullable=False),
    Column("held", Float(53), nullable=False),
)
replicas_table = Table(
    "governance_replicas",
    LEDGER_METADATA,
    Column("replica", Text, primary_key=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
)


# How long a schema check that outlasted its caller may run on (as a readiness check may).
SCHEMA_CHECK_FINISH_S = 30.0
# The schema check running for each engine (by `id`), while it runs.
_running: dict[int, asyncio.Future[bool]] = {}


def _forget(key: int, done: asyncio.Future[bool]) -> None:
    if _running.get(key) is done:
        del _running[key]


async def schema_current(
    engine: AsyncEngine, timeout_s: float, *present: TextClause, left: LeftWork = LEFT
) -> bool:
    """Whether the database of `engine` has every ledger table and column this version uses,
    and each statement of `present` (one value: NULL when what it looks for is missing, e.g.
    a function) finds what it looks for. False when the database answers but lacks one.

    A check that outlasts `timeout_s` runs on (recorded in `left`), and a call made
    meanwhile waits for it instead of starting another.

    Raises:
        LedgerUnavailable: the database did not answer within `timeout_s` seconds, or
            refused the connection: the store is down, which is not a schema behind.
    """

    async def check() -> bool:
        async with read_only(engine).connect() as connection:
            await connection.execute(text("SELECT 1"))
            try:
                await probe_schema(connection, LEDGER_METADATA)
                for statement in present:
                    if (await connection.execute(statement)).scalar() is None:
                        return False
            except Exception:  # noqa: BLE001 - a table, column or function missing
                return False
            return True

    # One check of an engine at a time: a caller that comes while one runs (the next
    # readiness probe) waits for it rather than open another connection.
    key = id(engine)
    task = _running.get(key)
    if task is None or task.done():
        task = _running[key] = asyncio.ensure_future(check())
        task.add_done_callback(lambda done: _forget(key, done))
    try:
        # Not cancelled when slow: that would lose its connection (`wait_or_leave`).
        return await wait_or_leave(task, timeout_s, finish_s=SCHEMA_CHECK_FINISH_S, left=left)
    except TimeoutError as exc:
        raise LedgerUnavailable(f"limit store did not answer in {timeout_s}s") from exc
    except Exception as exc:  # noqa: BLE001 - any connection failure means "unavailable"
        raise LedgerUnavailable(repr(exc)) from exc
