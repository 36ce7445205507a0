"""The inference service's HTTP app: health and metrics only. Its real work is the
lifespan's subscriptions to the two request lanes, handled by `ChatRequestHandler`, and
its listener on the control topic (cancellations)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from switchyard.common.bus import EventBus, Handler, RetryPolicy, Subscription, create_bus
from switchyard.common.docs import ApiDocs, install_docs
from switchyard.common.errors import install_error_handlers
from switchyard.common.http import ClientDisconnectGuard, TracingMiddleware, health_router
from switchyard.common.limits import BodySizeLimit
from switchyard.common.metrics import metrics_router
from switchyard.common.tasks import cancel_and_wait
from switchyard.common.topics import Topics
from switchyard.inference.bootstrap import InferenceRuntime, build_runtime
from switchyard.inference.config import Settings
from switchyard.inference.redelivery import KafkaOutcomeLog, ListenedOutcomeLog, OutcomeLog

log = structlog.get_logger("switchyard.inference")

# The handler answers every request itself (even on its own bugs) and retries its own
# publishes until the bus takes them (the upstream is never called again for that), so it
# normally does not fail. Should it fail while the bus works (a request it cannot handle,
# an event the bus refuses), that request would otherwise hold its partition forever: after
# 5 such attempts it goes to the dead-letter topic. Failures while the bus is down never
# count; they are retried until it is back.
HANDLER_RETRY = RetryPolicy(max_attempts=5, max_backoff_s=5.0)


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
        outcomes = _outcome_log(settings, active_bus, topics)
        await outcomes.start()
        runtime.handler.outcomes = outcomes
        # Two lanes, two consumer groups: a batch backlog never sits in front of an
        # interactive request, and the lane gate holds batch back under interactive load.
        subscriptions = [
            await active_bus.subscribe(
                [topics.requests_interactive],
                group=settings.group,
                handler=runtime.handler,
                concurrency=settings.interactive_concurrency,
                retry=HANDLER_RETRY,
            ),
            await active_bus.subscribe(
                [topics.requests_batch],
                group=settings.batch_group,
                handler=runtime.handler,
                concurrency=settings.batch_concurrency,
                retry=HANDLER_RETRY,
            ),
        ]
        control = ControlListener(active_bus, topics.control, runtime.handler.cancel)
        await control.start()
        watcher = asyncio.create_task(runtime.watch(settings.routing_reload_interval_s))
        reload_on_sighup = _install_sighup(runtime)
        app.state.bus = active_bus
        app.state.outcomes = outcomes
        app.state.runtime = runtime
        app.state.routing = runtime.routing
        log.info(
            "inference started",
            models=runtime.routing.model_names(),
            group=settings.group,
            interactive_concurrency=settings.interactive_concurrency,
            batch_concurrency=settings.batch_concurrency,
        )
        try:
            yield
        finally:
            if reload_on_sighup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await control.stop()
            for subscription in subscriptions:
                await subscription.stop()
            await outcomes.stop()
            await runtime.aclose()
            if owns_bus:
                await active_bus.stop()
            app.state.bus = None
            app.state.outcomes = None

    app = FastAPI(
        title="Switchyard inference",
        version="0.1.0",
        lifespan=lifespan,
        summary="Consumes chat requests and calls LLM providers; HTTP for health and metrics.",
        # Served by install_docs from the installed Swagger UI package, not a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.bus = None
    app.state.outcomes = None

    async def outcomes_ready() -> bool:
        outcomes: OutcomeLog | None = app.state.outcomes
        return outcomes is not None and outcomes.healthy()

    async def bus_ready() -> bool:
        active_bus: EventBus | None = app.state.bus
        return active_bus is not None and await active_bus.healthy()

    install_error_handlers(app)
    app.include_router(health_router({"bus": bus_ready, "outcomes": outcomes_ready}))
    app.include_router(metrics_router(token=settings.metrics_token))
    # Outermost, so the server span covers everything else the request goes through.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(TracingMiddleware)
    app.add_middleware(ClientDisconnectGuard)
    install_docs(app, "Switchyard inference", ApiDocs())
    return app


def _outcome_log(settings: Settings, bus: EventBus, topics: Topics) -> OutcomeLog:
    """The outcomes log read from Kafka (every replica sees what any replica recorded), or
    through the bus's listeners when there is no Kafka (one process holds every request)."""
    if settings.bus == "kafka" and hasattr(bus, "bootstrap_servers"):
        return KafkaOutcomeLog(
            settings.kafka_bootstrap_servers,
            topics.outcomes,
            bus.partition_count,
            lookback_s=settings.redelivery_lookback_s,
            max_bytes=settings.redelivery_index_max_mb * 1024 * 1024,
            client_id=f"inference-{settings.instance_id}-outcomes",
            max_message_bytes=settings.kafka_max_message_bytes,
        )
    return ListenedOutcomeLog(
        bus,
        topics.outcomes,
        settings.redelivery_lookback_s,
        settings.redelivery_index_max_mb * 1024 * 1024,
    )


class ControlListener:
    """Listens to the control topic (cancellations), in the background and best effort: if
    the topic cannot be read (e.g. not created yet), requests are still served and
    listening is retried until it works. The topic's existence is checked first, so a
    missing topic never leaves a half-started consumer behind."""

    def __init__(
        self, bus: EventBus, topic: str, handler: Handler, retry_every_s: float = 10.0
    ) -> None:
        self.bus, self.topic, self.handler = bus, topic, handler
        self.retry_every_s = retry_every_s
        self.subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="control-listener")

    async def _run(self) -> None:
        warned = False
        while True:
            try:
                count = await asyncio.wait_for(self.bus.partition_count(self.topic), timeout=15)
                # Every partition, named: a cancellation may be keyed to any of them.
                self.subscription = await self.bus.listen(
                    self.topic, self.handler, partitions=list(range(count))
                )
            except Exception as exc:  # noqa: BLE001 - serving requests matters more
                if not warned:
                    log.warning(
                        "not listening for cancellations yet; retrying",
                        topic=self.topic,
                        error=repr(exc),
                        retry_every_s=self.retry_every_s,
                    )
                    warned = True
                await asyncio.sleep(self.retry_every_s)
                continue
            if warned:
                log.info("listening for cancellations", topic=self.topic)
            return

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self.subscription is not None:
            await self.subscription.stop()


def _install_sighup(runtime: InferenceRuntime) -> bool:
    """SIGHUP reloads the routing and price files (only the main thread may do this)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, runtime.reload)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError):
        return False
    return True
