"""Builds the gateway's FastAPI app: the public OpenAI- and Anthropic-compatible API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI

from switchyard.common.backoff import Backoff
from switchyard.common.bus import EventBus, create_bus
from switchyard.common.docs import install_docs
from switchyard.common.http import ClientDisconnectGuard, TracingMiddleware, health_router
from switchyard.common.metrics import metrics_router
from switchyard.common.tasks import cancel_and_wait
from switchyard.gateway.api import (
    admin,
    chat,
    embeddings,
    history,
    jobs,
    messages,
    models,
    replays,
    responses,
    usage,
)
from switchyard.gateway.api.admissions import admissions_router
from switchyard.gateway.api.body import install_openapi_models
from switchyard.gateway.bootstrap import Gateway, build_gateway
from switchyard.gateway.config import Settings
from switchyard.gateway.console.mount import install_console
from switchyard.gateway.cors import install_cors
from switchyard.gateway.errors import install_api_error_handlers
from switchyard.gateway.governance.estimate import warm_up
from switchyard.gateway.idempotency import IdempotencyMiddleware
from switchyard.gateway.limits import BodySizeLimit, path_limits
from switchyard.gateway.openapi import GATEWAY_DOCS
from switchyard.gateway.replies import reply_partition
from switchyard.gateway.request_id import RequestIdMiddleware
from switchyard.gateway.schemas import (
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
    ChatCompletionRequest,
    EmbeddingsRequest,
    JobRequest,
    ResponsesRequest,
)

log = structlog.get_logger("switchyard.gateway")
# Between attempts to listen to a topic while Kafka is away or the topic is missing.
STARTUP_BACKOFF = Backoff(initial_s=0.25, max_s=5.0)


async def listen_for_replies(gateway: Gateway) -> None:
    """Listen to this replica's partition of the replies topic, retrying until it works."""
    attempt = 0
    while gateway.replies_listener is None:
        attempt += 1
        try:
            partitions = await gateway.bus.partition_count(gateway.topics.replies)
            gateway.reply_partition = reply_partition(gateway.settings.instance_id, partitions)
            gateway.replies_listener = await gateway.bus.listen(
                gateway.topics.replies,
                gateway.pending.deliver,
                partitions=[gateway.reply_partition],
            )
        except Exception as exc:  # noqa: BLE001 - Kafka down or topic missing: retried
            delay = STARTUP_BACKOFF.delay(attempt)
            log.warning("cannot listen for replies yet", error=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
    log.info("gateway listening for replies", reply_partition=gateway.reply_partition)


async def listen_for_governance(gateway: Gateway) -> None:
    """Listen to the usage topic (settlements) and the auth events (limit changes), every
    partition of both, retrying until it works."""
    assert gateway.admission is not None
    attempt = 0
    topics = [gateway.topics.usage, gateway.topics.auth_events]
    while len(gateway.governance_listeners) < len(topics):
        attempt += 1
        try:
            topic = topics[len(gateway.governance_listeners)]
            gateway.governance_listeners.append(
                await gateway.bus.listen(topic, gateway.admission.on_event)
            )
        except Exception as exc:  # noqa: BLE001 - Kafka down or topic missing: retried
            delay = STARTUP_BACKOFF.delay(attempt)
            log.warning("cannot listen for usage yet", error=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)


def create_app(settings: Settings | None = None, bus: EventBus | None = None) -> FastAPI:
    settings = settings or Settings()
    largest = max(path_limits(settings).values())
    if settings.bus == "kafka" and largest > settings.kafka_max_message_bytes:
        log.warning(
            "request bodies may be larger than the event bus carries: such requests get 413",
            largest_body_bytes=largest,
            kafka_max_message_bytes=settings.kafka_max_message_bytes,
        )
    owns_bus = bus is None
    the_bus = bus or create_bus(settings, client_id=f"gateway-{settings.instance_id}")
    gateway = build_gateway(settings, the_bus)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if owns_bus:
            await the_bus.start()
        # Kafka may not be reachable yet: keep trying in the background; until the
        # replies listener runs, readiness fails and chat requests get 503.
        connecting = asyncio.create_task(listen_for_replies(gateway))
        # Listen to the auth events, then load the revocation state from auth (retried);
        # until it is loaded, readiness fails and JWTs get 503.
        revocations = gateway.revocations
        assert revocations is not None  # build() always sets it
        syncing = asyncio.create_task(revocations.run())
        governing = asyncio.create_task(listen_for_governance(gateway))
        purges = asyncio.create_task(gateway.cache.listen())  # `switchyard cache purge`
        assert gateway.admission is not None
        await gateway.admission.start()
        # The routing file, reloaded when it changes, as inference reloads it.
        watching = asyncio.create_task(
            gateway.routing_source.watch(settings.routing_reload_interval_s)
        )
        # The tokenizer's vocabulary loads in a thread, not on the first request.
        warming = asyncio.get_running_loop().run_in_executor(None, warm_up)
        await asyncio.wait({connecting, syncing, governing}, timeout=3)
        with contextlib.suppress(Exception):
            await gateway.authenticator.jwks.refresh()
        try:
            yield
        finally:
            # Bounded, even if a cancellation is swallowed on the way (tasks.py).
            await cancel_and_wait(connecting)
            await cancel_and_wait(syncing)
            await cancel_and_wait(governing)
            await cancel_and_wait(purges)
            await gateway.cache.stop()
            await cancel_and_wait(watching)
            with contextlib.suppress(Exception):
                await warming
            for listener in gateway.governance_listeners:
                await listener.stop()
            await gateway.admission.stop()
            await gateway.admission.ledger.close()
            await revocations.stop()
            if gateway.replies_listener is not None:
                await gateway.replies_listener.stop()
            await gateway.http.aclose()
            if owns_bus:
                await the_bus.stop()

    app = FastAPI(
        title="Switchyard gateway",
        version="0.1.0",
        description="OpenAI- and Anthropic-compatible API of the Switchyard LLM gateway.",
        lifespan=lifespan,
        # Served by install_docs from the installed Swagger UI package, not a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gateway
    install_openapi_models(
        app,
        ChatCompletionRequest,
        AnthropicMessagesRequest,
        AnthropicCountTokensRequest,
        EmbeddingsRequest,
        ResponsesRequest,
        JobRequest,
    )
    install_api_error_handlers(app)
    # Inside the body limit: Idempotency-Key claims and replays (idempotency.py).
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(BodySizeLimit, settings=settings)
    install_cors(app, settings)  # outside the refusals, so they carry CORS headers too
    # Outside everything that answers, so every response carries x-request-id.
    app.add_middleware(RequestIdMiddleware)
    app.include_router(chat.router)
    app.include_router(messages.router)
    app.include_router(embeddings.router)
    app.include_router(responses.router)
    app.include_router(models.router)
    app.include_router(history.router)
    app.include_router(usage.router)
    app.include_router(jobs.router)
    app.include_router(replays.router)
    app.include_router(admissions_router(settings.internal_token))
    app.include_router(admin.router)
    admin.install_auth_routes(app)
    app.include_router(
        health_router(
            {
                "bus": the_bus.healthy,
                "replies": gateway.listening_for_replies,
                "revocations": gateway.revocations_loaded,
            }
        )
    )
    app.include_router(metrics_router(token=settings.metrics_token))
    install_docs(app, "Switchyard gateway", GATEWAY_DOCS)
    # Mounted after every API and docs route, so its own handling never touches them.
    if settings.console_enabled:
        install_console(app, gateway)
    # Outermost, so the server span covers everything else the request goes through.
    app.add_middleware(TracingMiddleware)
    app.add_middleware(ClientDisconnectGuard)
    return app
