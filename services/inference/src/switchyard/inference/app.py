"""The inference service's HTTP app: health and metrics only. Its real work is the
lifespan's subscription to the request topics, handled by `ChatRequestHandler`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from switchyard.common.bus import EventBus, RetryPolicy, create_bus
from switchyard.common.errors import install_error_handlers
from switchyard.common.http import health_router
from switchyard.common.metrics import metrics_router
from switchyard.common.topics import Topics
from switchyard.inference.bootstrap import build_runtime
from switchyard.inference.config import Settings

log = structlog.get_logger("switchyard.inference")

# The handler answers every request itself (even on its own bugs), so it only fails when
# the bus cannot take the reply; retrying until it can is the only way not to lose it.
HANDLER_RETRY = RetryPolicy(max_attempts=None, max_backoff_s=5.0)


def create_app(settings: Settings | None = None, bus: EventBus | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owns_bus = bus is None
        active_bus = bus or create_bus(settings, client_id=f"inference-{settings.instance_id}")
        runtime = build_runtime(settings, active_bus.publish)  # fails fast on bad routing
        if owns_bus:
            await active_bus.start()
        topics = Topics(settings.topic_prefix)
        subscription = await active_bus.subscribe(
            [topics.requests_interactive, topics.requests_batch],
            group=settings.group,
            handler=runtime.handler,
            concurrency=settings.consumer_concurrency,
            retry=HANDLER_RETRY,
        )
        app.state.bus = active_bus
        app.state.routing = runtime.routing
        log.info("inference started", models=runtime.routing.model_names(), group=settings.group)
        try:
            yield
        finally:
            await subscription.stop()
            await runtime.aclose()
            if owns_bus:
                await active_bus.stop()
            app.state.bus = None

    app = FastAPI(
        title="Switchyard inference",
        version="0.1.0",
        lifespan=lifespan,
        summary="Consumes chat requests and calls LLM providers; HTTP for health and metrics.",
    )
    app.state.bus = None

    async def bus_ready() -> bool:
        active_bus: EventBus | None = app.state.bus
        return active_bus is not None and await active_bus.healthy()

    install_error_handlers(app)
    app.include_router(health_router({"bus": bus_ready}))
    app.include_router(metrics_router())
    return app
