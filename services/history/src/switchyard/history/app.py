"""The history service application: consumes requests, replies, usage and auth events
into the database; serves `/v1/history`, `/v1/usage`, `/v1/jobs`, `/v1/replays`, the
Responses API state (`/v1/responses`), the Idempotency-Key store and the response cache
store to the gateway; and runs the expiry sweeper, the retention purge, the job webhook
deliveries and the replay runner in the background.

`create_app(settings, bus, *, adapters)`: with `bus=None` the app creates, starts and stops
the bus its settings ask for; in embedded mode it joins the shared in-memory bus it is
given. The lifespan composes the service with `bootstrap.build` (the adapters are passed
through to it) and starts what it built on an `AsyncExitStack`, which stops it in reverse
order, also when start-up fails half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime

import structlog
from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common.bus import EventBus, RetryPolicy, Subscription, enter_bus
from switchyard.common.bus.retrying import RetriedSubscriptions
from switchyard.common.docs import ApiDocs, install_docs
from switchyard.common.errors import install_error_handlers
from switchyard.common.events import CancelRequestData, ChatCancelRequested, ChatChunk
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
from switchyard.common.queryparams import refuse_unknown_parameters
from switchyard.common.tasks import cancel_and_wait
from switchyard.common.topics import Topics
from switchyard.history.api.cache import cache_router
from switchyard.history.api.internal import idempotency_router
from switchyard.history.api.jobs import jobs_router
from switchyard.history.api.performance import performance_router
from switchyard.history.api.replays import replays_router
from switchyard.history.api.responses import responses_router
from switchyard.history.api.routes import history_router
from switchyard.history.api.usage import usage_router
from switchyard.history.bootstrap import build
from switchyard.history.config import Settings
from switchyard.history.recorder_thread import RecorderThread
from switchyard.history.replay_admission import GatewayAdmission
from switchyard.history.resume import resume_unfinished

log = structlog.get_logger("switchyard.history")

# How long a read waits for events already delivered in this process to be written (the
# in-memory bus of embedded mode). Bounded, so a stalled database delays reads by at most
# this much.
READ_AFTER_WRITE_WAIT_S = 1.0
# How long a read on Kafka waits for the batch consumer to handle what was published
# before it: a hurried batch is written in milliseconds, so this only bounds the wait of
# reads while history lags (a backlog, a slow database), which then answer with what is
# written (the gateway asks again for an answer given moments ago).
READ_AFTER_PUBLISH_WAIT_S = 0.25

# Errors beyond those derived from each route (400 for input, 401 for the internal token
# and the caller's identity, 404 for an id in the path), for the OpenAPI document.
HISTORY_DOCS = ApiDocs(
    errors={
        "GET /v1/history": (403,),
        "GET /v1/usage": (403,),
        "GET /v1/usage/performance": (403,),
        "POST /v1/replays": (403,),
        "GET /v1/history/settings": (403,),
        "PUT /v1/history/settings": (403,),
        "POST /v1/jobs/{job_id}/cancel": (409,),
        "POST /internal/v1/idempotency/complete": (413,),
        "POST /v1/replays/{replay_id}/stop": (409,),
        "POST /v1/replays/{replay_id}/resume": (409,),
    }
)


def create_app(
    settings: Settings | None = None,
    bus: EventBus | None = None,
    *,
    engine: AsyncEngine | None = None,
    admission: GatewayAdmission | None = None,
) -> FastAPI:
    """The history app on `settings` (read from the environment by default).

    With `bus=None` the lifespan creates, starts and stops the bus the settings ask for; a
    given bus is the caller's to start and stop. `engine` and `admission` are passed to
    `bootstrap.build` (`None`: the production ones). Returns the app; while it runs,
    `app.state.history` is its `HistoryComponents`. The lifespan raises what `build`
    raises."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            event_bus, components = await enter_bus(
                stack,
                settings,
                bus,
                client_id=f"history-{settings.instance_id}",
                build=lambda event_bus: build(
                    settings, event_bus, engine=engine, admission=admission
                ),
            )
            app.state.history = components
            app.state.bus = event_bus

            topics = Topics(settings.topic_prefix)
            consumed = [
                topics.requests_interactive,
                topics.requests_batch,
                topics.replies,
                topics.usage,
                topics.auth_events,
            ]
            # While the database does not take writes, a failing batch is retried with
            # backoff for as long as that lasts, and offsets are committed only after it
            # commits. While it does, a failing batch is split to find the event that
            # fails alone; that one is dead-lettered after a few attempts (poison).
            record = components.recorder.record
            if settings.recorder_thread:
                recorder_thread = RecorderThread(
                    components.engine.url.render_as_string(hide_password=False)
                )
                await recorder_thread.start()
                # Closed after the subscription stopped (and wrote what it held).
                stack.push_async_callback(recorder_thread.close)
                record = recorder_thread.record

            async def subscribe() -> Subscription:
                return await event_bus.subscribe_batch(
                    consumed,
                    group=settings.group,
                    handler=record,
                    max_batch=settings.max_batch,
                    max_batch_wait_ms=settings.max_batch_wait_ms,
                    retry=RetryPolicy(max_attempts=settings.poison_attempts),
                    healthy=components.database_writable,
                    # Stream chunks are transient (the reply holds the whole answer): a
                    # long stream's are never decoded, nor held in memory by a batch.
                    skip_types=(ChatChunk.model_fields["type"].default,),
                )

            # Kafka may not be reachable yet: as the gateway does, history then serves
            # (readiness failing) and keeps trying in the background, never exits.
            consumer = RetriedSubscriptions([subscribe], "events")
            stack.push_async_callback(consumer.stop)
            await consumer.start()
            app.state.consumer = consumer

            async def caught_up() -> bool:
                # The sweeper expires only requests whose answer this group would have
                # recorded: never before the group consumes.
                return consumer.consuming() and await event_bus.caught_up(settings.group, consumed)

            components.sweeper.caught_up = caught_up

            async def cancel_request(tenant: str, request_id: str) -> None:
                # As the gateway tells inference of a caller's cancellation.
                await event_bus.publish(
                    topics.control,
                    ChatCancelRequested(
                        source="history",
                        tenant=tenant,
                        request_id=request_id,
                        data=CancelRequestData(reason="credentials_revoked"),
                    ),
                    key=request_id,
                )

            components.sweeper.cancel_request = cancel_request

            async def read_barrier() -> bool:
                # A read often wants what was just answered (a chained Responses turn, a
                # job looked at after it finished): the batch gathering now is written at
                # once instead of after its wait, and the read waits for it.
                if not consumer.consuming():
                    return False
                await consumer.subscriptions[0].hurry_and_wait(READ_AFTER_PUBLISH_WAIT_S)
                return await event_bus.settled(settings.group, READ_AFTER_WRITE_WAIT_S)

            app.state.read_barrier = read_barrier

            async def warm_read_barrier() -> None:
                # The first end-offsets lookup opens a client (about half a second on
                # Kafka): opened now, not by the first read that needs it.
                with contextlib.suppress(Exception):
                    await event_bus.end_offsets(consumed)

            stack.push_async_callback(
                cancel_and_wait, asyncio.create_task(warm_read_barrier(), name="warm-reads")
            )
            app.state.replay_runner = components.runner
            if settings.resume_batch_lane:
                started = datetime.now(UTC)

                async def resume() -> None:
                    # In the background: the services after history start meanwhile, and
                    # only requests made before `started` are taken, never this run's own.
                    try:
                        await resume_unfinished(
                            components.engine,
                            lambda event: event_bus.publish(
                                topics.requests_batch, event, key=event.request_id
                            ),
                            made_before=started,
                            now=started,
                        )
                    except Exception as exc:  # noqa: BLE001 - they expire, as without this
                        log.error(
                            "unfinished batch-lane requests could not be published again",
                            error=repr(exc),
                        )

                stack.push_async_callback(
                    cancel_and_wait, asyncio.create_task(resume(), name="resume")
                )
            for name, work in (
                ("sweeper", components.sweeper.run(settings.sweep_interval_s)),
                ("webhooks", components.webhooks.run(settings.webhook_poll_interval_s)),
                ("replays", components.runner.run(settings.replay_poll_interval_s)),
            ):
                stack.push_async_callback(cancel_and_wait, asyncio.create_task(work, name=name))
            log.info(
                "history service started", group=settings.group, topic_prefix=settings.topic_prefix
            )
            yield

    app = FastAPI(
        telemetry=FASTAPI_TELEMETRY,
        # A path with a trailing slash is not found, never redirected (a redirect would
        # name the request's Host header, and a POST's body would be sent again).
        redirect_slashes=False,
        title="Switchyard history",
        summary="Every event of every request, and each caller's request history.",
        version="1.0.0",
        lifespan=lifespan,
        # Served by install_docs from the installed Swagger UI package, not a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)

    async def database_ready() -> bool:
        components = getattr(app.state, "history", None)
        return components is not None and await components.database_ready()

    async def bus_ready() -> bool:
        event_bus = getattr(app.state, "bus", None)
        consumer: RetriedSubscriptions | None = getattr(app.state, "consumer", None)
        return (
            event_bus is not None
            and consumer is not None
            and consumer.consuming()
            and await event_bus.healthy()
        )

    app.include_router(health_router({"database": database_ready, "bus": bus_ready}))
    app.include_router(metrics_router(token=settings.metrics_token, service="history"))
    # On the APIs: a query parameter no route reads is refused, not ignored (`after` on a
    # list would otherwise give its first page again and again).
    strict_queries = [Depends(refuse_unknown_parameters)]
    for router in (
        history_router(settings.internal_token),
        usage_router(settings.internal_token),
        performance_router(settings.internal_token),
        jobs_router(settings.internal_token),
        replays_router(settings.internal_token),
        cache_router(settings.internal_token),
        responses_router(settings.internal_token),
    ):
        app.include_router(router, dependencies=strict_queries)
    app.include_router(
        idempotency_router(settings.internal_token, settings.idempotency_max_body_bytes)
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Every API route takes the internal token: a caller without it is answered before
    # its body is read (InternalTokenFirst).
    app.add_middleware(
        InternalTokenFirst, token=settings.internal_token, prefixes=("/v1/", "/internal/")
    )
    # Outermost, so the server span covers everything else the request goes through.
    app.add_middleware(TracingMiddleware)
    app.add_middleware(HeadAsGet)
    app.add_middleware(ClientDisconnectGuard)
    install_docs(app, "Switchyard history", HISTORY_DOCS)
    return app
