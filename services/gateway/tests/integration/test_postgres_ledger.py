"""The fleet's limit ledger on the real PostgreSQL server: several replicas (here several
`Admission`s, each with its own connection pool, as separate processes would have) draw
on one set of counters, and the limits hold for all of them together. Also the
migration's upgrade and downgrade."""

from __future__ import annotations

import asyncio

import pytest

from switchyard.common.db import downgrade, upgrade
from switchyard.common.governance import FailureMode, Limits
from switchyard.common.pricing import Price, PriceTable
from switchyard.common.testing.events import usage_recorded
from switchyard.gateway.cli import spend_rows
from switchyard.gateway.governance.admission import Admission, Refused
from switchyard.gateway.governance.ledger import GrantRequest, LeaseChange
from switchyard.gateway.governance.policy import LevelLimits, Policy, PolicySource
from switchyard.gateway.governance.postgres import PostgresLedger
from switchyard.gateway.plugin import MIGRATIONS_DIR

pytestmark = pytest.mark.integration

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
def ledger_url(postgres_url: str) -> str:
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
    return postgres_url


async def test_three_replicas_on_postgres_admit_exactly_the_rpm_limit(ledger_url: str) -> None:
    ledgers = [PostgresLedger.connect(ledger_url, timeout_s=5.0) for _ in range(3)]
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


async def test_a_budget_on_postgres_holds_under_concurrency_and_settles(ledger_url: str) -> None:
    ledgers = [PostgresLedger.connect(ledger_url, timeout_s=5.0) for _ in range(3)]
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


async def test_usage_beyond_a_lease_on_postgres_is_committed_for_the_fleet(
    ledger_url: str,
) -> None:
    # A request used far more than its replica held, and that replica asks for nothing
    # again: the overrun is committed with its settlement, so no replica is granted it.
    ledgers = [PostgresLedger.connect(ledger_url, timeout_s=5.0) for _ in range(2)]
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
    ledger = PostgresLedger.connect(ledger_url, timeout_s=5.0)
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


def test_the_ledger_migration_upgrades_and_downgrades(postgres_url: str) -> None:
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
    downgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE, "base")
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
