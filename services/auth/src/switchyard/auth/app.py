"""The auth service's FastAPI app: JWKS, password-grant tokens, API key creation and the
internal key lookup the gateway uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from switchyard.auth import __version__
from switchyard.auth.api import api_keys, jwks, tokens
from switchyard.auth.api.internal import internal_router
from switchyard.auth.bootstrap import AuthContext, build_context
from switchyard.auth.config import Settings
from switchyard.common.errors import install_error_handlers
from switchyard.common.http import health_router
from switchyard.common.metrics import metrics_router


def create_app(settings: Settings | None = None, bus: Any = None) -> FastAPI:
    """Build the app. `bus` is accepted for embedded mode; auth publishes no events yet."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = build_context(settings)
        app.state.auth = context
        try:
            yield
        finally:
            await context.close()

    async def database_ready() -> bool:
        context: AuthContext | None = getattr(app.state, "auth", None)
        return context is not None and await context.database_ready()

    app = FastAPI(
        title="Switchyard auth",
        version=__version__,
        description="Users, API keys and signed access tokens.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health_router({"database": database_ready}))
    app.include_router(metrics_router())
    app.include_router(jwks.router)
    app.include_router(tokens.router)
    app.include_router(api_keys.router)
    app.include_router(internal_router(settings.internal_token))
    return app
