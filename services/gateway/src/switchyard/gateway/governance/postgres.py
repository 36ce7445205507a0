"""The limit ledger on PostgreSQL: the fleet's counters, shared by every gateway replica.

One grant is one call of the PL/pgSQL function `governance_grant` (migration 0001 of the
gateway), which locks each counter row (`SELECT ... FOR UPDATE`), starts a new window if
the old one ended, grants, and records the replica's lease, all in one transaction whose
commit does not wait for the disk (`_SETTINGS`). Items are sent in (scope, kind) order so
concurrent grants lock rows in the same order, and release, settle and reap lock their
counters in that order before their leases (`_LOCK_COUNTERS`): none of them deadlocks
another. Heartbeat is a single statement.

A statement slower than its bound is ended by the server (`statement_timeout`), not
cancelled by its caller (that would lose its connection, see
`switchyard.common.tasks.wait_or_leave`); a grant that commits all the same after its
replica stopped waiting is given back.

Times are epoch seconds (double precision), so windows compare exactly between Python
and SQL; the database's clock (`clock_timestamp()`) decides when a window ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typing_extensions import override

from switchyard.common.db import create_engine, dispose_engine
from switchyard.common.tasks import LeftWork, wait_or_leave
from switchyard.gateway.governance import tables
from switchyard.gateway.governance.ledger import (
    CounterState,
    Grant,
    GrantRequest,
    LeaseChange,
    Ledger,
    LedgerUnavailable,
    giving_back,
)

log = structlog.get_logger("switchyard.gateway.governance")
_T = TypeVar("_T")
# Runs a statement with its parameters in the transaction, bounded by its deadline
# (`PostgresLedger._transaction`); returns SQLAlchemy's result.
_Execute = Callable[[Any, dict[str, Any]], Awaitable[Any]]

_GRANT = text("SELECT governance_grant(:replica, CAST(:items AS jsonb))")
# Each statement's settings, in one round trip before it (`set_config(..., true)`: for the
# rest of the transaction):
# - `statement_timeout`: the time left until the transaction's deadline, so the server
#   ends work that outlasts its caller's bound (a lock held elsewhere, a slow disk) and it
#   rolls back, freeing its locks and its connection (`wait_or_leave`);
# - `synchronous_commit`: off for a grant, whose commit then does not wait for its
#   write-ahead log to reach the disk (a request waits on it, and a flush held up by other
#   writers is not the store being down). A crash of the database server may lose the last
#   fraction of a second of grants: the replicas go on using what those granted, so until
#   their windows end the fleet may admit up to that much beyond a limit. Settlements
#   (spend) still wait for the disk.
_SETTINGS = text(
    "SELECT set_config('statement_timeout', :statement_timeout, true), "
    "set_config('synchronous_commit', :synchronous_commit, true)"
)
# How much longer than its deadline a background transaction's caller waits: the server's
# verdict (done, or rolled back) comes first, so a settlement given up on never commits
# later (a retry would count it twice), unless the server stopped answering.
SERVER_VERDICT_S = 5.0
# NULL when migration 0001's function is missing.
_GRANT_FUNCTION_PRESENT = text("SELECT to_regprocedure('governance_grant(text, jsonb)')")
_RELEASE = text(
    """
    WITH items AS (
        SELECT i->>'scope' AS scope, i->>'kind' AS kind,
               (i->>'window_start')::float8 AS window_start, (i->>'amount')::float8 AS amount
        FROM jsonb_array_elements(CAST(:items AS jsonb)) AS i
    ), counters AS (
        UPDATE governance_counters c
        SET committed = greatest(0, c.committed - items.amount), updated_at = now()
        FROM items
        WHERE c.scope = items.scope AND c.kind = items.kind
          AND c.window_start = items.window_start
        RETURNING c.scope
    )
    UPDATE governance_leases l
    SET held = greatest(0, l.held - items.amount)
    FROM items
    WHERE l.replica = :replica AND l.scope = items.scope AND l.kind = items.kind
      AND l.window_start = items.window_start
    """
)
_SETTLE = text(
    """
    WITH items AS (
        SELECT i->>'scope' AS scope, i->>'kind' AS kind,
               (i->>'window_start')::float8 AS window_start,
               sum((i->>'amount')::float8) AS amount,
               sum(coalesce((i->>'overrun')::float8, 0)) AS overrun
        FROM jsonb_array_elements(CAST(:items AS jsonb)) AS i
        GROUP BY 1, 2, 3
    ), counters AS (
        UPDATE governance_counters c
        SET spent = c.spent + items.amount, committed = c.committed + items.overrun,
            updated_at = now()
        FROM items
        WHERE c.scope = items.scope AND c.kind = items.kind
          AND c.window_start = items.window_start
        RETURNING c.scope
    )
    UPDATE governance_leases l
    SET held = greatest(0, l.held + items.overrun - items.amount)
    FROM items
    WHERE l.replica = :replica AND l.scope = items.scope AND l.kind = items.kind
      AND l.window_start = items.window_start
    """
)
# Release and settle lock their counters first, in the order grants lock them (items by
# (scope, kind), in code point order, which "C" collation's byte order is), before their
# leases: a statement locking a lease and then its counter, against a grant locking the
# counter and then the lease, would deadlock. (PostgreSQL sorts before it locks.)
_LOCK_COUNTERS = text(
    """
    SELECT 1 FROM governance_counters c
    WHERE (c.scope, c.kind) IN (
        SELECT i->>'scope', i->>'kind' FROM jsonb_array_elements(CAST(:items AS jsonb)) AS i
    )
    ORDER BY c.scope COLLATE "C", c.kind COLLATE "C"
    FOR UPDATE
    """
)
_HEARTBEAT = text(
    """
    INSERT INTO governance_replicas (replica, heartbeat_at) VALUES (:replica, now())
    ON CONFLICT (replica) DO UPDATE SET heartbeat_at = now()
    """
)
_REAP = text(
    """
    WITH locked AS (
        SELECT i->>'scope' AS scope, i->>'kind' AS kind
        FROM jsonb_array_elements(CAST(:counters AS jsonb)) AS i
    ), stale AS (
        SELECT replica FROM governance_replicas
        WHERE heartbeat_at < now() - make_interval(secs => :stale_after_s)
    ), dead AS (
        -- A silent replica with a lease of a counter not locked keeps its row till then.
        DELETE FROM governance_replicas r USING stale
        WHERE r.replica = stale.replica AND NOT EXISTS (
            SELECT 1 FROM governance_leases l
            WHERE l.replica = r.replica
              AND (l.scope, l.kind) NOT IN (SELECT scope, kind FROM locked)
        )
        RETURNING r.replica
    ), gone AS (
        DELETE FROM governance_leases l USING stale
        WHERE l.replica = stale.replica
          AND (l.scope, l.kind) IN (SELECT scope, kind FROM locked)
        RETURNING l.scope, l.kind, l.window_start, l.held
    ), totals AS (
        SELECT scope, kind, window_start, sum(held) AS held FROM gone GROUP BY 1, 2, 3
    ), counters AS (
        UPDATE governance_counters c SET committed = greatest(0, c.committed - totals.held)
        FROM totals
        WHERE c.scope = totals.scope AND c.kind = totals.kind
          AND c.window_start = totals.window_start
        RETURNING c.scope
    )
    SELECT count(*) FROM dead
    """
)
# The counters of silent replicas' leases, locked as `_LOCK_COUNTERS` does; `_REAP` then
# deletes only the leases of these counters (a lease of another, granted since, is reaped
# on the next round, with its counter locked first).
_LOCK_REAPED_COUNTERS = text(
    """
    SELECT c.scope, c.kind FROM governance_counters c
    WHERE (c.scope, c.kind) IN (
        SELECT l.scope, l.kind FROM governance_leases l
        JOIN governance_replicas r ON r.replica = l.replica
        WHERE r.heartbeat_at < now() - make_interval(secs => :stale_after_s)
    )
    ORDER BY c.scope COLLATE "C", c.kind COLLATE "C"
    FOR UPDATE OF c
    """
)
_COUNTERS = text(
    "SELECT scope, kind, window_start, window_end, limit_value, committed, spent "
    "FROM governance_counters ORDER BY scope, kind"
)
_SCOPED_COUNTERS = text(
    "SELECT scope, kind, window_start, window_end, limit_value, committed, spent "
    "FROM governance_counters WHERE scope = ANY(:scopes) ORDER BY scope, kind"
)


def _items(changes: Sequence[LeaseChange]) -> str:
    return orjson.dumps(
        [
            {
                "scope": change.scope,
                "kind": change.kind,
                "window_start": change.window_start,
                "amount": change.amount,
                "overrun": change.overrun,
            }
            for change in changes
        ]
    ).decode()


class PostgresLedger(Ledger):
    """The ledger in the `governance_*` tables.

    Grants (on a request's path) are bounded by `timeout_s`: slower counts as the store
    being down (the server ends the grant at that bound too; one that commits all the same
    is given back). Settlements, releases and housekeeping run in the background and get
    `background_timeout_s`, and their callers wait `SERVER_VERDICT_S` longer: a
    settlement given up on while it could still commit would count twice when retried."""

    def __init__(
        self, engine: AsyncEngine, *, timeout_s: float = 0.5, background_timeout_s: float = 60.0
    ) -> None:
        self._engine = engine
        self._timeout_s = timeout_s
        self._background_timeout_s = background_timeout_s
        # Transactions left running past their callers' bounds (`_transaction`).
        self._left = LeftWork()

    @classmethod
    def connect(cls, database_url: str, *, timeout_s: float = 0.5) -> PostgresLedger:
        """A ledger on the PostgreSQL database at `database_url`; a grant taking longer than
        `timeout_s` seconds raises `LedgerUnavailable`."""
        return cls(create_engine(database_url), timeout_s=timeout_s)

    async def _transaction(
        self,
        work: Callable[[_Execute], Awaitable[_T]],
        *,
        grant: bool = False,
        on_late: Callable[[_T], Awaitable[None] | None] | None = None,
    ) -> _T:
        """What `work` returns, in a transaction of its own; `work` runs its statements with
        the `execute` it is given. A grant (`grant`) is bounded by `timeout_s` and commits
        without waiting for the disk; the rest by `background_timeout_s`.

        The bound is a deadline from this call on: each statement may run only until it
        (`statement_timeout`, set before each to the time left), so the server rolls back
        work that outlasts it. A grant's caller stops waiting at the deadline without
        cancelling the work (a call cancelled half-way loses its connection,
        `wait_or_leave`), and a grant that commits all the same goes to `on_late`. The
        others' callers wait `SERVER_VERDICT_S` more, for the server's verdict: a
        settlement written again must be one that did not commit.

        Raises:
            LedgerUnavailable: slower than the bound, or any database failure.
        """
        loop = asyncio.get_running_loop()
        bound_s = self._timeout_s if grant else self._background_timeout_s
        deadline = loop.time() + bound_s
        wait_s = bound_s if grant else bound_s + SERVER_VERDICT_S
        synchronous_commit = "off" if grant else "on"

        async def run() -> _T:
            async with self._engine.begin() as connection:

                async def execute(statement: Any, params: dict[str, Any]) -> Any:
                    left_ms = round((deadline - loop.time()) * 1000)
                    if left_ms < 1:
                        raise LedgerUnavailable(f"limit store did not answer in {bound_s}s")
                    await connection.execute(
                        _SETTINGS,
                        {
                            "statement_timeout": f"{left_ms}ms",
                            "synchronous_commit": synchronous_commit,
                        },
                    )
                    return await connection.execute(statement, params)

                return await work(execute)

        try:
            return await wait_or_leave(
                run(),
                wait_s,
                finish_s=self._background_timeout_s + SERVER_VERDICT_S,
                on_late=on_late,
                left=self._left,
            )
        except TimeoutError as exc:
            raise LedgerUnavailable(f"limit store did not answer in {wait_s}s") from exc
        except LedgerUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - any database failure means "unavailable"
            raise LedgerUnavailable(repr(exc)) from exc

    async def _run(self, statement: Any, params: dict[str, Any], *, lock: Any = None) -> Any:
        """The rows `statement` returns (None when it returns none), in a background
        transaction (`_transaction`); `lock`: a statement run first, with the same
        parameters (`_LOCK_COUNTERS`)."""

        async def work(execute: _Execute) -> Any:
            if lock is not None:
                await execute(lock, params)
            result = await execute(statement, params)
            return result.fetchall() if result.returns_rows else None

        return await self._transaction(work)

    @override
    async def grant(self, replica: str, requests: Sequence[GrantRequest]) -> list[Grant]:
        order = sorted(range(len(requests)), key=lambda i: (requests[i].scope, requests[i].kind))
        items = orjson.dumps(
            [
                {
                    "scope": requests[i].scope,
                    "kind": requests[i].kind,
                    "limit": requests[i].limit,
                    "want_min": requests[i].want_min,
                    "want_max": requests[i].want_max,
                    "demand": requests[i].demand,
                    "window_s": requests[i].window_s,
                    "period_start": requests[i].period_start,
                    "period_end": requests[i].period_end,
                }
                for i in order
            ]
        ).decode()

        def grants(rows: Any) -> list[Grant]:
            answers = rows[0][0]
            if isinstance(answers, str):
                answers = orjson.loads(answers)
            in_order: list[Grant | None] = [None] * len(requests)
            for position, answer in zip(order, answers, strict=True):
                in_order[position] = Grant(
                    amount=float(answer["amount"]),
                    window_start=float(answer["window_start"]),
                    window_end=float(answer["window_end"])
                    if answer["window_end"] is not None
                    else None,
                    committed=float(answer["committed"]),
                    spent=float(answer["spent"]),
                )
            return in_order  # type: ignore[return-value]

        async def work(execute: _Execute) -> list[Grant]:
            result = await execute(_GRANT, {"replica": replica, "items": items})
            return grants(result.fetchall())

        return await self._transaction(
            work,
            grant=True,
            # A grant that committed after this replica stopped waiting for it: given back,
            # or the fleet would count it as held here until its window ends.
            on_late=lambda granted: self._release_quietly(replica, giving_back(requests, granted)),
        )

    @override
    async def release(self, replica: str, changes: Sequence[LeaseChange]) -> None:
        if changes:
            await self._run(
                _RELEASE, {"replica": replica, "items": _items(changes)}, lock=_LOCK_COUNTERS
            )

    async def _release_quietly(self, replica: str, changes: Sequence[LeaseChange]) -> None:
        try:
            await self.release(replica, changes)
        except LedgerUnavailable as exc:
            # Still counted as held by `replica`: until its window ends, or the replica
            # is reaped.
            log.warning("late grant not given back", replica=replica, error=str(exc))

    @override
    async def settle(self, replica: str, changes: Sequence[LeaseChange]) -> None:
        if changes:
            await self._run(
                _SETTLE, {"replica": replica, "items": _items(changes)}, lock=_LOCK_COUNTERS
            )

    @override
    async def heartbeat(self, replica: str) -> None:
        await self._run(_HEARTBEAT, {"replica": replica})

    @override
    async def reap(self, stale_after_s: float) -> int:
        async def work(execute: _Execute) -> int:
            locked = await execute(_LOCK_REAPED_COUNTERS, {"stale_after_s": stale_after_s})
            counters = orjson.dumps(
                [{"scope": scope, "kind": kind} for scope, kind in locked.fetchall()]
            ).decode()
            reaped = await execute(_REAP, {"stale_after_s": stale_after_s, "counters": counters})
            return int(reaped.scalar_one())

        return await self._transaction(work)

    @override
    async def counters(self, scopes: Sequence[str] | None = None) -> list[CounterState]:
        if scopes is None:
            rows = await self._run(_COUNTERS, {})
        else:
            rows = await self._run(_SCOPED_COUNTERS, {"scopes": list(scopes)})
        return [
            CounterState(
                scope=row[0],
                kind=row[1],
                window_start=row[2],
                window_end=row[3],
                limit=row[4],
                committed=row[5],
                spent=row[6],
            )
            for row in rows
        ]

    @override
    async def schema_current(self, timeout_s: float) -> bool:
        return await tables.schema_current(
            self._engine, timeout_s, _GRANT_FUNCTION_PRESENT, left=self._left
        )

    @override
    async def close(self) -> None:
        # Statements left running past their caller's bound end first (a late grant's
        # release with them), so that none is cut off by the engine's disposal.
        await self._left.wait(timeout_s=5.0)
        await dispose_engine(self._engine)


GRANT_FUNCTION = """
CREATE OR REPLACE FUNCTION governance_grant(p_replica text, p_items jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    item jsonb;
    answers jsonb := '[]'::jsonb;
    v_now float8 := extract(epoch FROM clock_timestamp());
    v_scope text;
    v_kind text;
    v_limit float8;
    v_min float8;
    v_max float8;
    v_demand float8;
    v_window_s float8;
    v_period_start float8;
    v_period_end float8;
    v_start float8;
    v_end float8;
    c_start float8;
    c_end float8;
    c_committed float8;
    c_spent float8;
    v_available float8;
    v_grant float8;
BEGIN
    FOR item IN SELECT value FROM jsonb_array_elements(p_items) LOOP
        v_scope := item->>'scope';
        v_kind := item->>'kind';
        v_limit := (item->>'limit')::float8;
        v_min := (item->>'want_min')::float8;
        v_max := (item->>'want_max')::float8;
        v_demand := coalesce((item->>'demand')::float8, 0);
        v_window_s := (item->>'window_s')::float8;
        v_period_start := (item->>'period_start')::float8;
        v_period_end := (item->>'period_end')::float8;
        IF v_window_s IS NOT NULL THEN
            v_start := v_now;
            v_end := v_now + v_window_s;
        ELSIF v_period_start IS NOT NULL THEN
            v_start := v_period_start;
            v_end := v_period_end;
        ELSE
            v_start := 0;
            v_end := NULL;
        END IF;
        INSERT INTO governance_counters
            (scope, kind, window_start, window_end, limit_value, committed, spent, updated_at)
        VALUES (v_scope, v_kind, v_start, v_end, v_limit, 0, 0, now())
        ON CONFLICT (scope, kind) DO NOTHING;
        SELECT window_start, window_end, committed, spent
        INTO c_start, c_end, c_committed, c_spent
        FROM governance_counters WHERE scope = v_scope AND kind = v_kind FOR UPDATE;
        -- A window that has ended, or a budget period that has passed, starts again.
        IF (v_window_s IS NOT NULL AND c_end IS NOT NULL AND c_end <= v_now)
           OR (v_period_start IS NOT NULL AND c_start < v_period_start) THEN
            c_start := v_start;
            c_end := v_end;
            c_committed := 0;
            c_spent := 0;
        END IF;
        v_available := v_limit - c_committed;
        IF v_available <= 0 OR v_min > v_available + 1e-9 THEN
            v_grant := 0;
        ELSIF v_available < v_max / 0.25 THEN
            -- Running short: only what the replica's waiting requests need.
            v_grant := least(v_available, greatest(v_min, v_demand));
        ELSE
            -- Whole units of requests, tokens and slots; dollars to a millionth.
            IF v_kind IN ('requests', 'tokens', 'parallel') THEN
                v_grant := greatest(0, least(
                    v_max, greatest(v_min, floor(v_available * 0.25)), v_available));
            ELSE
                v_grant := greatest(0, least(
                    v_max, greatest(v_min, floor(v_available * 0.25 * 1e6) / 1e6), v_available));
            END IF;
        END IF;
        UPDATE governance_counters
        SET window_start = c_start, window_end = c_end, limit_value = v_limit,
            committed = c_committed + v_grant, spent = c_spent, updated_at = now()
        WHERE scope = v_scope AND kind = v_kind;
        IF v_grant > 0 THEN
            INSERT INTO governance_leases AS l (replica, scope, kind, window_start, held)
            VALUES (p_replica, v_scope, v_kind, c_start, v_grant)
            ON CONFLICT (replica, scope, kind) DO UPDATE SET
                held = CASE WHEN l.window_start = EXCLUDED.window_start
                            THEN l.held + EXCLUDED.held ELSE EXCLUDED.held END,
                window_start = EXCLUDED.window_start;
        END IF;
        answers := answers || jsonb_build_array(jsonb_build_object(
            'amount', v_grant, 'window_start', c_start, 'window_end', c_end,
            'committed', c_committed + v_grant, 'spent', c_spent));
    END LOOP;
    RETURN answers;
END
$$;
"""
