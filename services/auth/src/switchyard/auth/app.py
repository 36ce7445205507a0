"""The auth service's FastAPI app: JWKS, sign-in/refresh/logout, API keys, the admin API,
and the internal endpoints the gateway uses (key lookup, revocation state).

`create_app(settings, bus, *, adapters)`: with `bus=None` the app creates, starts and stops
the bus its settings ask for; in embedded mode it publishes on the shared in-memory bus it
is given. The lifespan composes the service with `bootstrap.build` (the adapters are passed
through to it) and starts what it built on an `AsyncExitStack`, which stops it in reverse
order, also when start-up fails half-way. Auth events go through the outbox relay (see
`outbox.py`) to the auth events topic.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import structlog
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.auth import __version__
from switchyard.auth.api import admin, api_keys, jwks, limits, tokens
from switchyard.auth.api.internal import internal_router
from switchyard.auth.bootstrap import AuthContext, build
from switchyard.auth.config import Settings
from switchyard.auth.passwords import PasswordHasher
from switchyard.auth.service import AuthService
from switchyard.common.backoff import Backoff
from switchyard.common.bus import EventBus, enter_bus
from switchyard.common.docs import ApiDocs, install_docs
from switchyard.common.errors import install_error_handlers
from switchyard.common.http import (
    FASTAPI_TELEMETRY,
    ClientDisconnectGuard,
    HeadAsGet,
    InternalTokenFirst,
    TracingMiddleware,
    health_router,
)
from switchyard.common.limits import BodySizeLimit
from switchyard.common.metrics import metrics_router
from switchyard.common.tasks import cancel_and_wait

log = structlog.get_logger("switchyard.auth")
# Between attempts to record the signing key while the database is not there yet.
STARTUP_BACKOFF = Backoff(initial_s=0.5, max_s=10.0)

# Errors beyond those derived from each route (400 for input, 401 for credentials, 404 for
# an id in the path), for the OpenAPI document (see switchyard.common.docs).
_ADMIN = (403,)
AUTH_DOCS = ApiDocs(
    errors={
        "POST /v1/auth/token": (401, 429),
        "POST /v1/auth/refresh": (401,),
        "POST /v1/auth/logout": (401,),
        "GET /v1/api-keys": (403,),
        "POST /v1/api-keys": (403,),
        "DELETE /v1/api-keys/{key_id}": (403,),
        "GET /v1/admin/users": _ADMIN,
        "POST /v1/admin/users": (*_ADMIN, 409),
        "POST /v1/admin/users/{user_id}/disable": _ADMIN,
        "POST /v1/admin/users/{user_id}/enable": _ADMIN,
        "GET /v1/admin/api-keys": _ADMIN,
        "DELETE /v1/admin/api-keys/{key_id}": _ADMIN,
        "POST /internal/v1/api-keys/lookup": (404,),
    }
)


async def _record_signing_key(service: AuthService) -> None:
    """Announce a new signing key once the database answers (retried until it does)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            if await service.record_signing_key():
                log.info("signing key rotation announced", kid=service.tokens.signing_key.kid)
            return
        except Exception as exc:  # noqa: BLE001 - database not reachable or migrated yet
            delay = STARTUP_BACKOFF.delay(attempt)
            log.warning("cannot record the signing key yet", error=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)


def create_app(
    settings: Settings | None = None,
    bus: EventBus | None = None,
    *,
    engine: AsyncEngine | None = None,
    passwords: PasswordHasher | None = None,
) -> FastAPI:
    """The auth app on `settings` (read from the environment by default).

    With `bus=None` the lifespan creates, starts and stops the bus the settings ask for; a
    given bus is the caller's to start and stop. `engine` and `passwords` are passed to
    `bootstrap.build` (`None`: the production ones). Returns the app; while it runs,
    `app.state.auth` is its `AuthContext`. The lifespan raises what `build` raises."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            event_bus, context = await enter_bus(
                stack,
                settings,
                bus,
                client_id=f"auth-{settings.instance_id}",
                build=lambda event_bus: build(
                    settings, event_bus, engine=engine, passwords=passwords
                ),
            )
            await context.outbox.start()
            stack.push_async_callback(context.outbox.stop)
            app.state.auth = context
            app.state.bus = event_bus
            app.state.outbox = context.outbox
            recording = asyncio.create_task(_record_signing_key(context.service))
            stack.push_async_callback(cancel_and_wait, recording)
            yield

    async def database_ready() -> bool:
        context: AuthContext | None = getattr(app.state, "auth", None)
        return context is not None and await context.database_ready()

    app = FastAPI(
        telemetry=FASTAPI_TELEMETRY,
        # A path with a trailing slash is not found, never redirected (a redirect would
        # name the request's Host header, and a POST's body would be sent again).
        redirect_slashes=False,
        title="Switchyard auth",
        version=__version__,
        description=(
            "Users, API keys, access and refresh tokens, and the admin API. Revocations are "
            "published to the auth events topic, which every gateway replica applies."
        ),
        lifespan=lifespan,
        # Served by install_docs from the installed Swagger UI package, not a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(health_router({"database": database_ready}))
    app.include_router(metrics_router(token=settings.metrics_token, service="auth"))
    app.include_router(jwks.router)
    app.include_router(tokens.router)
    app.include_router(tokens.account_router)
    # Their routes refuse a query parameter they do not read (`StrictQueryRoute`).
    app.include_router(api_keys.router)
    app.include_router(admin.router)
    app.include_router(limits.router)
    app.include_router(internal_router(settings.internal_token))
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # A caller of the service-to-service API without the internal token is answered
    # before its body is read (InternalTokenFirst).
    app.add_middleware(InternalTokenFirst, token=settings.internal_token, prefixes=("/internal/",))
    # Outermost, so the server span covers everything else the request goes through.
    app.add_middleware(TracingMiddleware)
    app.add_middleware(HeadAsGet)
    app.add_middleware(ClientDisconnectGuard)
    install_docs(app, "Switchyard auth", AUTH_DOCS)
    return app
