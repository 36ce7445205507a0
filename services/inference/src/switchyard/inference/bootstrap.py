"""The composition root: builds the inference service's handler from its settings and the
adapters it is given (a publish function, a provider factory). Tests wire fakes here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from switchyard.common.routing import RoutingError, RoutingSource, RoutingTable
from switchyard.common.topics import Topics
from switchyard.inference import metrics
from switchyard.inference.adapters import Adapters
from switchyard.inference.config import Settings
from switchyard.inference.handlers import ChatRequestHandler, Publish
from switchyard.inference.lanes import LaneGate
from switchyard.inference.pricing import PriceError, PriceSource
from switchyard.inference.providers import ProviderFactory, ProviderPool
from switchyard.inference.reliability import Backoff, BreakerPolicy, DeploymentStates
from switchyard.inference.upstream import create_upstream

log = structlog.get_logger("switchyard.inference")


@dataclass
class InferenceRuntime:
    routing_source: RoutingSource
    prices: PriceSource
    providers: ProviderPool
    lanes: LaneGate
    handler: ChatRequestHandler

    @property
    def routing(self) -> RoutingTable:
        return self.routing_source.table

    def reload(self, *, only_if_changed: bool = False) -> None:
        """Reload the routing and price files (SIGHUP, or polling with `only_if_changed`).
        An invalid file is logged and the previous table kept."""
        if not only_if_changed or self.routing_source.changed():
            replaced = self.routing_source.reload()
            metrics.CONFIG_RELOADS.labels("routing", "replaced" if replaced else "kept").inc()
        try:
            if self.prices.reload_if_changed():
                metrics.CONFIG_RELOADS.labels("prices", "replaced").inc()
                log.info("price table reloaded", path=self.prices.path)
        except PriceError as exc:
            metrics.CONFIG_RELOADS.labels("prices", "kept").inc()
            log.error("price file not reloaded; keeping the previous table", error=str(exc))

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


def build_runtime(
    settings: Settings,
    publish: Publish,
    *,
    routing: RoutingTable | None = None,
    provider_factory: ProviderFactory | None = None,
) -> InferenceRuntime:
    if routing is not None:
        check_credentials(routing)
        source = RoutingSource(None, settings.simulator_url)
        source.table = routing
    else:
        source = RoutingSource(
            settings.routing_file, settings.simulator_url, validate=check_credentials
        )
    prices = PriceSource(settings.prices_file)
    providers = ProviderPool(provider_factory or create_upstream)
    lanes = LaneGate(
        settings.interactive_concurrency, settings.batch_concurrency, settings.batch_yield_ratio
    )
    handler = ChatRequestHandler(
        publish=publish,
        topics=Topics(settings.topic_prefix),
        routing=source,
        providers=providers,
        deployments=DeploymentStates(
            BreakerPolicy(settings.breaker_failure_threshold, settings.breaker_cooldown_s)
        ),
        prices=prices,
        lanes=lanes,
        backoff=Backoff(settings.retry_initial_backoff_s, settings.retry_max_backoff_s),
        adapters=Adapters(settings.anthropic_default_max_tokens),
    )
    runtime = InferenceRuntime(source, prices, providers, lanes, handler)
    source.on_change(runtime._retire_stale_providers)
    return runtime
