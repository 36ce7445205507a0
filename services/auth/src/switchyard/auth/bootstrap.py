"""Composition root of the auth service: `build(settings, bus, *, adapters)` wires the
database engine, the signing keys, the password hasher, the login limits, `AuthService`
and the outbox relay that publishes auth events on `bus`. Each adapter defaults to the
production one from `Settings`; tests pass fakes (a cheap hasher, their own engine) here
instead of reaching into what it builds. The app's lifespan starts and stops the result;
the CLI and embedded mode's seeding use `build_database_service` and
`build_token_issuer`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.auth.config import Settings
from switchyard.auth.governance import Governance
from switchyard.auth.models import Base
from switchyard.auth.outbox import OutboxRelay
from switchyard.auth.passwords import PasswordHasher
from switchyard.auth.ratelimit import LoginRateLimiter
from switchyard.auth.service import AuthService
from switchyard.auth.signing import load_signing_key, load_verification_keys
from switchyard.auth.tokens import TokenIssuer
from switchyard.common.bus import EventBus
from switchyard.common.db import (
    SCHEMA_BEHIND,
    create_engine,
    dispose_engine,
    probe_schema,
    read_only,
    session_factory,
)
from switchyard.common.sliding_window import SlidingWindowLimiter
from switchyard.common.topics import Topics

log = structlog.get_logger("switchyard.auth.bootstrap")


@dataclass
class AuthContext:
    """What the running app holds for its lifetime (`app.state.auth`)."""

    settings: Settings
    engine: AsyncEngine
    service: AuthService
    login_limits: LoginRateLimiter
    governance: Governance
    # Publishes what the service writes to its outbox on the auth events topic; the app
    # starts and stops it.
    outbox: OutboxRelay

    async def database_ready(self) -> bool:
        """True when the database answers and has every table and column this version
        uses (readiness); False on any error, a schema behind the code (its `switchyard
        db upgrade` not run) logged as such."""
        try:
            async with read_only(self.engine).connect() as connection:
                await connection.execute(text("SELECT 1"))
                try:
                    await probe_schema(connection, Base.metadata)
                except Exception as exc:  # noqa: BLE001 - a table or column missing
                    log.error(SCHEMA_BEHIND, error=repr(exc)[:300])
                    return False
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def close(self) -> None:
        """Dispose of the engine (given or built), closing its pooled connections."""
        await dispose_engine(self.engine)


def build_token_issuer(settings: Settings, *, generate_dev_key: bool = True) -> TokenIssuer:
    """The access-token issuer: the signing key and the retired keys tokens may still be
    verified with, from `settings` (`generate_dev_key`: as `load_signing_key` takes it).
    Raises `SigningKeyError` when no usable signing key is configured outside development,
    or the development key is missing and not to be generated."""
    return TokenIssuer(
        load_signing_key(settings, generate_dev_key=generate_dev_key),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_s=settings.access_token_ttl_s,
        retired_keys=load_verification_keys(settings),
        leeway_s=settings.jwt_leeway_s,
    )


def build(
    settings: Settings,
    bus: EventBus,
    *,
    engine: AsyncEngine | None = None,
    passwords: PasswordHasher | None = None,
) -> AuthContext:
    """Wire the auth service from `settings`, publishing its events on `bus` (neither the
    bus nor the outbox relay is started here: the app's lifespan does that).

    Adapters, each `None` meaning the production one from `settings`:
    - `engine`: the database engine, `create_engine(settings.database_url)` by default;
      `AuthContext.close()` disposes of it either way.
    - `passwords`: the password hasher, `PasswordHasher()` (the deployed cost) by default.

    Returns the `AuthContext`. Raises `SigningKeyError` without a usable signing key, and
    what SQLAlchemy raises for an unusable `database_url`."""
    engine = engine if engine is not None else create_engine(settings.database_url)
    service = AuthService(
        session_factory(engine),
        passwords or PasswordHasher(),
        build_token_issuer(settings),
        refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_s),
        max_api_keys_per_user=settings.max_api_keys_per_user,
        reads=session_factory(read_only(engine)),
    )
    login_limits = LoginRateLimiter(
        account=SlidingWindowLimiter(
            settings.login_max_failures_per_account, settings.login_account_window_s
        ),
        address=SlidingWindowLimiter(
            settings.login_max_attempts_per_address, settings.login_address_window_s
        ),
        account_all_addresses=SlidingWindowLimiter(
            settings.login_max_failures_per_account_all_addresses,
            settings.login_account_window_s,
        ),
    )
    outbox = OutboxRelay(
        service.sessions,
        bus,
        Topics(settings.topic_prefix).auth_events,
        poll_interval_s=settings.outbox_poll_interval_s,
        housekeeping=service.purge_expired,
    )
    # The relay publishes at once what a request wrote, instead of at its next poll.
    service.on_events_written = outbox.notify
    return AuthContext(
        settings=settings,
        engine=engine,
        service=service,
        login_limits=login_limits,
        governance=Governance(service),
        outbox=outbox,
    )


def build_database_service(
    database_url: str, *, tokens: TokenIssuer | None = None, passwords: PasswordHasher | None = None
) -> tuple[AsyncEngine, AuthService]:
    """A service on `database_url` for commands; it signs tokens only if given an issuer.
    The caller disposes the engine."""
    engine = create_engine(database_url)
    return engine, AuthService(session_factory(engine), passwords or PasswordHasher(), tokens)
