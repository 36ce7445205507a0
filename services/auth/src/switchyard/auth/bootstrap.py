"""Composition root: builds the database engine, signing keys, hasher, login limits and
`AuthService` from settings. The app lifespan, the CLI and embedded mode all wire through
here; tests pass their own hasher (a cheap one) or settings. The app adds the bus and the
outbox relay (they need a running event loop)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.auth.config import Settings
from switchyard.auth.governance import Governance
from switchyard.auth.passwords import PasswordHasher
from switchyard.auth.ratelimit import LoginRateLimiter, SlidingWindowLimiter
from switchyard.auth.service import AuthService
from switchyard.auth.signing import load_signing_key, load_verification_keys
from switchyard.auth.tokens import TokenIssuer
from switchyard.common.db import create_engine, session_factory


@dataclass
class AuthContext:
    """What the running app holds for its lifetime."""

    settings: Settings
    engine: AsyncEngine
    service: AuthService
    login_limits: LoginRateLimiter
    governance: Governance

    async def database_ready(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def close(self) -> None:
        await self.engine.dispose()


def build_token_issuer(settings: Settings) -> TokenIssuer:
    return TokenIssuer(
        load_signing_key(settings),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_s=settings.access_token_ttl_s,
        retired_keys=load_verification_keys(settings),
    )


def build_context(settings: Settings, passwords: PasswordHasher | None = None) -> AuthContext:
    engine = create_engine(settings.database_url)
    service = AuthService(
        session_factory(engine),
        passwords or PasswordHasher(),
        build_token_issuer(settings),
        refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_s),
    )
    login_limits = LoginRateLimiter(
        account=SlidingWindowLimiter(
            settings.login_max_failures_per_account, settings.login_account_window_s
        ),
        address=SlidingWindowLimiter(
            settings.login_max_attempts_per_address, settings.login_address_window_s
        ),
    )
    return AuthContext(
        settings=settings,
        engine=engine,
        service=service,
        login_limits=login_limits,
        governance=Governance(service),
    )


def build_database_service(
    database_url: str, *, tokens: TokenIssuer | None = None, passwords: PasswordHasher | None = None
) -> tuple[AsyncEngine, AuthService]:
    """A service on `database_url` for commands; it signs tokens only if given an issuer.
    The caller disposes the engine."""
    engine = create_engine(database_url)
    return engine, AuthService(session_factory(engine), passwords or PasswordHasher(), tokens)
