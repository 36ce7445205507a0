"""Builds the gateway's FastAPI app: the public OpenAI- and Anthropic-compatible API.

`create_app(settings, bus, *, adapters)` composes the gateway with `bootstrap.build` (the
adapters are passed through to it) and serves it; the lifespan starts what it built on an
`AsyncExitStack` and stops it in reverse order, also when start-up fails half-way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import structlog
from fastapi import Depends, FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from switchyard.common.backoff import Backoff
from switchyard.common.bus import USAGE_HEADER, Carried, EventBus, create_bus
from switchyard.common.docs import install_docs
from switchyard.common.http import (
    FASTAPI_TELEMETRY,
    ClientDisconnectGuard,
    HeadAsGet,
    InternalTokenFirst,
    TracingMiddleware,
    health_router,
)
from switchyard.common.metrics import metrics_router
from switchyard.common.queryparams import refuse_repeated_parameters
from switchyard.common.stopping import on_stop_signal
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
from switchyard.gateway.bootstrap import Gateway, build, watch_prices
from switchyard.gateway.config import Settings
from switchyard.gateway.console.mount import install_console
from switchyard.gateway.cors import install_cors
from switchyard.gateway.errors import UnexpectedFaults, install_api_error_handlers
from switchyard.gateway.governance.estimate import warm_up
from switchyard.gateway.governance.ledger import Ledger
from switchyard.gateway.idempotency import IdempotencyMiddleware
from switchyard.gateway.limits import BodySizeLimit, path_limits
from switchyard.gateway.openapi import GATEWAY_DOCS
from switchyard.gateway.replies import reply_partition
from switchyard.gateway.request_id import RequestIdMiddleware, RequestIds
from switchyard.gateway.schemas import (
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
    ChatCompletionRequest,
    EmbeddingsRequest,
    JobRequest,
    ResponsesInputTokensRequest,
    ResponsesRequest,
)

log = structlog.get_logger("switchyard.gateway")
# Between attempts to listen to a topic while Kafka is away or the topic is missing.
STARTUP_BACKOFF = Backoff(initial_s=0.25, max_s=5.0)


async def _start(stack: AsyncExitStack, gateway: Gateway, owned_bus: EventBus | None) -> None:
    """Start what `build` wired, pushing each stop onto `stack` right after its start, so
    leaving the stack stops them in reverse order, also after a half-way failure.
    `owned_bus` is started and stopped here (the app created it); a given one is not."""
    settings = gateway.settings
    if owned_bus is not None:
        await owned_bus.start()
        stack.push_async_callback(owned_bus.stop)
    stack.push_async_callback(gateway.http.aclose)
    admission, revocations = gateway.admission, gateway.revocations
    assert admission is not None and revocations is not None  # build() sets both
    stack.push_async_callback(admission.ledger.close)
    # Kafka may not be reachable yet: keep trying in the background; until the replies
    # listener runs, readiness fails and chat requests get 503.
    stack.push_async_callback(_stop_replies_listener, gateway)
    connecting = asyncio.create_task(listen_for_replies(gateway))
    stack.push_async_callback(cancel_and_wait, connecting)
    # Listen to the auth events, then load the revocation state from auth (retried);
    # until it is loaded, readiness fails and JWTs get 503.
    stack.push_async_callback(revocations.stop)
    syncing = asyncio.create_task(revocations.run())
    stack.push_async_callback(cancel_and_wait, syncing)
    stack.push_async_callback(_stop_governance_listeners, gateway)
    governing = asyncio.create_task(listen_for_governance(gateway))
    stack.push_async_callback(cancel_and_wait, governing)
    # `switchyard cache purge` reaches this replica's in-memory answers through the bus.
    stack.push_async_callback(gateway.cache.stop)
    purges = asyncio.create_task(gateway.cache.listen())
    stack.push_async_callback(cancel_and_wait, purges)
    await admission.start()
    stack.push_async_callback(admission.stop)
    # The routing file, reloaded when it changes, as inference reloads it.
    watching = asyncio.create_task(gateway.routing_source.watch(settings.routing_reload_interval_s))
    stack.push_async_callback(cancel_and_wait, watching)
    # So is the prices file, which admission reserves by.
    pricing = asyncio.create_task(watch_prices(gateway, settings.routing_reload_interval_s))
    stack.push_async_callback(cancel_and_wait, pricing)
    if settings.governance_preload_tokenizer:
        # In a thread, so that the first limited request does not wait for it.
        warming = asyncio.get_running_loop().run_in_executor(None, warm_up)
        stack.push_async_callback(_settle, warming)
    # The drain is bounded from the signal on: uvicorn waits for the open connections
    # before this stack unwinds.
    loop = asyncio.get_running_loop()

    def stop_signalled() -> None:
        loop.call_soon_threadsafe(gateway.begin_drain)

    stack.callback(on_stop_signal(stop_signalled))
    stack.callback(_cancel_drain_timer, gateway)
    await asyncio.wait({connecting, syncing, governing}, timeout=3)
    with contextlib.suppress(Exception):
        await gateway.authenticator.jwks.refresh()
    # Fetched again now and then: a key auth stopped publishing (retired, or removed
    # after a leak) is dropped, and tokens it signed refused, within the interval.
    refreshing = asyncio.create_task(
        gateway.authenticator.jwks.keep_fresh(settings.jwks_refresh_interval_s)
    )
    stack.push_async_callback(cancel_and_wait, refreshing)


def _cancel_drain_timer(gateway: Gateway) -> None:
    if gateway.drain_timer is not None:
        gateway.drain_timer.cancel()


async def _stop_replies_listener(gateway: Gateway) -> None:
    if gateway.replies_listener is not None:
        await gateway.replies_listener.stop()


async def _stop_governance_listeners(gateway: Gateway) -> None:
    for listener in gateway.governance_listeners:
        await listener.stop()


async def _settle(future: asyncio.Future[None]) -> None:
    """Wait for a thread's work to end; its failure was only an optimisation's."""
    with contextlib.suppress(Exception):
        await future


async def listen_for_replies(gateway: Gateway) -> None:
    """Listen to this replica's partition of the replies topic, retrying until it works."""
    attempt = 0
    while gateway.replies_listener is None:
        attempt += 1
        try:
            partitions = await gateway.bus.partition_count(gateway.topics.replies)
            gateway.reply_partition = reply_partition(gateway.settings.instance_id, partitions)
            admission = gateway.admission
            gateway.replies_listener = await gateway.bus.listen(
                gateway.topics.replies,
                gateway.pending.deliver,
                partitions=[gateway.reply_partition],
                # Replies for other replicas sharing the partition, and the events of cache
                # hits, are skipped undecoded.
                key_filter=gateway.pending.waiting_for,
                # A terminal reply carries its usage event: the request's reservations are
                # settled as the reply arrives (the usage topic is only the fallback).
                carried=Carried(USAGE_HEADER, admission.on_reply_usage, admission.settles)
                if admission is not None
                else None,
            )
        except Exception as exc:  # noqa: BLE001 - Kafka down or topic missing: retried
            delay = STARTUP_BACKOFF.delay(attempt)
            log.warning("cannot listen for replies yet", error=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
    log.info("gateway listening for replies", reply_partition=gateway.reply_partition)


# How late the usage topic's events may settle reservations (ms): only those of requests
# whose reply this replica did not read wait for it.
USAGE_FALLBACK_DELAY_MS = 500


async def listen_for_governance(gateway: Gateway) -> None:
    """Listen to the usage topic (settlements) and the auth events (limit changes), every
    partition of both, retrying until it works."""
    assert gateway.admission is not None
    attempt = 0
    # The usage of requests this replica does not settle (other replicas', cache hits',
    # those settled from their reply) is skipped undecoded; every limit change is read.
    # Most usage is settled from the reply that carries it (`listen_for_replies`); the
    # usage topic settles the rest (jobs, whose replies no gateway reads; a request whose
    # client left), so it is read in fuller, later batches: no fetch round trip per
    # request.
    topics = [
        (gateway.topics.usage, gateway.admission.settles, USAGE_FALLBACK_DELAY_MS),
        (gateway.topics.auth_events, None, None),
    ]
    while len(gateway.governance_listeners) < len(topics):
        attempt += 1
        try:
            topic, key_filter, max_delay_ms = topics[len(gateway.governance_listeners)]
            gateway.governance_listeners.append(
                await gateway.bus.listen(
                    topic,
                    gateway.admission.on_event,
                    key_filter=key_filter,
                    max_delay_ms=max_delay_ms,
                )
            )
        except Exception as exc:  # noqa: BLE001 - Kafka down or topic missing: retried
            delay = STARTUP_BACKOFF.delay(attempt)
            log.warning("cannot listen for usage yet", error=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)


def create_app(
    settings: Settings | None = None,
    bus: EventBus | None = None,
    *,
    http: httpx.AsyncClient | None = None,
    ledger: Ledger | None = None,
) -> FastAPI:
    """The gateway app on `settings` (read from the environment by default).

    With `bus=None` the app creates the bus its settings ask for and starts and stops it
    in its lifespan; a given bus (embedded mode's shared in-memory bus) is the caller's to
    start and stop. `http` and `ledger` are passed to `bootstrap.build` (`None`: the
    production ones). Returns the app, its `Gateway` at `app.state.gateway`. Raises what
    `build` raises for unusable settings."""
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
    gateway = build(settings, the_bus, http=http, ledger=ledger)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await _start(stack, gateway, the_bus if owns_bus else None)
            yield

    app = FastAPI(
        telemetry=FASTAPI_TELEMETRY,
        # A path with a trailing slash is not found, never redirected (a redirect would
        # name the request's Host header, and a POST's body would be sent again).
        redirect_slashes=False,
        title="Switchyard gateway",
        version="0.1.0",
        description="OpenAI- and Anthropic-compatible API of the Switchyard LLM gateway.",
        lifespan=lifespan,
        # A parameter that takes one value, given twice, is refused rather than one of
        # the two silently kept.
        dependencies=[Depends(refuse_repeated_parameters)],
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
        ResponsesInputTokensRequest,
        JobRequest,
    )
    install_api_error_handlers(app)
    # Inside the body limit: Idempotency-Key claims and replays (idempotency.py).
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(BodySizeLimit, settings=settings)
    # The internal admissions API answers a caller without the internal token before it
    # reads the body, as history's and auth's internal APIs do.
    app.add_middleware(InternalTokenFirst, token=settings.internal_token, prefixes=("/internal/",))
    # Inside CORS and the request id, so that a fault's 500 carries their headers too.
    app.add_middleware(UnexpectedFaults)
    install_cors(app, settings)  # outside the refusals, so they carry CORS headers too
    # Outside everything that answers, so every response carries x-request-id.
    app.add_middleware(RequestIdMiddleware, ids=RequestIds(settings.request_id_key()))
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
                "limit_store": gateway.limit_store_current,
            }
        )
    )
    app.include_router(metrics_router(token=settings.metrics_token, service="gateway"))
    install_docs(app, "Switchyard gateway", GATEWAY_DOCS)
    # Mounted after every API and docs route, so its own handling never touches them.
    if settings.console_enabled:
        install_console(app, gateway)
    # Outermost, so the server span covers everything else the request goes through.
    app.add_middleware(TracingMiddleware)
    app.add_middleware(HeadAsGet)
    app.add_middleware(ClientDisconnectGuard)
    if settings.forwarded_allow_ips:
        # Outside everything: each part of the gateway sees the client a trusted proxy
        # names (uvicorn's middleware takes the last X-Forwarded-For entry no trusted
        # proxy added), never one a client wrote for itself.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    return app
