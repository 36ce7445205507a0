"""The fleet's limit ledger: one counter per (scope, kind) that every gateway replica
draws leases from, so limits hold for the whole fleet, not per replica.

Kinds: `requests` and `tokens` (per-minute windows, anchored at the first grant after the
previous window ended), `spend` (US dollars per budget period, whose start the caller
computes from the budget's anchor) and `parallel` (requests in progress, no window).

Per counter the ledger keeps `committed` (what replicas hold in leases, plus what has
been settled as spent) and `spent`; per (replica, counter) a lease's `held` amount. The
invariants, for the counter's current window:

    committed = spent + sum(held of every replica)      committed <= limit (at grant)

- `grant(want_min, want_max, demand)`: hand a replica up to `want_max` more (at least
  `want_min`, else nothing), never more than a quarter of what is left unless `want_min`
  needs it, so one replica cannot starve the others; once less than four such leases are
  left, only what its waiting requests need (`demand`), so no replica holds capacity it
  will not use while others refuse; `committed += g`, `held += g`.
- `release(amount)`: a replica returns allowance it does not need (idle, limit changed,
  shutdown); `committed -= a`, `held -= a`.
- `settle(used)`: a request's real usage is known; the replica's lease shrinks by what
  was used and `spent` grows by it (`committed` is unchanged); the rest of the request's
  reservation went back into the replica's own unused allowance.
- `reap(stale_after_s)`: replicas that stopped sending heartbeats lose their leases;
  `committed -= held`.

`MemoryLedger` is the in-process implementation (unit tests, `governance_store=memory`);
`SQLiteLedger` (`sqlite.py`) keeps it in a SQLite file, shared by the processes of one
machine and kept across restarts (embedded mode, `--workers N` without PostgreSQL);
`PostgresLedger` (`postgres.py`) the fleet's. All have the same semantics.
"""

from __future__ import annotations

import abc
import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from typing_extensions import override

Kind = Literal["requests", "tokens", "spend", "parallel"]
KINDS: tuple[Kind, ...] = ("requests", "tokens", "spend", "parallel")
# Windowed kinds last this long from their first grant.
WINDOW_S = 60.0
# A grant takes at most this share of what is left (unless the request needs more).
FAIR_SHARE = 0.25


class LedgerUnavailable(Exception):
    """The ledger did not answer in time (database down or slow)."""


@dataclass(frozen=True)
class GrantRequest:
    """A replica asks for allowance of one counter.

    `period_start`/`period_end` (epoch seconds) are given for `spend` (the budget period
    containing now); `window_s` for `requests` and `tokens`."""

    scope: str
    kind: Kind
    limit: float
    want_min: float
    want_max: float
    window_s: float | None = None
    # What the requests waiting at this replica need in all: when little is left, a grant
    # gives no more than this, so nothing is stranded at a replica that will not use it.
    demand: float = 0.0
    period_start: float | None = None
    period_end: float | None = None


@dataclass(frozen=True)
class Grant:
    """What was granted, and the counter as the grant left it (epoch seconds)."""

    amount: float
    window_start: float
    window_end: float | None
    committed: float
    spent: float


@dataclass(frozen=True)
class LeaseChange:
    """Return `amount` of a lease (release), or settle `amount` used (settle), of which
    `overrun` went beyond everything the replica held of the counter (requests may use
    more than they reserved: an estimate is a guess). A settlement counts the overrun as
    committed at once, so no replica is granted what was already used."""

    scope: str
    kind: Kind
    window_start: float
    amount: float
    overrun: float = 0.0


@dataclass(frozen=True)
class CounterState:
    """A counter as the ledger holds it: its window (epoch seconds; `window_end` None for none),
    its limit, what is committed (leases plus spent) and what is spent, in the kind's unit
    (requests, tokens or USD)."""

    scope: str
    kind: Kind
    window_start: float
    window_end: float | None
    limit: float
    committed: float
    spent: float


@dataclass(frozen=True)
class LeaseRow:
    """What `replica` holds of the counter (`scope`, `kind`) in the window that started at
    `window_start` (epoch seconds), in the kind's unit."""

    replica: str
    scope: str
    kind: Kind
    window_start: float
    held: float


def giving_back(requests: Sequence[GrantRequest], grants: Sequence[Grant]) -> list[LeaseChange]:
    """The releases that undo `grants` (the answers to `requests`, in their order): for a
    grant that committed after its replica stopped waiting for it, which the replica never
    added to what it holds."""
    return [
        LeaseChange(request.scope, request.kind, grant.window_start, grant.amount)
        for request, grant in zip(requests, grants, strict=True)
        if grant.amount > 0
    ]


# Counted in whole units (requests, tokens); spend is in dollars, to a millionth.
WHOLE_KINDS = ("requests", "tokens", "parallel")


def grant_amount(
    limit: float,
    committed: float,
    want_min: float,
    want_max: float,
    kind: str = "spend",
    demand: float = 0.0,
) -> float:
    """How much of a counter with `limit` and `committed` a grant hands out: with plenty
    left (four leases' worth), up to `want_max` but at most a quarter of what is left;
    when it runs short, only what the waiting requests need (`demand`)."""
    available = limit - committed
    if want_min > available + 1e-9 or available <= 0:
        return 0.0
    unit = 1.0 if kind in WHOLE_KINDS else 1e-6
    if available >= want_max / FAIR_SHARE:
        share = max(want_min, math.floor(available * FAIR_SHARE / unit) * unit)
        return max(0.0, min(want_max, share, available))
    return max(0.0, min(available, max(want_min, demand)))


class Ledger(abc.ABC):
    """The store behind fleet-wide limits. Every method may raise LedgerUnavailable."""

    @abc.abstractmethod
    async def grant(self, replica: str, requests: Sequence[GrantRequest]) -> list[Grant]:
        """Grant each request (atomically per counter), in order."""

    @abc.abstractmethod
    async def release(self, replica: str, changes: Sequence[LeaseChange]) -> None:
        """Give back unused allowance of the replica's leases (`committed` and `held`
        shrink)."""

    @abc.abstractmethod
    async def settle(self, replica: str, changes: Sequence[LeaseChange]) -> None:
        """Record the usage the replica's requests really had (`spent` grows, `held`
        shrinks; an `overrun` grows `committed` and is taken off `held` with the rest)."""

    @abc.abstractmethod
    async def heartbeat(self, replica: str) -> None:
        """Mark the replica alive, so `reap` keeps its leases."""

    @abc.abstractmethod
    async def reap(self, stale_after_s: float) -> int:
        """Drop the leases of replicas silent for `stale_after_s`; how many replicas."""

    @abc.abstractmethod
    async def counters(self, scopes: Sequence[str] | None = None) -> list[CounterState]:
        """Current counters (of `scopes`, or all), for spend reports."""

    async def schema_current(self, timeout_s: float) -> bool:
        """Whether the store holds everything this version uses (readiness): False for a
        database its migration has not reached. A store in memory always does.

        Raises:
            LedgerUnavailable: the store did not answer within `timeout_s` seconds.
        """
        return True

    async def close(self) -> None:
        """Release the store's connections."""
        return None


@dataclass
class _Counter:
    window_start: float
    window_end: float | None
    limit: float
    committed: float = 0.0
    spent: float = 0.0


class MemoryLedger(Ledger):
    """The ledger in this process: exact for one process (embedded mode, tests)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counters: dict[tuple[str, Kind], _Counter] = {}
        # (replica, scope, kind) -> (window_start, held)
        self._leases: dict[tuple[str, str, Kind], tuple[float, float]] = {}
        self._heartbeats: dict[str, float] = {}
        self._lock = asyncio.Lock()
        # Tests make the store fail to see the failure modes.
        self.fail: bool = False

    def _check(self) -> None:
        if self.fail:
            raise LedgerUnavailable("memory ledger set to fail")

    def _current(self, request: GrantRequest, now: float) -> _Counter:
        key = (request.scope, request.kind)
        counter = self._counters.get(key)
        end: float | None
        if request.window_s is not None:
            start, end = now, now + request.window_s
        elif request.period_start is not None:
            start, end = request.period_start, request.period_end
        else:
            start, end = 0.0, None
        expired = counter is not None and (
            (
                request.window_s is not None
                and counter.window_end is not None
                and counter.window_end <= now
            )
            or (request.period_start is not None and counter.window_start < request.period_start)
        )
        if counter is None or expired:
            counter = _Counter(window_start=start, window_end=end, limit=request.limit)
            self._counters[key] = counter
        counter.limit = request.limit
        return counter

    @override
    async def grant(self, replica: str, requests: Sequence[GrantRequest]) -> list[Grant]:
        self._check()
        now = self._clock()
        grants = []
        for request in requests:
            counter = self._current(request, now)
            amount = grant_amount(
                request.limit,
                counter.committed,
                request.want_min,
                request.want_max,
                request.kind,
                request.demand,
            )
            counter.committed += amount
            if amount > 0:
                lease_key = (replica, request.scope, request.kind)
                start, held = self._leases.get(lease_key, (counter.window_start, 0.0))
                if start != counter.window_start:
                    held = 0.0
                self._leases[lease_key] = (counter.window_start, held + amount)
            grants.append(
                Grant(
                    amount,
                    counter.window_start,
                    counter.window_end,
                    counter.committed,
                    counter.spent,
                )
            )
        return grants

    def _lease(self, replica: str, change: LeaseChange) -> _Counter | None:
        counter = self._counters.get((change.scope, change.kind))
        if counter is None or counter.window_start != change.window_start:
            return None  # that window has ended: nothing to give back or settle
        return counter

    def _adjust_lease(self, replica: str, change: LeaseChange, delta: float) -> None:
        key = (replica, change.scope, change.kind)
        start, held = self._leases.get(key, (change.window_start, 0.0))
        if start == change.window_start:
            self._leases[key] = (start, max(0.0, held + delta))

    @override
    async def release(self, replica: str, changes: Sequence[LeaseChange]) -> None:
        self._check()
        for change in changes:
            counter = self._lease(replica, change)
            if counter is not None:
                counter.committed = max(0.0, counter.committed - change.amount)
                self._adjust_lease(replica, change, -change.amount)

    @override
    async def settle(self, replica: str, changes: Sequence[LeaseChange]) -> None:
        self._check()
        # Summed per counter first, as the PostgreSQL ledger does: an overrun adds to the
        # lease before the usage takes it off (`held` never goes below zero).
        totals: dict[tuple[str, Kind, float], list[float]] = {}
        for change in changes:
            total = totals.setdefault((change.scope, change.kind, change.window_start), [0, 0])
            total[0] += change.amount
            total[1] += change.overrun
        for (scope, kind, window_start), (amount, overrun) in totals.items():
            change = LeaseChange(scope, kind, window_start, amount, overrun)
            counter = self._lease(replica, change)
            if counter is not None:
                counter.spent += amount
                counter.committed += overrun
                self._adjust_lease(replica, change, overrun - amount)

    @override
    async def heartbeat(self, replica: str) -> None:
        self._check()
        self._heartbeats[replica] = self._clock()

    @override
    async def reap(self, stale_after_s: float) -> int:
        self._check()
        now = self._clock()
        dead = {r for r, at in self._heartbeats.items() if now - at > stale_after_s}
        for (replica, scope, kind), (start, held) in list(self._leases.items()):
            if replica not in dead:
                continue
            counter = self._counters.get((scope, kind))
            if counter is not None and counter.window_start == start:
                counter.committed = max(0.0, counter.committed - held)
            del self._leases[(replica, scope, kind)]
        for replica in dead:
            del self._heartbeats[replica]
        return len(dead)

    @override
    async def counters(self, scopes: Sequence[str] | None = None) -> list[CounterState]:
        self._check()
        wanted = set(scopes) if scopes is not None else None
        return [
            CounterState(scope, kind, c.window_start, c.window_end, c.limit, c.committed, c.spent)
            for (scope, kind), c in sorted(self._counters.items())
            if wanted is None or scope in wanted
        ]

    def load(self, counters: Sequence[CounterState], leases: Sequence[LeaseRow]) -> None:
        """Take `counters` and `leases` as this ledger's state (a store that keeps them
        elsewhere, `SQLiteLedger`, runs each operation on them here)."""
        for c in counters:
            self._counters[(c.scope, c.kind)] = _Counter(
                c.window_start, c.window_end, c.limit, c.committed, c.spent
            )
        for lease in leases:
            key = (lease.replica, lease.scope, lease.kind)
            self._leases[key] = (lease.window_start, lease.held)

    def state(self) -> tuple[list[CounterState], list[LeaseRow]]:
        """Every counter and lease this ledger holds, to be written back to a store."""
        counters = [
            CounterState(scope, kind, c.window_start, c.window_end, c.limit, c.committed, c.spent)
            for (scope, kind), c in self._counters.items()
        ]
        leases = [
            LeaseRow(replica, scope, kind, start, held)
            for (replica, scope, kind), (start, held) in self._leases.items()
        ]
        return counters, leases

    def held(self, replica: str, scope: str, kind: str) -> float:
        """What `replica` holds of a counter (tests)."""
        return self._leases.get((replica, scope, cast(Kind, kind)), (0.0, 0.0))[1]
