"""The `switchyard simulator` command, added to the shared CLI through the
`switchyard.commands` entry point group."""

from __future__ import annotations

from typing import Annotated

import typer

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
    from switchyard.simulator.app import create_simulator_app

    serve(
        create_simulator_app(latency_ms),  # type: ignore[arg-type]
        host=host,
        port=port,
        name="simulator",
        port_setting="--port",
    )
