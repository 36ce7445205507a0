"""Admission while the limit store (the ledger) is down or slower than its timeout: every
request waits at most about one timeout however many arrive together, follows its tenant's
failure mode (rate limits open: admitted uncounted; budgets closed: 503
`limits_unavailable`), allowance already held still admits, settlements wait, and a store
that is back is used again (docs/governance.md, "Failure modes")."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from switchyard.common import tokenizer
from switchyard.common.db import upgrade
from switchyard.common.errors import APIError
from switchyard.gateway.governance.admission import STORE_BACKOFF_S, Admission, Ticket
from switchyard.gateway.governance.ledger import (
    Grant,
    GrantRequest,
    LeaseChange,
    LedgerUnavailable,
    MemoryLedger,
)
from switchyard.gateway.governance.policy import Policy
from switchyard.gateway.governance.sqlite import SQLiteLedger
from switchyard.gateway.plugin import MIGRATIONS_DIR

from .test_governance import BODY, PRICES, Caller, FixedPolicies, policy, usage_event

# The store's timeout in these tests (production's is 0.5 s): a grant answers no sooner.
# Long enough that what a test does while a grant hangs (admissions racing a probe) is
# done before it gives up, even on a loaded machine.
TIMEOUT_S = 1.0
# Generous: every request should finish in about one timeout; before the fix the last of
# N waited N timeouts.
BOUND_S = 3 * TIMEOUT_S
CONCURRENT = 20


class OutageLedger(MemoryLedger):
    """The in-memory ledger behind a store that can go down: while `down`, a grant hangs
    for the store's timeout and raises `LedgerUnavailable` (as the SQLite and PostgreSQL
    ledgers do), one at a time (SQLite takes one transaction at a time); `fast` makes
    it fail at once instead. Counts the grants asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.fast = False
        self.grants = 0
        self.asked = asyncio.Event()  # set by each grant
        self._store = asyncio.Lock()

    async def grant(self, replica: str, requests: Sequence[GrantRequest]) -> list[Grant]:
        self.grants += 1
        self.asked.set()
        try:
            async with asyncio.timeout(TIMEOUT_S), self._store:
                if self.down and not self.fast:
                    await asyncio.sleep(TIMEOUT_S * 10)  # held by another writer
        except TimeoutError as exc:
            raise LedgerUnavailable(f"limit store did not answer in {TIMEOUT_S}s") from exc
        self.fail = self.down  # `fast`: the memory ledger's own failure, at once
        return await super().grant(replica, requests)

    async def settle(self, replica: str, changes: Sequence[LeaseChange]) -> None:
        self.fail = self.down
        await super().settle(replica, changes)


class PerKeyPolicies(FixedPolicies):
    """The same limits on every key, each key its own counters."""

    async def get(self, user_id: str, api_key_id: str | None) -> Policy:
        base = self.policy
        [level] = base.levels
        return policy(
            scope_id=api_key_id or "none",
            budget_mode=base.budget_failure_mode,
            rate_mode=base.rate_limit_failure_mode,
            rpm_limit=level.limits.rpm_limit,
            max_budget_usd=level.limits.max_budget_usd,
            budget_period=level.limits.budget_period,
        )


def admission(
    ledger: OutageLedger, the_policy: Policy, store_backoff_s: float = STORE_BACKOFF_S
) -> Admission:
    return Admission(
        ledger=ledger,
        policies=FixedPolicies(the_policy),
        prices=PRICES,
        replica="gw-0",
        store_backoff_s=store_backoff_s,
    )


RATE_LIMITED = policy(rpm_limit=1000)  # rate limits fail open by default
BUDGETED = policy(anchor=0.0, max_budget_usd=100.0, budget_period="1d")  # budgets closed


@pytest.fixture(autouse=True)
async def vocabulary() -> None:
    """Loaded before any timing: a budget's first request loads it (about a second)."""
    await tokenizer.load()


def store_failures(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "switchyard_gateway_governance_store_failures_total", {"outcome": outcome}
    )
    return value or 0.0


async def admit_together(
    target: Admission, count: int = CONCURRENT, keys: bool = False
) -> tuple[list[Ticket | BaseException], float]:
    """`count` admissions at once (on keys k0, k1, … when `keys`); their outcomes and how
    long the slowest took."""

    async def one(n: int) -> Ticket:
        return await target.admit(Caller(api_key_id=f"k{n}" if keys else "k1"), "m", BODY)

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(one(n) for n in range(count)), return_exceptions=True)
    return list(outcomes), time.perf_counter() - started


def assert_limits_unavailable(outcome: object) -> None:
    assert isinstance(outcome, APIError), outcome
    assert (outcome.status, outcome.code) == (503, "limits_unavailable")
    assert outcome.headers["Retry-After"] == "1"


async def test_requests_sharing_a_refill_that_fails_open_together_within_one_timeout() -> None:
    """The tester's case: requests queued behind one refill of a store held by another
    writer were admitted one timeout after another (the last after N timeouts)."""
    ledger = OutageLedger()
    ledger.down = True
    before = store_failures("admitted_uncounted")

    outcomes, took = await admit_together(admission(ledger, RATE_LIMITED))

    assert took < BOUND_S
    assert all(isinstance(outcome, Ticket) for outcome in outcomes), outcomes
    # Uncounted: no rate-limit headers, nothing reserved, the store asked once.
    assert all(o.requests is None and not o.reservations for o in outcomes)  # type: ignore[union-attr]
    assert store_failures("admitted_uncounted") - before == CONCURRENT
    assert ledger.grants == 1


async def test_requests_sharing_a_refill_that_fails_closed_are_refused_together() -> None:
    ledger = OutageLedger()
    ledger.down = True
    before = store_failures("refused")

    outcomes, took = await admit_together(admission(ledger, BUDGETED))

    assert took < BOUND_S
    for outcome in outcomes:
        assert_limits_unavailable(outcome)
    assert store_failures("refused") - before == CONCURRENT
    assert ledger.grants == 1


# Short enough for a test to wait it out, long enough that the admissions a test makes
# during it are all made before it ends, even on a loaded machine.
BACKOFF_S = 1.0


async def start_probe(
    target: Admission, ledger: OutageLedger, key: str = "k1"
) -> asyncio.Future[Ticket]:
    """An admission, once its grant (the probe) is on its way to the store."""
    ledger.asked.clear()
    probe = asyncio.ensure_future(target.admit(Caller(api_key_id=key), "m", BODY))
    await ledger.asked.wait()
    return probe


@pytest.mark.parametrize("fast", [False, True], ids=["store-hangs", "store-refuses"])
async def test_while_the_store_counts_as_down_it_is_not_asked_but_by_one_probe(fast: bool) -> None:
    """After a failed grant, requests of other counters (other keys) do not each ask the
    store and wait their timeout: during the back-off none asks, then one at a time (a
    probe) does while the others follow their failure mode at once."""
    ledger = OutageLedger()
    ledger.down, ledger.fast = True, fast
    target = Admission(
        ledger=ledger,
        policies=PerKeyPolicies(RATE_LIMITED),
        prices=PRICES,
        replica="gw-0",
        store_backoff_s=BACKOFF_S,
    )
    await target.admit(Caller(api_key_id="first"), "m", BODY)  # finds the store down
    assert ledger.grants == 1

    outcomes, took = await admit_together(target, keys=True)  # during the back-off
    assert all(isinstance(outcome, Ticket) for outcome in outcomes), outcomes
    assert ledger.grants == 1
    assert took < BOUND_S

    await asyncio.sleep(BACKOFF_S)
    probe = await start_probe(target, ledger, "probe")
    outcomes, took = await admit_together(target, keys=True)
    assert all(isinstance(outcome, Ticket) for outcome in outcomes), outcomes
    assert ledger.grants == 2  # the probe's only
    if not fast:
        assert not probe.done()  # they did not wait for the probe
    assert took < BOUND_S
    assert isinstance(await probe, Ticket)


async def test_requests_failing_closed_while_a_probe_is_on_its_way_are_refused_at_once() -> None:
    ledger = OutageLedger()
    ledger.down = True
    target = admission(ledger, BUDGETED, store_backoff_s=BACKOFF_S)
    with pytest.raises(APIError):
        await target.admit(Caller(), "m", BODY)
    outcomes, _ = await admit_together(target)  # during the back-off
    for outcome in outcomes:
        assert_limits_unavailable(outcome)
    assert ledger.grants == 1

    await asyncio.sleep(BACKOFF_S)
    probe = await start_probe(target, ledger)
    outcomes, _ = await admit_together(target)

    assert not probe.done()
    for outcome in outcomes:
        assert_limits_unavailable(outcome)
    with pytest.raises(APIError) as caught:
        await probe
    assert_limits_unavailable(caught.value)
    assert ledger.grants == 2


@pytest.mark.parametrize("the_policy", [RATE_LIMITED, BUDGETED], ids=["open", "closed"])
async def test_a_store_back_up_is_used_again_after_one_back_off(the_policy: Policy) -> None:
    ledger = OutageLedger()
    ledger.down = True
    target = admission(ledger, the_policy, store_backoff_s=BACKOFF_S)
    await admit_together(target)
    assert ledger.grants == 1

    ledger.down = False
    await asyncio.sleep(BACKOFF_S)
    counted = await target.admit(Caller(), "m", BODY)  # the probe
    assert ledger.grants == 2
    if the_policy is RATE_LIMITED:
        assert counted.requests is not None
    else:
        assert counted.reservations
    [counter] = await ledger.counters()
    assert counter.committed > 0
    # No longer down: requests together share refills again, all counted.
    outcomes, took = await admit_together(target, count=200)
    assert all(isinstance(o, Ticket) and (o.requests or o.reservations) for o in outcomes)
    assert took < BOUND_S


async def test_allowance_held_admits_as_usual_and_settlements_wait_for_the_store() -> None:
    ledger = OutageLedger()
    target = admission(ledger, BUDGETED)
    first = await target.admit(Caller(), "m", BODY)  # draws a lease of several requests
    asked = ledger.grants
    ledger.down = True

    held = await target.admit(Caller(), "m", BODY)
    assert held.reservations  # counted against the allowance held, no grant asked
    assert ledger.grants == asked
    for n, ticket in enumerate((first, held)):
        ticket.attach(f"r{n}")
        target.on_usage(usage_event(f"r{n}", 0.001))
    with pytest.raises(LedgerUnavailable):
        await target.flush()  # kept for later

    ledger.down = False
    await target.flush()
    [counter] = await ledger.counters()
    assert counter.spent == pytest.approx(0.002)


async def test_the_sqlite_ledger_held_by_another_writer_delays_no_request_past_a_timeout(
    tmp_path: Path,
) -> None:
    """The tester's repro on the real SQLite ledger: another process holds the file with
    `BEGIN IMMEDIATE`; requests on a rate-limited key, all at once, are admitted (failing
    open) within about one timeout, not one timeout after another; once the file is free
    again they are counted."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    upgrade(str(MIGRATIONS_DIR), url, "alembic_version_gateway")
    ledger = SQLiteLedger.connect(url, timeout_s=TIMEOUT_S)
    target = Admission(
        ledger=ledger,
        policies=PerKeyPolicies(RATE_LIMITED),
        prices=PRICES,
        replica="gw-0",
        store_backoff_s=BACKOFF_S,
    )
    try:
        assert (await target.admit(Caller(api_key_id="warm"), "m", BODY)).requests
        holder = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            for keys in (False, True):  # one counter, then one each
                outcomes, took = await admit_together(target, keys=keys)
                assert took < BOUND_S
                assert all(isinstance(o, Ticket) and o.requests is None for o in outcomes)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await asyncio.sleep(BACKOFF_S + TIMEOUT_S)  # the last probe's thread lets go
        assert (await target.admit(Caller(api_key_id="after"), "m", BODY)).requests
    finally:
        await ledger.close()
