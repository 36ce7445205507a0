"""The inference service's HTTP app: health and metrics only. Its real work is the
lifespan's subscriptions to the two request lanes, handled by `ChatRequestHandler`, and
its listener on the control topic (cancellations).

`create_app(settings, bus, *, adapters)`: with `bus=None` the app creates, starts and stops
the bus its settings ask for; in embedded mode it joins the shared in-memory bus it is
given. The lifespan composes the service with `bootstrap.build` (the adapters are passed
through to it) and starts what it built on an `AsyncExitStack`, which stops it in reverse
order, also when start-up fails half-way."""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import structlog
from fastapi import FastAPI

from switchyard.common.bus import EventBus, Handler, RetryPolicy, Subscription, create_bus
from switchyard.common.bus.retrying import RetriedSubscriptions
from switchyard.common.docs import ApiDocs, install_docs
from switchyard.common.errors import install_error_handlers
from switchyard.common.http import (
    FASTAPI_TELEMETRY,
    ClientDisconnectGuard,
    HeadAsGet,
    TracingMiddleware,
    health_router,
)
from switchyard.common.limits import BodySizeLimit
from switchyard.common.metrics import metrics_router
from switchyard.common.routing import RoutingTable
from switchyard.common.tasks import cancel_and_wait
from switchyard.common.topics import Topics
from switchyard.inference.bootstrap import InferenceRuntime, build
from switchyard.inference.config import Settings
from switchyard.inference.providers import ProviderFactory
from switchyard.inference.redelivery import OutcomeLog
from switchyard.inference.upstream import preload_sdks

log = structlog.get_logger("switchyard.inference")

# The handler answers every request itself (even on its own bugs) and retries its own
# publishes until the bus takes them (the upstream is never called again for that), so it
# normally does not fail. Should it fail while the bus works (a request it cannot handle,
# an event the bus refuses), that request would otherwise hold its partition forever: after
# 5 such attempts it goes to the dead-letter topic. Failures while the bus is down never
# count; they are retried until it is back.
HANDLER_RETRY = RetryPolicy(max_attempts=5, max_backoff_s=5.0)


def create_app(
    settings: Settings | None = None,
    bus: EventBus | None = None,
    *,
    routing: RoutingTable | None = None,
    provider_factory: ProviderFactory | None = None,
    outcomes: OutcomeLog | None = None,
) -> FastAPI:
    """The inference app on `settings` (read from the environment by default).

    With `bus=None` the lifespan creates, starts and stops the bus the settings ask for; a
    given bus is the caller's to start and stop. `routing`, `provider_factory` and
    `outcomes` are passed to `bootstrap.build` (`None`: the production ones). Returns the
    app; while it runs, `app.state.runtime` is its `InferenceRuntime`. The lifespan raises
    what `build` raises (an invalid routing or price file fails start-up)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            active_bus = bus or create_bus(settings, client_id=f"inference-{settings.instance_id}")
            runtime = build(  # fails fast on bad routing
                settings,
                active_bus,
                routing=routing,
                provider_factory=provider_factory,
                outcomes=outcomes,
            )
            # The SDKs the routed deployments need, imported before the first request.
            await preload_sdks(runtime.routing.deployments())
            stack.callback(_forget, app)  # last: readiness holds until everything stopped
            if bus is None:
                await active_bus.start()
                stack.push_async_callback(active_bus.stop)
            stack.push_async_callback(runtime.aclose)
            await runtime.outcomes.start()
            stack.push_async_callback(runtime.outcomes.stop)
            topics = Topics(settings.topic_prefix)
            # Two lanes, two consumer groups: a batch backlog never sits in front of an
            # interactive request, and the lane gate holds batch back under interactive
            # load.
            lanes = [
                functools.partial(
                    active_bus.subscribe,
                    [topic],
                    group=group,
                    handler=runtime.handler,
                    concurrency=concurrency,
                    retry=HANDLER_RETRY,
                )
                for topic, group, concurrency in (
                    (topics.requests_interactive, settings.group, settings.interactive_concurrency),
                    (topics.requests_batch, settings.batch_group, settings.batch_concurrency),
                )
            ]
            # Kafka may not be reachable yet: as the gateway does, inference then serves
            # (readiness failing) and keeps trying in the background, never exits.
            consumers = RetriedSubscriptions(lanes, "requests")
            stack.push_async_callback(consumers.stop)
            await consumers.start()
            app.state.consumers = consumers
            control = ControlListener(active_bus, topics.control, runtime.handler.cancel)
            await control.start()
            stack.push_async_callback(control.stop)
            watcher = asyncio.create_task(runtime.watch(settings.routing_reload_interval_s))
            stack.push_async_callback(cancel_and_wait, watcher)
            if _install_sighup(runtime):
                stack.callback(asyncio.get_running_loop().remove_signal_handler, signal.SIGHUP)
            app.state.bus = active_bus
            app.state.outcomes = runtime.outcomes
            app.state.runtime = runtime
            app.state.routing = runtime.routing
            log.info(
                "inference started",
                models=runtime.routing.model_names(),
                group=settings.group,
                interactive_concurrency=settings.interactive_concurrency,
                batch_concurrency=settings.batch_concurrency,
            )
            yield

    app = FastAPI(
        telemetry=FASTAPI_TELEMETRY,
        # A path with a trailing slash is not found, never redirected (a redirect would
        # name the request's Host header, and a POST's body would be sent again).
        redirect_slashes=False,
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
        consumers: RetriedSubscriptions | None = getattr(app.state, "consumers", None)
        return (
            active_bus is not None
            and consumers is not None
            and consumers.consuming()
            and await active_bus.healthy()
        )

    install_error_handlers(app)
    app.include_router(health_router({"bus": bus_ready, "outcomes": outcomes_ready}))
    app.include_router(metrics_router(token=settings.metrics_token, service="inference"))
    # Outermost, so the server span covers everything else the request goes through.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(TracingMiddleware)
    app.add_middleware(HeadAsGet)
    app.add_middleware(ClientDisconnectGuard)
    install_docs(app, "Switchyard inference", ApiDocs())
    return app


def _forget(app: FastAPI) -> None:
    """Readiness fails again once the lifespan has stopped everything it started."""
    app.state.bus = None
    app.state.outcomes = None
    app.state.consumers = None


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
        """Start listening in the background (retried every `retry_every_s` seconds while
        the topic cannot be read); returns at once."""
        self._task = asyncio.create_task(self._run(), name="control-listener")

    async def _run(self) -> None:
        warned = False
        while True:
            try:
                async with asyncio.timeout(15):
                    count = await self.bus.partition_count(self.topic)
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
        """Stop trying to listen, and stop listening."""
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
