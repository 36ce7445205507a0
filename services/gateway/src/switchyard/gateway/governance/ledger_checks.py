"""Test support: the scenarios every limit ledger (`Ledger`) must pass, whatever keeps it
(PostgreSQL for a fleet, SQLite for one machine), each run against ledgers a test makes
with `connect`. Several ledgers made by one `connect` stand for several replicas, as
separate processes with their own connections would. Used by the gateway's ledger tests;
each scenario raises AssertionError when the ledger breaks the rules."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import httpx

from switchyard.common.governance import FailureMode, Limits
from switchyard.common.pricing import Price, PriceTable
from switchyard.common.testing.events import usage_recorded
from switchyard.gateway.cli import spend_rows
from switchyard.gateway.governance.admission import Admission, Refused
from switchyard.gateway.governance.ledger import GrantRequest, LeaseChange, Ledger
from switchyard.gateway.governance.policy import LevelLimits, Policy, PolicySource

PRICES = PriceTable(models={"m": Price(input_per_1m=1_000.0, output_per_1m=1_000.0)})
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
Connect = Callable[[], Ledger]
"""Makes a new ledger on the store under test (a replica's own connections)."""


class Caller:
    """The caller every scenario admits: key k1 of user u1 in tenant acme."""

    user_id, api_key_id, tenant = "u1", "k1", "acme"


class FixedPolicies(PolicySource):
    """A policy source that answers one policy for every caller."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(
            lambda: cast(httpx.AsyncClient, None), auth_url="http://auth", internal_token="t"
        )
        self.policy = policy

    async def get(self, user_id: Any, api_key_id: Any) -> Policy:
        """The one policy."""
        return self.policy


def key_policy(**limits: Any) -> Policy:
    """Limits on key k1 alone (rate limits fail open, budgets closed)."""
    return Policy(
        tenant="acme",
        team_id=None,
        levels=(LevelLimits("api_key", "k1", Limits(**limits), 0.0),),
        rate_limit_failure_mode=FailureMode.OPEN,
        budget_failure_mode=FailureMode.CLOSED,
        scope_ids=frozenset({("api_key", "k1")}),
    )


def _replicas(connect: Connect, policy: Policy, count: int) -> tuple[list[Ledger], list[Admission]]:
    """`count` replicas, each with a ledger of its own, under `policy`."""
    ledgers = [connect() for _ in range(count)]
    policies = FixedPolicies(policy)
    admissions = [
        Admission(ledger=ledger, policies=policies, prices=PRICES, replica=f"gw-{n}")
        for n, ledger in enumerate(ledgers)
    ]
    return ledgers, admissions


async def _admit_all(admissions: list[Admission], count: int) -> list[Any]:
    """`count` requests at once, spread over `admissions`: each one's ticket or refusal."""

    async def one(n: int) -> Any:
        try:
            return await admissions[n % len(admissions)].admit(Caller(), "m", BODY)
        except Refused as refused:
            return refused

    return await asyncio.gather(*(one(n) for n in range(count)))


async def three_replicas_admit_exactly_the_rpm_limit(connect: Connect) -> None:
    """200 requests at once on three replicas, `rpm_limit` 60: exactly 60 admitted."""
    ledgers, admissions = _replicas(connect, key_policy(rpm_limit=60), 3)
    try:
        outcomes = await _admit_all(admissions, 200)
        admitted = [o for o in outcomes if not isinstance(o, Refused)]
        assert len(admitted) == 60
        [counter] = await ledgers[0].counters(["api_key:k1"])
        assert counter.committed == 60 and counter.limit == 60
    finally:
        for ledger in ledgers:
            await ledger.close()


async def a_budget_holds_under_concurrency_and_settles(connect: Connect, ledger_url: str) -> None:
    """100 requests at once on three replicas against a $0.50 budget: never overspent, no
    replica sitting on budget the others need, and the spend settled and reported."""
    ledgers, admissions = _replicas(connect, key_policy(max_budget_usd=0.5, budget_period="30d"), 3)
    try:
        outcomes = await _admit_all(admissions, 100)
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
        assert math.isclose(counter.spent, reserved, rel_tol=1e-6)
        assert math.isclose(counter.committed, reserved, rel_tol=1e-6)
        # What `switchyard spend --group-by key` prints.
        [row] = await spend_rows(ledger_url, "api_key")
        assert row["id"] == "k1" and row["max_budget_usd"] == 0.5
        assert (
            math.isclose(row["spent_usd"], reserved, rel_tol=1e-6) and row["resets_at"] is not None
        )
    finally:
        for ledger in ledgers:
            await ledger.close()


async def _five_dollars_are_committed_for_the_fleet(
    connect: Connect, costs: Sequence[float], what: str
) -> None:
    """One replica's request reports usage events costing `costs` (USD, $5 in all)
    against a $10 budget: the ledger counts $5 spent and committed once the replica gives
    back what it holds, and another replica is granted a request of $4 at most but not
    one of $6 (`what` used that much)."""
    ledgers, (first, second) = _replicas(
        connect, key_policy(max_budget_usd=10.0, budget_period="30d"), 2
    )
    try:
        ticket = await first.admit(Caller(), "m", BODY)
        ticket.attach("r1")
        for cost in costs:
            first.on_usage(usage_recorded("r1", cost))
        await first.flush()
        await first.release_idle(everything=True)
        [counter] = [c for c in await ledgers[0].counters(["api_key:k1"]) if c.kind == "spend"]
        assert math.isclose(counter.spent, 5.0, rel_tol=1e-6), counter
        assert math.isclose(counter.committed, 5.0, rel_tol=1e-6), counter
        try:  # about $6 at most: more than the $5 left
            await second.admit(Caller(), "m", {**BODY, "max_tokens": 6000})
        except Refused:
            pass
        else:
            raise AssertionError(f"granted what {what} had used")
        assert await second.admit(Caller(), "m", {**BODY, "max_tokens": 4000})
    finally:
        for ledger in ledgers:
            await ledger.close()


async def usage_beyond_a_lease_is_committed_for_the_fleet(connect: Connect) -> None:
    """A request that used far more than its replica held, a replica that asks for
    nothing again: the overrun is committed with its settlement, so no replica is granted
    it."""
    await _five_dollars_are_committed_for_the_fleet(connect, [5.0], "the overrun")


async def a_late_run_is_committed_for_the_fleet(connect: Connect) -> None:
    """The usage of a second run of a settled request (taken over from a stalled
    inference replica, which then finished): spent, and committed for every replica."""
    await _five_dollars_are_committed_for_the_fleet(connect, [1.0, 4.0], "the late run")


async def windows_restart_and_silent_replicas_are_reaped(connect: Connect) -> None:
    """Fair shares, a window that ends starting from nothing, and a silent replica's
    leases reaped."""
    ledger = connect()
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
