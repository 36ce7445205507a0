"""How the `switchyard` CLI and embedded mode find the inference service and its
`switchyard simulator` command."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlparse

import typer

from switchyard.common.plugins import DevContribution, ServicePlugin
from switchyard.inference.config import Settings

SIMULATOR_PORT = 8099


def simulator(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = SIMULATOR_PORT,
    latency_ms: Annotated[
        float, typer.Option(min=0, help="Base latency of every reply, in ms.")
    ] = 0,
) -> None:
    """Run the provider simulator: OpenAI and Anthropic wire protocols, fault injection."""
    from switchyard.common.http import serve
    from switchyard.inference.simulator import create_simulator_app

    serve(
        create_simulator_app(latency_ms),  # type: ignore[arg-type]
        host=host,
        port=port,
        name="simulator",
        port_setting="--port",
    )


simulator_command = simulator


def prepare_dev() -> DevContribution:
    """Embedded mode runs the simulator whenever the routing table points at it."""
    from switchyard.common.routing import load_routing, simulator_root
    from switchyard.inference.simulator import create_simulator_app

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
    port = urlparse(simulator_url).port or SIMULATOR_PORT
    return DevContribution(
        extra_servers=[("simulator", create_simulator_app(), port)],
        port_settings={"simulator": "SWITCHYARD_SIMULATOR_URL (e.g. http://127.0.0.1:8199/v1)"},
        messages=[f"inference: provider simulator at {simulator_url} serves {', '.join(users)}"],
    )


service = ServicePlugin(
    name="inference",
    default_port=8003,
    summary="Consumes chat requests and calls LLM providers with their official SDKs.",
    settings=Settings,
    factory="switchyard.inference.app:create_app",
    commands=lambda: [simulator_command],
    prepare_dev=prepare_dev,
    start_order=10,
)
