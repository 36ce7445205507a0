"""Plugs the gateway into the `switchyard` CLI and embedded mode."""

from __future__ import annotations

from switchyard.common.plugins import ServicePlugin
from switchyard.gateway.config import Settings


def _commands() -> list:
    from switchyard.gateway.cli import replay_app

    return [replay_app]


service = ServicePlugin(
    name="gateway",
    default_port=8000,
    summary="The public OpenAI-compatible API.",
    settings=Settings,
    factory="switchyard.gateway.app:create_app",
    start_order=90,
    commands=_commands,
)
