"""Composition root of the history service: `build(settings, bus, *, adapters)` wires the
database engine and the event bus into the recorder, the queries, the stores and the
background workers (sweeper, webhook deliveries, replay runner). Each adapter defaults to
the production one from `Settings`; tests pass fakes (their own engine, a scripted gateway
admission) here instead of reaching into what it builds. The app's lifespan starts and
stops the result."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common import exactjson
from switchyard.common.bus import EventBus
from switchyard.common.db import (
    SCHEMA_BEHIND,
    create_engine,
    dispose_engine,
    probe_schema,
    read_only,
)
from switchyard.common.egress import TargetPolicy, parse_networks
from switchyard.common.topics import Topics
from switchyard.history.cache import CacheStore
from switchyard.history.config import Settings
from switchyard.history.handlers import EventRecorder
from switchyard.history.idempotency import IdempotencyStore
from switchyard.history.models import Base
from switchyard.history.queries import HistoryQueries
from switchyard.history.replay_admission import GatewayAdmission
from switchyard.history.replays import ReplayRunner, ReplayStore
from switchyard.history.sweeper import Sweeper
from switchyard.history.tenants import TenantSettingsStore
from switchyard.history.webhooks import WebhookDispatcher, WebhookPolicy

log = structlog.get_logger("switchyard.history")


@dataclass
class HistoryComponents:
    """What the running app holds for its lifetime (`app.state.history`)."""

    engine: AsyncEngine
    recorder: EventRecorder
    queries: HistoryQueries
    tenants: TenantSettingsStore
    idempotency: IdempotencyStore
    webhooks: WebhookDispatcher
    sweeper: Sweeper
    cache: CacheStore
    replays: ReplayStore
    # Sends the replays' requests (admitted by the gateway when one is configured).
    runner: ReplayRunner
    # The gateway admission `build` made from settings (closed with the rest); one a
    # caller passed is the caller's.
    owned_admission: GatewayAdmission | None = None

    async def database_ready(self) -> bool:
        """True when the database answers and has every table and column this version
        writes (readiness); False on any error. A schema behind the code (an upgrade whose
        `switchyard db upgrade` has not run) is logged as such: the replica stays out of
        service rather than failing the batches that need the new columns."""
        try:
            async with read_only(self.engine).connect() as connection:
                await connection.execute(text("SELECT 1"))
                try:
                    await probe_schema(connection, Base.metadata)
                except Exception as exc:  # noqa: BLE001 - a table or column missing
                    log.error(SCHEMA_BEHIND, error=repr(exc)[:300])
                    return False
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            log.warning("database not ready", error=repr(exc))
            return False
        return True

    async def database_writable(self) -> bool:
        """The database answers, has history's tables and columns (migrated) and accepts
        writes (a standby or a read-only server does not): while it is false, a failing
        batch is an outage, never a bad event."""
        try:
            async with self.engine.connect() as connection:
                await probe_schema(connection, Base.metadata)
                if self.engine.dialect.name == "postgresql":
                    setting = text("SELECT current_setting('transaction_read_only')")
                    return bool((await connection.execute(setting)).scalar_one() == "off")
        except Exception:  # noqa: BLE001 - any failure means "not writable"
            return False
        return True

    async def close(self) -> None:
        """Close the admission client `build` made, then dispose of the engine."""
        if self.owned_admission is not None:
            await self.owned_admission.close()
        await dispose_engine(self.engine)


def _json_dumps(value: Any) -> str:
    return exactjson.dumps(value).decode()


def history_engine(database_url: str) -> AsyncEngine:
    """The history database, with JSON documents (de)serialised by orjson, every integer
    kept exact (`exactjson`: a reply may hold integers beyond 64 bits)."""
    return create_engine(
        database_url, json_serializer=_json_dumps, json_deserializer=exactjson.loads
    )


def build(
    settings: Settings,
    bus: EventBus,
    *,
    engine: AsyncEngine | None = None,
    admission: GatewayAdmission | None = None,
) -> HistoryComponents:
    """Wire the history service from `settings`; the replay runner publishes its requests
    on `bus` (not started here: the app's lifespan does that, and runs the workers).

    Adapters, each `None` meaning the production one from `settings`:
    - `engine`: the database, `history_engine(settings.database_url)` by default;
      `HistoryComponents.close()` disposes of it either way.
    - `admission`: what the replay runner asks before sending a replayed request, by
      default a `GatewayAdmission` on `settings.gateway_url`, or none (everything is
      sent) when that is empty. Anything with `GatewayAdmission.admit`'s signature.

    Returns the `HistoryComponents`. Raises `ValueError` for a malformed
    `webhook_allowed_networks`, and what SQLAlchemy raises for an unusable
    `database_url`."""
    engine = engine if engine is not None else history_engine(settings.database_url)
    owned_admission = None
    if admission is None and settings.gateway_url:
        admission = owned_admission = GatewayAdmission(
            settings.gateway_url, settings.internal_token
        )
    recorder = EventRecorder(engine)
    tenants = TenantSettingsStore(engine)
    idempotency = IdempotencyStore(engine)
    cache = CacheStore(engine)
    return HistoryComponents(
        cache=cache,
        replays=ReplayStore(engine, max_requests=settings.replay_max_requests),
        engine=engine,
        recorder=recorder,
        # On SQLite its reads take the write lock as writes do: one that comes while the
        # recorder writes what was just answered waits for it (read-your-writes, beyond
        # the read barrier's bound), where a deferred read would not see it yet.
        queries=HistoryQueries(engine),
        tenants=tenants,
        idempotency=idempotency,
        webhooks=WebhookDispatcher(
            engine,
            tenants,
            WebhookPolicy(
                max_attempts=settings.webhook_max_attempts,
                initial_backoff_s=settings.webhook_initial_backoff_s,
                max_backoff_s=settings.webhook_max_backoff_s,
                timeout_s=settings.webhook_timeout_s,
                targets=TargetPolicy(parse_networks(settings.webhook_allowed_networks)),
            ),
        ),
        sweeper=Sweeper(
            engine,
            recorder,
            tenants,
            idempotency,
            grace=timedelta(seconds=settings.expiry_grace_s),
            retention_days=settings.retention_days,
            purge_interval_s=settings.purge_interval_s,
            cache=cache,
        ),
        runner=ReplayRunner(
            engine,
            bus.publish,
            Topics(settings.topic_prefix),
            runner_id=settings.instance_id,
            request_timeout_s=settings.replay_request_timeout_s,
            admission=admission,
        ),
        owned_admission=owned_admission,
    )
