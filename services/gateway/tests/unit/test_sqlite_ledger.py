"""The limit ledger in a SQLite file (`SQLiteLedger`): several ledgers, each with its own
engine and connections as the workers of `switchyard gateway --workers N` have, draw on
one set of counters and the limits hold for all of them together; what was spent is still
there when the gateway starts again. The same scenarios as test_postgres_ledger.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from switchyard.common.db import upgrade
from switchyard.common.governance import FailureMode, Limits
from switchyard.common.pricing import Price, PriceTable
from switchyard.common.testing.events import usage_recorded
from switchyard.gateway.cli import spend_rows
from switchyard.gateway.governance.admission import Admission, Refused
from switchyard.gateway.governance.ledger import GrantRequest, LeaseChange, LedgerUnavailable
from switchyard.gateway.governance.policy import LevelLimits, Policy, PolicySource
from switchyard.gateway.governance.sqlite import SQLiteLedger
from switchyard.gateway.plugin import MIGRATIONS_DIR

PRICES = PriceTable(models={"m": Price(input_per_1m=1_000.0, output_per_1m=1_000.0)})
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
VERSION_TABLE = "alembic_version_gateway"


class Caller:
    user_id, api_key_id, tenant = "u1", "k1", "acme"


class FixedPolicies(PolicySource):
    def __init__(self, policy: Policy) -> None:
        super().__init__(lambda: None, auth_url="http://auth", internal_token="t")  # type: ignore[arg-type]
        self.policy = policy

    async def get(self, user_id, api_key_id) -> Policy:
        return self.policy


def key_policy(**limits) -> Policy:
    return Policy(
        tenant="acme",
        team_id=None,
        levels=(LevelLimits("api_key", "k1", Limits(**limits), 0.0),),
        rate_limit_failure_mode=FailureMode.OPEN,
        budget_failure_mode=FailureMode.CLOSED,
        scope_ids=frozenset({("api_key", "k1")}),
    )


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    upgrade(str(MIGRATIONS_DIR), url, VERSION_TABLE)
    return url


async def test_three_replicas_in_sqlite_admit_exactly_the_rpm_limit(ledger_url: str) -> None:
    ledgers = [SQLiteLedger.connect(ledger_url, timeout_s=5.0) for _ in range(3)]
    policies = FixedPolicies(key_policy(rpm_limit=60))
    admissions = [
        Admission(ledger=ledger, policies=policies, prices=PRICES, replica=f"gw-{n}")
        for n, ledger in enumerate(ledgers)
    ]

    async def one(n: int):
        try:
            return await admissions[n % 3].admit(Caller(), "m", BODY)
        except Refused as refused:
            return refused

    try:
        outcomes = await asyncio.gather(*(one(n) for n in range(200)))
        admitted = [o for o in outcomes if not isinstance(o, Refused)]
        assert len(admitted) == 60
        [counter] = await ledgers[0].counters(["api_key:k1"])
        assert counter.committed == 60 and counter.limit == 60
    finally:
        for ledger in ledgers:
            await ledger.close()


async def test_a_budget_in_sqlite_holds_under_concurrency_and_settles(ledger_url: str) -> None:
    ledgers = [SQLiteLedger.connect(ledger_url, timeout_s=5.0) for _ in range(3)]
    policies = FixedPolicies(key_policy(max_budget_usd=0.5, budget_period="30d"))
    admissions = [
        Admission(ledger=ledger, policies=policies, prices=PRICES, replica=f"gw-{n}")
        for n, ledger in enumerate(ledgers)
    ]

    async def one(n: int):
        try:
            return await admissions[n % 3].admit(Caller(), "m", BODY)
        except Refused as refused:
            return refused

    try:
        outcomes = await asyncio.gather(*(one(n) for n in range(100)))
        admitted = [o for o in outcomes if not isinstance(o, Refused)]
        reserved = sum(ticket.reservations[0].amount for ticket in admitted)
        assert 0 < reserved <= 0.5 + 1e-9
        # No replica sat on budget the others needed: each of the three may be left with
        # less than one request's worth, nothing more.
        assert reserved > 0.5 - 3 * max(t.reservations[0].amount for t in admitted)
        assert any(isinstance(o, Refused) and o.code == "insufficient_quota" for o in outcomes)

        # Settle every request at its full reservation: the ledger records the spend.
        for n, ticket in enumerate(admitted):
            admission = admissions[n % 3]
            await admission.ledger.settle(
                admission.replica,
                [
                    LeaseChange("api_key:k1", "spend", r.window_start, r.amount)
                    for r in ticket.reservations
                ],
            )
        for admission in admissions:
            await admission.release_idle(everything=True)
        [counter] = await ledgers[0].counters(["api_key:k1"])
        assert counter.spent == pytest.approx(reserved)
        assert counter.committed == pytest.approx(reserved)
        # What `switchyard spend --group-by key` prints.
        [row] = await spend_rows(ledger_url, "api_key")
        assert row["id"] == "k1" and row["max_budget_usd"] == 0.5
        assert row["spent_usd"] == pytest.approx(reserved) and row["resets_at"] is not None
    finally:
        for ledger in ledgers:
            await ledger.close()


async def test_usage_beyond_a_lease_in_sqlite_is_committed_for_the_fleet(
    ledger_url: str,
) -> None:
    # A request used far more than its replica held, and that replica asks for nothing
    # again: the overrun is committed with its settlement, so no replica is granted it.
    ledgers = [SQLiteLedger.connect(ledger_url, timeout_s=5.0) for _ in range(2)]
    policies = FixedPolicies(key_policy(max_budget_usd=10.0, budget_period="30d"))
    first, second = (
        Admission(ledger=ledger, policies=policies, prices=PRICES, replica=f"gw-{n}")
        for n, ledger in enumerate(ledgers)
    )
    try:
        ticket = await first.admit(Caller(), "m", BODY)
        ticket.attach("r1")
        first.on_usage(usage_recorded("r1", 5.0))
        await first.flush()
        [counter] = [c for c in await ledgers[0].counters(["api_key:k1"]) if c.kind == "spend"]
        assert counter.spent == pytest.approx(5.0)
        assert counter.committed >= counter.spent
        with pytest.raises(Refused):
            await second.admit(Caller(), "m", {**BODY, "max_tokens": 6000})
        assert await second.admit(Caller(), "m", {**BODY, "max_tokens": 4000})
    finally:
        for ledger in ledgers:
            await ledger.close()


async def test_windows_restart_and_silent_replicas_are_reaped(ledger_url: str) -> None:
    ledger = SQLiteLedger.connect(ledger_url, timeout_s=5.0)
    try:

        def ask(want_max: float, demand: float = 0.0, window_s: float = 30.0) -> GrantRequest:
            return GrantRequest(
                "user:u", "requests", 100, 1, want_max, window_s=window_s, demand=demand
            )

        [plenty] = await ledger.grant("gw-a", [ask(10)])
        assert plenty.amount == 10.0  # plenty left: the whole lease asked for
        [quarter] = await ledger.grant("gw-a", [ask(20)])
        assert quarter.amount == 20.0  # 90 left: at most a quarter (22)
        [tight] = await ledger.grant("gw-b", [ask(30, demand=3)])
        assert tight.amount == 3.0  # 70 left, under four leases: only what is waiting
        assert tight.committed == 33.0

        short = GrantRequest("user:w", "requests", 10, 1, 2, window_s=0.2)
        [first] = await ledger.grant("gw-a", [short])
        await ledger.heartbeat("gw-a")
        await asyncio.sleep(0.25)
        [second] = await ledger.grant("gw-b", [short])
        # The window ended: the new one starts from nothing.
        assert second.window_start > first.window_start
        assert second.committed == second.amount

        parallel = GrantRequest("team:t", "parallel", 4, 1, 4)
        [held] = await ledger.grant("gw-a", [parallel])
        assert held.amount == 1.0
        await asyncio.sleep(1.1)
        assert await ledger.reap(1.0) == 1
        [counter] = [c for c in await ledger.counters(["team:t"])]
        assert counter.committed == 0
    finally:
        await ledger.close()


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
        assert time.monotonic() - started < 2.0
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
