"""The composition root: builds the inference service's handler from its settings and the
adapters it is given (a publish function, a provider factory). Tests wire fakes here."""

from __future__ import annotations

from dataclasses import dataclass

from switchyard.common.routing import RoutingError, RoutingTable, load_routing
from switchyard.common.topics import Topics
from switchyard.inference.config import Settings
from switchyard.inference.handlers import ChatRequestHandler, Publish
from switchyard.inference.providers import ProviderFactory, ProviderPool, default_provider_factory


@dataclass
class InferenceRuntime:
    routing: RoutingTable
    providers: ProviderPool
    handler: ChatRequestHandler

    async def aclose(self) -> None:
        await self.providers.aclose()


def check_credentials(routing: RoutingTable) -> None:
    """Refuse to start when a deployment's API key variable is unset: better a clear start-up
    error than every request to that model failing with an upstream 401."""
    missing = []
    for deployment in routing.deployments():
        try:
            deployment.api_key()
        except RoutingError as exc:
            missing.append(str(exc))
    if missing:
        raise RoutingError("; ".join(sorted(set(missing))))


def build_runtime(
    settings: Settings,
    publish: Publish,
    *,
    routing: RoutingTable | None = None,
    provider_factory: ProviderFactory = default_provider_factory,
) -> InferenceRuntime:
    routing = routing or load_routing(settings.routing_file, settings.simulator_url)
    check_credentials(routing)
    providers = ProviderPool(provider_factory)
    handler = ChatRequestHandler(
        publish=publish, topics=Topics(settings.topic_prefix), routing=routing, providers=providers
    )
    return InferenceRuntime(routing, providers, handler)
