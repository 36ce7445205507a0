"""The limit ledger in a SQLite file (`SQLiteLedger`): several ledgers, each with its own
engine and connections as the workers of `switchyard gateway --workers N` have, draw on
one set of counters and the limits hold for all of them together (the scenarios of
`switchyard.gateway.governance.ledger_checks`, which the PostgreSQL ledger passes too);
what was spent is still there when the gateway starts again; another writer holding the
file never holds a grant past its bound, and a grant that commits past it is given back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from switchyard.common.db import upgrade
from switchyard.common.testing.events import usage_recorded
from switchyard.common.testing.infra import async_ready
from switchyard.gateway.config import Settings
from switchyard.gateway.governance import ledger_checks
from switchyard.gateway.governance.admission import Admission, Refused
from switchyard.gateway.governance.ledger import GrantRequest, LedgerUnavailable, MemoryLedger
from switchyard.gateway.governance.ledger_checks import (
    BODY,
    PRICES,
    Caller,
    FixedPolicies,
    key_policy,
)
from switchyard.gateway.governance.sqlite import SQLiteLedger
from switchyard.gateway.plugin import MIGRATIONS_DIR

from .auth_double import gateway_with

VERSION_TABLE = "alembic_version_gateway"


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    upgrade(str(MIGRATIONS_DIR), url, VERSION_TABLE)
    return url


def connect(ledger_url: str) -> ledger_checks.Connect:
    return lambda: SQLiteLedger.connect(ledger_url, timeout_s=5.0)


async def test_three_replicas_in_sqlite_admit_exactly_the_rpm_limit(ledger_url: str) -> None:
    await ledger_checks.three_replicas_admit_exactly_the_rpm_limit(connect(ledger_url))


async def test_a_budget_in_sqlite_holds_under_concurrency_and_settles(ledger_url: str) -> None:
    await ledger_checks.a_budget_holds_under_concurrency_and_settles(
        connect(ledger_url), ledger_url
    )


async def test_usage_beyond_a_lease_in_sqlite_is_committed_for_the_fleet(ledger_url: str) -> None:
    await ledger_checks.usage_beyond_a_lease_is_committed_for_the_fleet(connect(ledger_url))


async def test_a_late_run_in_sqlite_is_committed_for_the_fleet(ledger_url: str) -> None:
    await ledger_checks.a_late_run_is_committed_for_the_fleet(connect(ledger_url))


async def test_windows_restart_and_silent_replicas_are_reaped(ledger_url: str) -> None:
    await ledger_checks.windows_restart_and_silent_replicas_are_reaped(connect(ledger_url))


async def test_what_was_spent_is_kept_when_the_gateway_starts_again(ledger_url: str) -> None:
    policies = FixedPolicies(key_policy(max_budget_usd=0.1))  # a lifetime budget
    ledger = SQLiteLedger.connect(ledger_url, timeout_s=5.0)
    admission = Admission(ledger=ledger, policies=policies, prices=PRICES, replica="gw-1")
    try:
        ticket = await admission.admit(Caller(), "m", BODY)
        ticket.attach("r1")
        admission.on_usage(usage_recorded("r1", 0.1))
        await admission.flush()
    finally:
        await ledger.close()

    # A new process (a restart): a new replica, a new engine, the same file.
    ledger = SQLiteLedger.connect(ledger_url, timeout_s=5.0)
    admission = Admission(ledger=ledger, policies=policies, prices=PRICES, replica="gw-2")
    try:
        [counter] = [c for c in await ledger.counters(["api_key:k1"]) if c.kind == "spend"]
        assert counter.spent == pytest.approx(0.1)
        with pytest.raises(Refused) as refused:
            await admission.admit(Caller(), "m", BODY)
        assert refused.value.code == "insufficient_quota"
    finally:
        await ledger.close()


async def test_a_database_that_cannot_be_used_is_the_ledger_being_unavailable(
    tmp_path: Path,
) -> None:
    # No migrations: the tables are missing.
    ledger = SQLiteLedger.connect(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(LedgerUnavailable):
            await ledger.grant("gw", [GrantRequest("user:u", "requests", 10, 1, 2, window_s=60)])
        with pytest.raises(LedgerUnavailable):
            await ledger.counters()
    finally:
        await ledger.close()


async def test_a_grant_that_commits_after_its_bound_is_given_back(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grant whose transaction outlasts its bound fails, but runs on rather than being
    cancelled half-way; what it granted, which the replica never learned of, is given
    back."""
    ledger = SQLiteLedger.connect(ledger_url, timeout_s=0.2)
    request = GrantRequest("user:late", "requests", 100, 1, 10, window_s=60)
    grant = MemoryLedger.grant

    async def slow_grant(self: MemoryLedger, *args: Any) -> Any:
        await asyncio.sleep(0.4)  # inside the transaction, past the bound
        return await grant(self, *args)

    try:
        [first] = await ledger.grant("gw", [request])
        monkeypatch.setattr(MemoryLedger, "grant", slow_grant)
        with pytest.raises(LedgerUnavailable, match="did not answer"):
            await ledger.grant("gw", [request])
        monkeypatch.setattr(MemoryLedger, "grant", grant)
        assert await ledger._left.wait(10) == 0
        [counter] = await ledger.counters(["user:late"])
        assert counter.committed == first.amount == 10
    finally:
        await ledger.close()


async def test_grants_that_gave_up_waiting_for_their_turn_leave_nothing_behind(
    ledger_url: str,
) -> None:
    """Grants queued behind this process's other transaction past their bound give up
    without running: none is left to run later, and the next grant answers at once."""
    ledger = SQLiteLedger.connect(ledger_url, timeout_s=0.2)
    request = GrantRequest("user:queued", "requests", 1000, 1, 1, window_s=60)
    try:
        async with ledger._lock:  # a transaction of this process, longer than the bound
            answers = await asyncio.gather(
                *[ledger.grant("gw", [request]) for _ in range(50)], return_exceptions=True
            )
        assert all(isinstance(answer, LedgerUnavailable) for answer in answers)
        assert ledger._left.running() == 0
        [granted] = await ledger.grant("gw", [request])
        assert granted.amount == 1
        [counter] = await ledger.counters(["user:queued"])
        assert counter.committed == 1
    finally:
        await ledger.close()


async def test_a_write_lock_held_elsewhere_fails_a_grant_within_its_bound(
    ledger_url: str, tmp_path: Path
) -> None:
    import sqlite3
    import time

    ledger = SQLiteLedger.connect(ledger_url, timeout_s=0.5)
    # A connection opened and pooled first, as in a running gateway.
    await ledger.grant("gw", [GrantRequest("user:v", "requests", 10, 1, 2, window_s=60)])
    holder = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for longer than a grant waits
    try:
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable):
            await ledger.grant("gw", [GrantRequest("user:u", "requests", 10, 1, 2, window_s=60)])
        assert time.monotonic() - started < 4.0  # SQLite's own default wait is 5 s
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    try:
        [granted] = await ledger.grant(
            "gw", [GrantRequest("user:u", "requests", 10, 1, 2, window_s=60)]
        )
        assert granted.amount == 2.0  # the lock gone, the ledger answers again
    finally:
        await ledger.close()


async def test_the_schema_check_reads_while_a_write_lock_is_held_elsewhere(
    ledger_url: str, tmp_path: Path
) -> None:
    """The readiness probe's schema check reads without SQLite's write lock: a write in
    progress elsewhere neither fails it (`LedgerUnavailable` after its bound) nor keeps it
    waiting on SQLite's busy timeout."""
    import sqlite3

    ledger = SQLiteLedger.connect(ledger_url, timeout_s=0.5)
    holder = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert await ledger.schema_current(1.0) is True
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await ledger.close()


class _StoreDown(SQLiteLedger):
    async def schema_current(self, timeout_s: float) -> bool:
        raise LedgerUnavailable("the store does not answer")


async def test_readiness_fails_while_the_ledger_database_is_not_migrated(
    tmp_path: Path,
) -> None:
    """A gateway whose database was never migrated would count no budget or rate limit:
    `/readyz` says so (`limit_store`) until `switchyard db upgrade` has run. A store that
    does not answer keeps the replica ready: each limit's failure mode handles that."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    settings = Settings(
        request_timeout_s=2.0,
        topic_prefix="unit-ledger-ready",
        database_url=url,
        governance_store="sqlite",
    )
    async with gateway_with(settings=settings) as gw:
        behind = await gw.client.get("/readyz")
        assert behind.status_code == 503
        assert behind.json()["checks"]["limit_store"] is False
        # In a thread, as an operator's `switchyard db upgrade` runs beside the gateway:
        # on the gateway's own loop, a ledger connection holding the file's lock could
        # not finish while the migration waited for it ("database is locked").
        await asyncio.to_thread(upgrade, str(MIGRATIONS_DIR), url, VERSION_TABLE)
        ready = await async_ready(lambda: gw.client.get("/readyz"))
        assert ready.json()["checks"]["limit_store"] is True
        admission = gw.app.state.gateway.admission
        admission.ledger = _StoreDown.connect(url)
        try:
            down = await gw.client.get("/readyz")
            assert down.status_code == 200 and down.json()["checks"]["limit_store"] is True
        finally:
            await admission.ledger.close()
