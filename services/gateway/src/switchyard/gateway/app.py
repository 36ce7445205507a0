"""Builds the gateway's FastAPI app: the public OpenAI-compatible API."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI

from switchyard.common.bus import EventBus, create_bus
from switchyard.common.errors import install_error_handlers
from switchyard.common.http import health_router
from switchyard.common.metrics import metrics_router
from switchyard.gateway.api import chat, history, models
from switchyard.gateway.bootstrap import build_gateway
from switchyard.gateway.config import Settings
from switchyard.gateway.limits import BodySizeLimit
from switchyard.gateway.replies import reply_partition

log = structlog.get_logger("switchyard.gateway")


def create_app(settings: Settings | None = None, bus: EventBus | None = None) -> FastAPI:
    settings = settings or Settings()
    owns_bus = bus is None
    the_bus = bus or create_bus(settings, client_id=f"gateway-{settings.instance_id}")
    gateway = build_gateway(settings, the_bus)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if owns_bus:
            await the_bus.start()
        try:
            partitions = await the_bus.partition_count(gateway.topics.replies)
        except Exception as exc:  # noqa: BLE001 - Kafka may be down; requests will get 503
            log.warning("replies topic not readable yet", error=repr(exc))
            partitions = 1
        gateway.reply_partition = reply_partition(settings.instance_id, partitions)
        listener = None
        try:
            listener = await the_bus.listen(gateway.topics.replies, gateway.pending.deliver,
                                            partitions=[gateway.reply_partition])
        except Exception as exc:  # noqa: BLE001
            log.error("could not listen for replies", error=repr(exc))
        with contextlib.suppress(Exception):
            await gateway.authenticator.jwks.refresh()
        log.info("gateway ready", reply_partition=gateway.reply_partition, bus=settings.bus)
        try:
            yield
        finally:
            if listener is not None:
                await listener.stop()
            await gateway.http.aclose()
            if owns_bus:
                await the_bus.stop()

    app = FastAPI(
        title="Switchyard gateway",
        version="0.1.0",
        description="OpenAI-compatible API of the Switchyard LLM gateway.",
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(history.router)
    app.include_router(health_router({"bus": the_bus.healthy}))
    app.include_router(metrics_router())
    return app
