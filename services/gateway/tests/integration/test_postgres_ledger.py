"""The fleet's limit ledger on the real PostgreSQL server: several replicas (here several
ledgers, each with its own connection pool, as separate processes would have) draw on one
set of counters, and the limits hold for all of them together (the scenarios of
`switchyard.gateway.governance.ledger_checks`, which the SQLite ledger passes too). Also
the migration's upgrade and downgrade, a grant slower than its bound, and the order in which
the ledger's statements lock rows."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import pytest
from sqlalchemy import text

from switchyard.common.db import create_engine, dispose_engine, downgrade, upgrade
from switchyard.gateway.governance import ledger_checks
from switchyard.gateway.governance.ledger import GrantRequest, LeaseChange, LedgerUnavailable
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


async def test_a_grant_past_its_bound_ends_with_it_and_keeps_its_connection(
    ledger_url: str,
) -> None:
    """A grant held up (here by another transaction's lock on one of its counters) past the
    ledger's bound counts as the store being down. The server ends it at that bound too
    (`statement_timeout`): it holds the counter it did lock (A) no longer than its caller
    waited, so another replica's grant of A goes through at once. And it is not cancelled
    by its caller: cancelled half-way, its connection would stay open on the server,
    outside the pool, one more with every slow grant."""
    name = f"sy-ledger-{uuid.uuid4().hex[:8]}"
    engine = create_engine(ledger_url, connect_args={"application_name": name})
    ledger = PostgresLedger(engine, timeout_s=0.3)
    other = PostgresLedger.connect(ledger_url, timeout_s=5.0)

    def request(scope: str) -> GrantRequest:
        return GrantRequest(
            scope=scope, kind="requests", limit=100, want_min=1, want_max=10, window_s=60
        )

    await ledger.grant("replica-a", [request("key:a"), request("key:b")])
    blocker = create_engine(ledger_url)
    try:
        for _ in range(5):
            async with blocker.connect() as connection:
                transaction = await connection.begin()
                await connection.execute(
                    text("SELECT 1 FROM governance_counters WHERE scope = 'key:b' FOR UPDATE")
                )
                with pytest.raises(LedgerUnavailable):
                    await ledger.grant("replica-a", [request("key:a"), request("key:b")])
                started = time.monotonic()
                [granted] = await other.grant("replica-b", [request("key:a")])
                assert granted.amount > 0 and time.monotonic() - started < 1.0
                await transaction.rollback()
            assert await ledger._left.wait(10) == 0
        counters = {c.scope: c.committed for c in await ledger.counters(["key:a", "key:b"])}
        # replica-a's first grant of each, and replica-b's five of A: no more.
        assert counters == {"key:a": 60, "key:b": 10}
        async with blocker.connect() as connection:
            open_connections = (
                await connection.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                    {"name": name},
                )
            ).scalar_one()
        # No more than the pool holds: none lost to a cancellation.
        assert open_connections <= engine.pool.checkedin() + engine.pool.checkedout()
        assert engine.pool.checkedout() == 0
    finally:
        await ledger.close()
        await other.close()
        await dispose_engine(blocker)


async def test_a_settlement_given_up_on_is_never_counted_twice(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settlement held up past its deadline fails, and the replica writes it again
    later (`Admission.flush`). Here its counter is locked elsewhere for most of the
    deadline and its lease nearly to twice it: each statement alone is within the bound,
    the two together are not. The server ends the second at the deadline the call began
    with, and the caller waits for that verdict, so the first try cannot commit behind
    the retry: spent once. (Scaled down: a 1 s deadline, 0.5 s for the verdict.)"""
    from switchyard.gateway.governance import postgres

    monkeypatch.setattr(postgres, "SERVER_VERDICT_S", 0.5)
    ledger = PostgresLedger(create_engine(ledger_url), background_timeout_s=1.0)
    request = GrantRequest(
        scope="team:settle",
        kind="spend",
        limit=100,
        want_min=1,
        want_max=10,
        period_start=0,
        period_end=1e12,
    )
    [granted] = await ledger.grant("replica-a", [request])
    change = LeaseChange("team:settle", "spend", granted.window_start, 1.0)
    blocker = create_engine(ledger_url)

    async def hold(statement: str, seconds: float, held: asyncio.Event) -> None:
        async with blocker.connect() as connection:
            await connection.begin()
            await connection.execute(text(statement))
            held.set()
            await asyncio.sleep(seconds)
            await connection.rollback()

    counter_held, lease_held = asyncio.Event(), asyncio.Event()
    holders = [
        asyncio.create_task(
            hold(
                "SELECT 1 FROM governance_counters WHERE scope = 'team:settle' FOR UPDATE",
                0.95,
                counter_held,
            )
        ),
        asyncio.create_task(
            hold(
                "SELECT 1 FROM governance_leases WHERE scope = 'team:settle' FOR UPDATE",
                1.9,
                lease_held,
            )
        ),
    ]
    try:
        await counter_held.wait()
        await lease_held.wait()
        attempts = 0
        while True:
            attempts += 1
            try:
                await ledger.settle("replica-a", [change])
                break
            except LedgerUnavailable:
                assert attempts < 5
                await asyncio.sleep(0.5)
        assert attempts > 1  # the first try was given up on
        await asyncio.gather(*holders)
        assert await ledger._left.wait(10) == 0
        [counter] = await ledger.counters(["team:settle"])
        assert counter.spent == 1.0
    finally:
        await ledger.close()
        await dispose_engine(blocker)


async def test_grants_cut_short_leave_no_connection_behind(ledger_url: str) -> None:
    """Grants given less time than a round trip takes (their bounds passing while they
    connect, check the connection or run) hold the server's connections only through the
    pool: none is left open on the server once the pool forgets it, as a cancelled
    connection was, until the server had no slot left."""
    name = f"sy-ledger-{uuid.uuid4().hex[:8]}"
    engine = create_engine(ledger_url, connect_args={"application_name": name})
    ledger = PostgresLedger(engine)
    requests = [
        GrantRequest(scope=f"key:short-{n}", kind="requests", limit=1e9, want_min=1, want_max=1)
        for n in range(10)
    ]
    granted = 0.0
    try:
        for step in range(1, 30):
            ledger._timeout_s = step / 1000
            for _ in range(5):
                answers = await asyncio.gather(
                    *[ledger.grant("replica-a", [request]) for request in requests],
                    return_exceptions=True,
                )
                granted += sum(a[0].amount for a in answers if not isinstance(a, BaseException))
        assert await ledger._left.wait(30) == 0
        checker = create_engine(ledger_url)
        try:
            async with checker.connect() as connection:
                on_server = (
                    await connection.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"
                        ),
                        {"name": name},
                    )
                ).scalar_one()
        finally:
            await dispose_engine(checker)
        assert engine.pool.checkedout() == 0
        assert on_server == engine.pool.checkedin(), (on_server, engine.pool.status())
        # A grant that committed after its caller gave up on it was given back: the
        # ledger holds what the callers were granted, no more.
        scopes = [request.scope for request in requests]
        assert sum(counter.committed for counter in await ledger.counters(scopes)) == granted
    finally:
        await ledger.close()


async def test_grants_releases_and_settlements_of_the_same_counters_never_deadlock(
    ledger_url: str,
) -> None:
    """Several replicas granting, releasing and settling the same four counters at once,
    the items of each call in any order: every call answers. (A release or settlement
    that locked a lease before its counter, against a grant locking the counter before
    the lease, was aborted by PostgreSQL's deadlock detection after a second.)"""
    ledger = PostgresLedger.connect(ledger_url, timeout_s=5.0)
    scopes = [f"key:locks-{n}" for n in range(4)]
    requests = [
        GrantRequest(scope=scope, kind="requests", limit=1e9, want_min=1, want_max=1, window_s=600)
        for scope in scopes
    ]
    failures: list[str] = []
    shuffled = random.Random(7)

    async def one(n: int) -> None:
        replica = f"replica-{n % 3}"
        try:
            if n % 3 == 0:
                await ledger.grant(replica, shuffled.sample(requests, len(requests)))
                return
            changes = [
                LeaseChange(scope, "requests", grant.window_start, 1)
                for scope, grant in zip(scopes, granted, strict=True)
            ]
            shuffled.shuffle(changes)
            if n % 3 == 1:
                await ledger.release(replica, changes)
            else:
                await ledger.settle(replica, changes)
        except LedgerUnavailable as exc:
            failures.append(str(exc))

    try:
        granted = await ledger.grant("replica-0", requests)
        for _ in range(15):
            await asyncio.gather(*[one(n) for n in range(15)])
        assert failures == []
    finally:
        await ledger.close()
