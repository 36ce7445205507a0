"""The fleet's limit ledger on the real PostgreSQL server: several replicas (here several
ledgers, each with its own connection pool, as separate processes would have) draw on one
set of counters, and the limits hold for all of them together (the scenarios of
`switchyard.gateway.governance.ledger_checks`, which the SQLite ledger passes too). Also
the migration's upgrade and downgrade."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from switchyard.common.db import create_engine, dispose_engine, downgrade, upgrade
from switchyard.gateway.governance import ledger_checks
from switchyard.gateway.governance.ledger import LedgerUnavailable
from switchyard.gateway.governance.postgres import PostgresLedger
from switchyard.gateway.plugin import MIGRATIONS_DIR

pytestmark = pytest.mark.integration

VERSION_TABLE = "alembic_version_gateway"


@pytest.fixture
def ledger_url(postgres_url: str) -> str:
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
    return postgres_url


def connect(ledger_url: str) -> ledger_checks.Connect:
    return lambda: PostgresLedger.connect(ledger_url, timeout_s=5.0)


async def test_three_replicas_on_postgres_admit_exactly_the_rpm_limit(ledger_url: str) -> None:
    await ledger_checks.three_replicas_admit_exactly_the_rpm_limit(connect(ledger_url))


async def test_a_budget_on_postgres_holds_under_concurrency_and_settles(ledger_url: str) -> None:
    await ledger_checks.a_budget_holds_under_concurrency_and_settles(
        connect(ledger_url), ledger_url
    )


async def test_usage_beyond_a_lease_on_postgres_is_committed_for_the_fleet(
    ledger_url: str,
) -> None:
    await ledger_checks.usage_beyond_a_lease_is_committed_for_the_fleet(connect(ledger_url))


async def test_a_late_run_on_postgres_is_committed_for_the_fleet(ledger_url: str) -> None:
    await ledger_checks.a_late_run_is_committed_for_the_fleet(connect(ledger_url))


async def test_windows_restart_and_silent_replicas_are_reaped(ledger_url: str) -> None:
    await ledger_checks.windows_restart_and_silent_replicas_are_reaped(connect(ledger_url))


def test_the_ledger_migration_upgrades_and_downgrades(postgres_url: str) -> None:
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
    downgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE, "base")
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)


async def test_the_schema_check_sees_a_database_behind_and_a_store_that_is_down(
    postgres_url: str,
) -> None:
    """Readiness's check (`schema_current`): no tables, or tables without migration 0001's
    function, is a schema behind (False); a server that does not answer is a store down
    (LedgerUnavailable), which the limits' failure modes handle instead."""
    downgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE, "base")
    ledger = PostgresLedger.connect(postgres_url)
    try:
        assert await ledger.schema_current(5.0) is False
        upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
        assert await ledger.schema_current(5.0) is True
        engine = create_engine(postgres_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("DROP FUNCTION governance_grant(text, jsonb)"))
        finally:
            await dispose_engine(engine)
        assert await ledger.schema_current(5.0) is False
    finally:
        await ledger.close()
        downgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE, "base")
        upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
    down = PostgresLedger.connect("postgresql+psycopg://switchyard@127.0.0.1:1/none")
    try:
        with pytest.raises(LedgerUnavailable):
            await down.schema_current(5.0)
    finally:
        await down.close()
