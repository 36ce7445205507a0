"""How the `switchyard` CLI and embedded mode find the inference service. Embedded mode
also runs the provider simulator (its own distribution, `switchyard-simulator`) when the
routing table points at it."""

from __future__ import annotations

from urllib.parse import urlparse

from switchyard.common.plugins import DevContribution, ServicePlugin
from switchyard.inference.config import Settings


def prepare_dev() -> DevContribution:
    """Embedded mode runs the simulator whenever the routing table points at it (and its
    distribution is installed, as in the workspace; a production image has none)."""
    from switchyard.common.routing import load_routing, simulator_root

    settings = Settings()
    routing = load_routing(settings.routing_file, settings.simulator_url)
    simulator_url = settings.simulator_url.rstrip("/")
    root = simulator_root(simulator_url)
    # OpenAI deployments use the simulator's /v1 URL, Anthropic ones its root.
    users = [
        name
        for name in routing.model_names()
        if any(
            simulator_root(deployment.base_url or "") == root
            for deployment in routing.models[name].deployments
        )
    ]
    if not users:
        return DevContribution(messages=["inference: routing uses no simulator; none started"])
    try:
        from switchyard.simulator.app import create_simulator_app
        from switchyard.simulator.cli import SIMULATOR_PORT
    except ImportError:
        return DevContribution(
            messages=[
                f"inference: routing points at the provider simulator ({', '.join(users)}), "
                "which is not installed (distribution switchyard-simulator)"
            ]
        )
    port = urlparse(simulator_url).port or SIMULATOR_PORT
    return DevContribution(
        extra_servers=[("simulator", create_simulator_app(), port)],
        port_settings={"simulator": "SWITCHYARD_SIMULATOR_URL (e.g. http://127.0.0.1:8199/v1)"},
        messages=[f"inference: provider simulator at {simulator_url} serves {', '.join(users)}"],
    )


def preflight() -> None:
    """Load the routing file (every deployment's credential variables set) and the price
    file as start-up will; RoutingError or PriceError (ConfigurationErrors) say what is
    wrong with them in one line."""
    from switchyard.common.pricing import load_prices
    from switchyard.common.routing import load_routing
    from switchyard.inference.bootstrap import check_credentials

    settings = Settings()
    check_credentials(load_routing(settings.routing_file, settings.simulator_url))
    load_prices(settings.prices_file)


service = ServicePlugin(
    name="inference",
    default_port=8003,
    summary="Consumes chat requests and calls LLM providers with their official SDKs.",
    settings=Settings,
    factory="switchyard.inference.app:create_app",
    prepare_dev=prepare_dev,
    preflight=preflight,
    start_order=10,
)
