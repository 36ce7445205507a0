"""HTTP plumbing every service shares: health routes, internal-call authentication and
the uvicorn runner."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Header, HTTPException, Response

INTERNAL_TOKEN_HEADER = "x-switchyard-internal-token"

ReadinessCheck = Callable[[], Awaitable[bool]]


def health_router(checks: dict[str, ReadinessCheck] | None = None) -> APIRouter:
    """`/livez` (the process answers) and `/readyz` (its dependencies answer)."""
    router = APIRouter(tags=["operations"])
    readiness = checks or {}

    @router.get("/livez")
    async def livez() -> dict[str, str]:
        """Liveness: the process is up."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        """Readiness: every dependency (bus, database) answers."""
        results = {name: await check() for name, check in readiness.items()}
        ready = all(results.values())
        if not ready:
            response.status_code = 503
        return {"status": "ok" if ready else "unavailable", "checks": results}

    return router


def internal_token_dependency(expected: str) -> Callable[[str | None], Awaitable[None]]:
    """A dependency refusing service-to-service calls without the shared internal token."""

    async def require_internal_token(
        token: str | None = Header(default=None, alias=INTERNAL_TOKEN_HEADER),
    ) -> None:
        if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
            raise HTTPException(status_code=401, detail="internal token required")

    return require_internal_token


SERVICE_ENV = "SWITCHYARD_SERVICE"


def service_app() -> FastAPI:
    """uvicorn factory used by `switchyard <service>`: runs in every worker process
    (uvicorn starts fresh interpreters for `--workers N`), so each one configures its own
    logging and tracing before building the app of the service named in SWITCHYARD_SERVICE."""
    import os

    from switchyard.common.logging import configure_logging
    from switchyard.common.plugins import by_name
    from switchyard.common.tracing import configure_tracing

    plugin = by_name(os.environ[SERVICE_ENV])
    settings = plugin.settings()
    configure_logging(plugin.name, settings.log_level, settings.log_format)
    configure_tracing(plugin.name)
    return plugin.create_app()


def serve(
    app: FastAPI | str, *, host: str, port: int, workers: int = 1, factory: bool = False
) -> None:
    """Run an app with uvicorn (uvloop and httptools when available)."""
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        workers=workers,
        factory=factory,
        loop="auto",
        http="auto",
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )


class TracingMiddleware:
    """A SERVER span per HTTP request, continuing the caller's W3C trace context; a
    pass-through while tracing is off."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        from switchyard.common import tracing

        if scope["type"] != "http" or not tracing.tracing_enabled():
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import SpanKind

        carrier = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in scope["headers"]
            if key in (b"traceparent", b"tracestate")
        }
        status = {"code": 500}

        async def send_with_status(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        with tracing.span(
            f"{scope['method']} {scope['path']}",
            kind=SpanKind.SERVER,
            parent=tracing.context_from_carrier(carrier),
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
        ) as span:
            try:
                await self.app(scope, receive, send_with_status)
            finally:
                if span is not None:
                    span.set_attribute("http.response.status_code", status["code"])


async def inject_trace_headers(request) -> None:
    """httpx request hook: carry the current trace to the service being called."""
    from switchyard.common.tracing import current_trace_carrier

    for key, value in current_trace_carrier().items():
        request.headers[key] = value
