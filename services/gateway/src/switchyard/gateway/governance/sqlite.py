"""The limit ledger in a SQLite file: the `governance_*` tables of the gateway's database
(migration 0001), shared by every gateway process of one machine that opens the file
(the workers of `switchyard gateway --workers N`, embedded mode) and kept across restarts,
so a budget's spend is not forgotten when the gateway starts again.

Each operation is one `BEGIN IMMEDIATE` transaction (`switchyard.common.db`): it takes the
database's write lock, so operations of all processes run one after the other. Inside it
the rows of the counters and leases the operation touches are read, `MemoryLedger` (the
one statement of the ledger's rules) runs the operation on them, and what it left is
written back. The processes share one clock (the machine's), as `MemoryLedger` assumes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Table,
    and_,
    delete,
    event,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from typing_extensions import override

from switchyard.common.db import create_engine, dispose_engine
from switchyard.common.tasks import LeftWork, wait_or_leave
from switchyard.gateway.governance import tables
from switchyard.gateway.governance.ledger import (
    CounterState,
    Grant,
    GrantRequest,
    Kind,
    LeaseChange,
    LeaseRow,
    Ledger,
    LedgerUnavailable,
    MemoryLedger,
    giving_back,
)
from switchyard.gateway.governance.tables import counters_table, leases_table, replicas_table

_T = TypeVar("_T")
_Key = tuple[str, Kind]


def _counter(row: Any) -> CounterState:
    return CounterState(
        row.scope,
        row.kind,
        row.window_start,
        row.window_end,
        row.limit_value,
        row.committed,
        row.spent,
    )


class SQLiteLedger(Ledger):
    """The ledger in the `governance_*` tables of a SQLite database.

    An operation on the request's path (a grant) taking longer than `timeout_s` raises
    `LedgerUnavailable`, as any database failure does; the others (settlements, releases,
    housekeeping, off the request's path) get `background_timeout_s`."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        timeout_s: float = 0.5,
        background_timeout_s: float = 60.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._engine = engine
        self._timeout_s = timeout_s
        self._background_timeout_s = background_timeout_s
        self._clock = clock
        # One transaction of this process at a time: the write lock is the database's.
        self._lock = asyncio.Lock()
        # Transactions left running past their callers' bounds (`_transaction`).
        self._left = LeftWork()

    @classmethod
    def connect(cls, database_url: str, *, timeout_s: float = 0.5) -> SQLiteLedger:
        """A ledger on the SQLite database at `database_url` (its tables made by the
        gateway's migrations); a grant taking longer than `timeout_s` seconds raises
        `LedgerUnavailable`."""
        engine = create_engine(database_url)

        @event.listens_for(engine.sync_engine, "connect")
        def _short_busy_wait(dbapi_connection: Any, _: Any) -> None:  # pragma: no cover
            # After the engine's own 15 s (registered first): SQLite itself gives up on a
            # write lock held elsewhere within the grant's bound. Cancelling the await
            # cannot: the driver's thread would sit in the busy handler, and the rollback
            # behind it, for the full 15 s. A settlement refused so is retried later.
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={max(1, int(timeout_s * 1000))}")
            # In WAL mode NORMAL syncs at checkpoints, not at every commit: a transaction
            # holds the write lock for microseconds, not a disk flush, so the workers of a
            # busy gateway do not queue behind each other past the bound. A commit can be
            # lost to a power cut (never to a crash of the process): at most the last
            # moments of counting.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return cls(engine, timeout_s=timeout_s)

    async def _transaction(
        self,
        work: Callable[[AsyncConnection], Awaitable[_T]],
        timeout_s: float | None = None,
        on_late: Callable[[_T], Awaitable[None]] | None = None,
    ) -> _T:
        """What `work` returns, run in one transaction. A grant (`timeout_s` given) is
        bounded by it, from this call on: waiting for this process's turn is simply given
        up, and a transaction that started and outlasts the bound runs on to its end
        rather than being cancelled half-way (`wait_or_leave`), its result then given to
        `on_late`. The rest wait up to `background_timeout_s` for their turn, and then for
        the transaction's own end (each statement bounded by SQLite's busy timeout), a
        minute at most: a settlement written again must be one that did not commit."""
        loop = asyncio.get_running_loop()
        background = timeout_s is None
        bound_s = self._background_timeout_s if timeout_s is None else timeout_s
        deadline = loop.time() + bound_s

        async def run() -> _T:
            try:
                async with self._engine.begin() as connection:
                    return await work(connection)
            finally:
                self._lock.release()

        try:
            async with asyncio.timeout_at(deadline):
                await self._lock.acquire()
            # From here the task `run` becomes releases the lock, however it ends.
            return await wait_or_leave(
                run(),
                self._background_timeout_s if background else max(deadline - loop.time(), 0.0),
                finish_s=self._background_timeout_s,
                on_late=on_late,
                left=self._left,
            )
        except TimeoutError as exc:
            raise LedgerUnavailable(f"limit store did not answer in {timeout_s}s") from exc
        except Exception as exc:  # noqa: BLE001 - any database failure means "unavailable"
            raise LedgerUnavailable(repr(exc)) from exc

    async def _on_rows(
        self,
        replica: str,
        keys: set[_Key],
        operation: Callable[[MemoryLedger], Awaitable[_T]],
        timeout_s: float | None = None,
        on_late: Callable[[_T], Awaitable[None]] | None = None,
    ) -> _T:
        """Run `operation` on a `MemoryLedger` holding the counters `keys` and `replica`'s
        leases of them, and write back what it left, in one transaction."""

        async def work(connection: AsyncConnection) -> _T:
            scopes = sorted({scope for scope, _ in keys})
            counters = [
                _counter(row)
                for row in await connection.execute(
                    select(counters_table).where(counters_table.c.scope.in_(scopes))
                )
                if (row.scope, row.kind) in keys
            ]
            leases = [
                LeaseRow(row.replica, row.scope, row.kind, row.window_start, row.held)
                for row in await connection.execute(
                    select(leases_table).where(
                        and_(leases_table.c.replica == replica, leases_table.c.scope.in_(scopes))
                    )
                )
                if (row.scope, row.kind) in keys
            ]
            ledger = MemoryLedger() if self._clock is None else MemoryLedger(self._clock)
            ledger.load(counters, leases)
            result = await operation(ledger)
            after_counters, after_leases = ledger.state()
            now = datetime.now(UTC)
            for counter in after_counters:
                await _replace(
                    connection,
                    counters_table,
                    scope=counter.scope,
                    kind=counter.kind,
                    window_start=counter.window_start,
                    window_end=counter.window_end,
                    limit_value=counter.limit,
                    committed=counter.committed,
                    spent=counter.spent,
                    updated_at=now,
                )
            for lease in after_leases:
                await _replace(
                    connection,
                    leases_table,
                    replica=lease.replica,
                    scope=lease.scope,
                    kind=lease.kind,
                    window_start=lease.window_start,
                    held=lease.held,
                )
            return result

        return await self._transaction(work, timeout_s, on_late)

    @override
    async def grant(self, replica: str, requests: Sequence[GrantRequest]) -> list[Grant]:
        keys = {(request.scope, request.kind) for request in requests}

        async def give_back(grants: list[Grant]) -> None:
            # Committed after this replica stopped waiting for it: never held here.
            with contextlib.suppress(LedgerUnavailable):
                await self.release(replica, giving_back(requests, grants))

        return await self._on_rows(
            replica,
            keys,
            lambda ledger: ledger.grant(replica, requests),
            self._timeout_s,
            on_late=give_back,
        )

    @override
    async def release(self, replica: str, changes: Sequence[LeaseChange]) -> None:
        if changes:
            keys = {(change.scope, change.kind) for change in changes}
            await self._on_rows(replica, keys, lambda ledger: ledger.release(replica, changes))

    @override
    async def settle(self, replica: str, changes: Sequence[LeaseChange]) -> None:
        if changes:
            keys = {(change.scope, change.kind) for change in changes}
            await self._on_rows(replica, keys, lambda ledger: ledger.settle(replica, changes))

    @override
    async def heartbeat(self, replica: str) -> None:
        async def work(connection: AsyncConnection) -> None:
            await _replace(
                connection, replicas_table, replica=replica, heartbeat_at=datetime.now(UTC)
            )

        await self._transaction(work)

    @override
    async def reap(self, stale_after_s: float) -> int:
        async def work(connection: AsyncConnection) -> int:
            now = datetime.now(UTC)
            dead = [
                row.replica
                for row in await connection.execute(select(replicas_table))
                if (now - _aware(row.heartbeat_at)).total_seconds() > stale_after_s
            ]
            for replica in dead:
                for lease in await connection.execute(
                    select(leases_table).where(leases_table.c.replica == replica)
                ):
                    where = and_(
                        counters_table.c.scope == lease.scope,
                        counters_table.c.kind == lease.kind,
                        counters_table.c.window_start == lease.window_start,
                    )
                    row = (await connection.execute(select(counters_table).where(where))).first()
                    if row is not None:
                        await connection.execute(
                            counters_table.update()
                            .where(where)
                            .values(committed=max(0.0, row.committed - lease.held))
                        )
                await connection.execute(
                    delete(leases_table).where(leases_table.c.replica == replica)
                )
                await connection.execute(
                    delete(replicas_table).where(replicas_table.c.replica == replica)
                )
            return len(dead)

        return await self._transaction(work)

    @override
    async def counters(self, scopes: Sequence[str] | None = None) -> list[CounterState]:
        async def work(connection: AsyncConnection) -> list[CounterState]:
            query = select(counters_table).order_by(counters_table.c.scope, counters_table.c.kind)
            if scopes is not None:
                query = query.where(counters_table.c.scope.in_(list(scopes)))
            return [_counter(row) for row in await connection.execute(query)]

        return await self._transaction(work)

    @override
    async def schema_current(self, timeout_s: float) -> bool:
        return await tables.schema_current(self._engine, timeout_s, left=self._left)

    @override
    async def close(self) -> None:
        await self._left.wait(timeout_s=5.0)  # transactions left running past their bound
        await dispose_engine(self._engine)


async def _replace(connection: AsyncConnection, table: Table, **values: Any) -> None:
    """Write the row `values` into `table`, replacing the one with its primary key
    (SQLite's `INSERT OR REPLACE`)."""
    await connection.execute(insert(table).prefix_with("OR REPLACE").values(**values))


def _aware(value: datetime) -> datetime:
    """SQLite gives back naive times; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
