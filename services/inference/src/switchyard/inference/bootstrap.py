"""Composition root of the inference service: `build(settings, bus, *, adapters)` wires
the routing and price files, the provider pool, the lane gate, the outcomes log and the
`ChatRequestHandler` that publishes on `bus`. Each adapter defaults to the production one
from `Settings`; tests pass fakes (a fixed routing table, a provider factory, an outcomes
log) here instead of reaching into what it builds. The app's lifespan starts and stops the
result."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog

from switchyard.common.bus import EventBus
from switchyard.common.routing import RoutingError, RoutingSource, RoutingTable
from switchyard.common.topics import Topics
from switchyard.inference import metrics
from switchyard.inference.adapters import Adapters
from switchyard.inference.config import Settings
from switchyard.inference.handlers import ChatRequestHandler
from switchyard.inference.lanes import LaneGate
from switchyard.inference.pricing import PriceError, PriceSource
from switchyard.inference.providers import ProviderFactory, ProviderPool
from switchyard.inference.redelivery import KafkaReplyLog, LocalOutcomeLog, OutcomeLog
from switchyard.inference.reliability import Backoff, BreakerPolicy, DeploymentStates
from switchyard.inference.upstream import create_upstream, preload_sdks

log = structlog.get_logger("switchyard.inference")


@dataclass
class InferenceRuntime:
    """What the running app holds for its lifetime (`app.state.runtime`)."""

    routing_source: RoutingSource
    prices: PriceSource
    providers: ProviderPool
    lanes: LaneGate
    handler: ChatRequestHandler
    # Recorded outcomes, looked up for a redelivered request (redelivery.py); the app
    # starts and stops it.
    outcomes: OutcomeLog
    _preloads: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def routing(self) -> RoutingTable:
        """The routing table as of now (a reload swaps it whole)."""
        return self.routing_source.table

    def reload(self, *, only_if_changed: bool = False) -> None:
        """Reload the routing and price files (SIGHUP, or polling with `only_if_changed`).
        An invalid file is logged and the previous table kept."""
        if not only_if_changed or self.routing_source.changed():
            replaced = self.routing_source.reload()
            metrics.CONFIG_RELOADS.labels("routing", "replaced" if replaced else "kept").inc()
            if replaced:
                self._preload_sdks()
        try:
            if self.prices.reload_if_changed():
                metrics.CONFIG_RELOADS.labels("prices", "replaced").inc()
                log.info("price table reloaded", path=self.prices.path)
        except PriceError as exc:
            metrics.CONFIG_RELOADS.labels("prices", "kept").inc()
            log.error("price file not reloaded; keeping the previous table", error=str(exc))

    def _preload_sdks(self) -> None:
        """Import, in a worker thread, an SDK a newly routed deployment needs (the first
        request to it would otherwise import it on the event loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop to keep free: import here
            asyncio.run(preload_sdks(self.routing.deployments()))
            return
        task = loop.create_task(preload_sdks(self.routing.deployments()))
        self._preloads.add(task)
        task.add_done_callback(self._preloads.discard)

    async def watch(self, interval_s: float) -> None:
        """Poll the configuration files every `interval_s` seconds until cancelled."""
        if interval_s <= 0:
            return
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.reload(only_if_changed=True)
            except Exception:  # noqa: BLE001 - the watcher must survive a bad reload
                log.exception("configuration reload failed")

    def _retire_stale_providers(self, table: RoutingTable) -> None:
        keep = {
            (name, deployment)
            for name, route in table.models.items()
            for deployment in route.deployments
        }
        self.providers.retire(keep)

    async def aclose(self) -> None:
        """Close every provider client the pool opened."""
        await self.providers.aclose()


def check_credentials(routing: RoutingTable) -> None:
    """Refuse to start when a variable a deployment reads a credential from (an API key,
    an Entra ID or Google access token, AWS keys) is unset: better a clear start-up error
    than every request to that model failing with an upstream 401."""
    missing = []
    for deployment in routing.deployments():
        for variable in deployment.credential_variables():
            try:
                deployment.secret(variable)
            except RoutingError as exc:
                missing.append(str(exc))
    if missing:
        raise RoutingError("; ".join(sorted(set(missing))))


def build(
    settings: Settings,
    bus: EventBus,
    *,
    routing: RoutingTable | None = None,
    provider_factory: ProviderFactory | None = None,
    outcomes: OutcomeLog | None = None,
) -> InferenceRuntime:
    """Wire the inference service from `settings`; the handler publishes on `bus` (not
    started here: the app's lifespan starts the bus, the outcomes log and the
    subscriptions).

    Adapters, each `None` meaning the production one from `settings`:
    - `routing`: a fixed routing table instead of `settings.routing_file` (reloaded when
      it changes).
    - `provider_factory`: makes the client of each deployment; `create_upstream`.
    - `outcomes`: the outcomes log; `build_outcome_log(settings, bus)` by default.

    Returns the `InferenceRuntime`. Raises `RoutingError` for an invalid routing file or a
    deployment whose credential variable is unset, and `PriceError` for an invalid price
    file: better a clear start-up error than failing requests."""
    if routing is not None:
        check_credentials(routing)
        source = RoutingSource(None, settings.simulator_url)
        source.table = routing
    else:
        source = RoutingSource(
            settings.routing_file, settings.simulator_url, validate=check_credentials
        )
    topics = Topics(settings.topic_prefix)
    prices = PriceSource(settings.prices_file)
    providers = ProviderPool(provider_factory or create_upstream)
    lanes = LaneGate(
        settings.interactive_concurrency, settings.batch_concurrency, settings.batch_yield_ratio
    )
    outcomes = outcomes if outcomes is not None else build_outcome_log(settings, bus)
    handler = ChatRequestHandler(
        publish=bus.publish,
        publish_in_order=bus.publish_in_order,
        topics=topics,
        routing=source,
        providers=providers,
        deployments=DeploymentStates(
            BreakerPolicy(settings.breaker_failure_threshold, settings.breaker_cooldown_s)
        ),
        prices=prices,
        lanes=lanes,
        backoff=Backoff(settings.retry_initial_backoff_s, settings.retry_max_backoff_s),
        adapters=Adapters(settings.anthropic_default_max_tokens),
        outcomes=outcomes,
        partition_count=bus.partition_count if settings.bus == "kafka" else None,
    )
    runtime = InferenceRuntime(source, prices, providers, lanes, handler, outcomes)
    source.on_change(runtime._retire_stale_providers)
    return runtime


def build_outcome_log(settings: Settings, bus: EventBus) -> OutcomeLog:
    """Where a redelivered request's earlier outcome is found: its reply partition read
    back from Kafka (every replica sees what any replica wrote), or what this process
    wrote when there is no Kafka (one process holds every request). Nothing is connected
    until its `start()`."""
    topics = Topics(settings.topic_prefix)
    if settings.bus == "kafka" and hasattr(bus, "bootstrap_servers"):
        return KafkaReplyLog(
            settings.kafka_bootstrap_servers,
            topics.replies,
            bus.partition_count,
            lookback_s=settings.redelivery_lookback_s,
            max_bytes=settings.redelivery_index_max_mb * 1024 * 1024,
            client_id=f"inference-{settings.instance_id}-replies",
            max_message_bytes=settings.kafka_max_message_bytes,
            clock_skew_s=settings.redelivery_clock_skew_s,
        )
    return LocalOutcomeLog(
        settings.redelivery_lookback_s, settings.redelivery_index_max_mb * 1024 * 1024
    )
