"""The transactional outbox: auth events reach the bus if and only if their change was
committed, even when the bus is down at that moment or the change came from the CLI.

`AuthService` writes each event to `auth_outbox` in the transaction of the change. The
relay publishes pending rows in order to the auth events topic and marks them published:
at once when the service in this process signals a commit, and every
`poll_interval_s` for rows written by other processes (the `switchyard` CLI, other
replicas that could not publish). Delivery is at least once; every auth event is
idempotent for its consumers. On PostgreSQL an advisory lock lets one replica publish at
a time, so events keep their order. Once an hour it also purges expired tokens and old
published events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import cast

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from switchyard.auth.metrics import OUTBOX_FAILING, OUTBOX_PUBLISHED
from switchyard.auth.store import AuthStore
from switchyard.common.backoff import Backoff
from switchyard.common.bus import EventBus
from switchyard.common.events import decode_event

log = structlog.get_logger("switchyard.auth.outbox")
# Between attempts to publish the outbox while the bus or the database is down.
PUBLISH_BACKOFF = Backoff(initial_s=0.2, max_s=5.0)

# Any constant shared by every auth replica: the key of the PostgreSQL advisory lock.
_ADVISORY_LOCK_KEY = 0x5359_4155_5448  # "SYAUTH"
PUBLISHED_RETENTION = timedelta(days=1)


async def _take_publisher_lock(session: AsyncSession) -> bool:
    # Sessions here are always made by a sessionmaker bound to an engine.
    if cast(AsyncEngine, session.bind).dialect.name != "postgresql":
        return True  # SQLite: one process publishes (embedded mode)
    # Held until the transaction ends, released by commit or rollback.
    return bool(await session.scalar(select(func.pg_try_advisory_xact_lock(_ADVISORY_LOCK_KEY))))


class OutboxRelay:
    """Publishes the rows of `auth_outbox` to `topic` on `bus`, in order, and marks them
    published (see the module docstring).

    `sessions` opens sessions on the auth database; pending rows are polled every
    `poll_interval_s` seconds, `batch_size` at a time; `housekeeping` (e.g.
    `AuthService.purge_expired`) runs every `housekeeping_interval_s` seconds."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bus: EventBus,
        topic: str,
        *,
        poll_interval_s: float = 0.5,
        batch_size: int = 100,
        housekeeping: Callable[[], Awaitable[object]] | None = None,
        housekeeping_interval_s: float = 3600.0,
    ) -> None:
        self._sessions = sessions
        self._bus = bus
        self._topic = topic
        self._poll_interval_s = poll_interval_s
        self._batch_size = batch_size
        self._housekeeping = housekeeping
        self._housekeeping_interval_s = housekeeping_interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def notify(self) -> None:
        """Publish now (called after a commit that wrote events)."""
        self._wake.set()

    async def start(self) -> None:
        """Start relaying in a background task; starting a started relay does nothing."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="auth-outbox-relay")

    async def stop(self, timeout_s: float = 3.0) -> None:
        """Publish what is pending (best effort), then stop. A batch in progress finishes
        rather than being cancelled half-way, so its progress is recorded."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        except Exception as exc:  # noqa: BLE001 - stopping anyway
            log.warning("auth outbox relay stopped with an error", error=repr(exc))
        self._task = None

    async def publish_pending(self) -> int:
        """Publish every pending event, in order; return how many were published. Raises
        if the bus refuses one (the ones before it stay published)."""
        total = 0
        while True:
            published = await self._publish_batch()
            total += published
            if published < self._batch_size:
                return total

    async def _publish_batch(self) -> int:
        async with self._sessions() as session:
            if not await _take_publisher_lock(session):
                return 0  # another replica is publishing; it takes these rows too
            rows = await AuthStore(session).pending_events(self._batch_size)
            published = 0
            try:
                for row in rows:
                    event = decode_event(row.payload)
                    await self._bus.publish(self._topic, event, key=row.key)
                    row.published_at = datetime.now(UTC)
                    published += 1
            finally:
                # Keep the progress made even when a publish failed half-way.
                await session.commit()
                OUTBOX_PUBLISHED.inc(published)
            return published

    async def _wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        self._wake.clear()

    async def _run(self) -> None:
        failures = 0
        next_housekeeping = time.monotonic() + 60.0
        while True:
            await self._wait(self._poll_interval_s)
            try:
                await self.publish_pending()
                failures = 0
                OUTBOX_FAILING.set(0)
            except Exception as exc:  # noqa: BLE001 - bus or database down: retried
                failures += 1
                delay = PUBLISH_BACKOFF.delay(failures)
                OUTBOX_FAILING.set(1)
                log.warning("auth events not published yet", error=repr(exc), retry_in_s=delay)
                if self._stopping:
                    return
                await self._wait(delay)
                self._wake.set()
            if self._stopping:
                return
            if self._housekeeping is not None and time.monotonic() >= next_housekeeping:
                next_housekeeping = time.monotonic() + self._housekeeping_interval_s
                await self._housekeep()

    async def _housekeep(self) -> None:
        try:
            assert self._housekeeping is not None
            await self._housekeeping()
            async with self._sessions() as session:
                await AuthStore(session).purge_published_events(
                    datetime.now(UTC) - PUBLISHED_RETENTION
                )
                await session.commit()
        except Exception as exc:  # noqa: BLE001 - tried again at the next interval
            log.warning("auth housekeeping failed", error=repr(exc))
