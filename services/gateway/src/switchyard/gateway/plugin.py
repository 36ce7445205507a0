"""Plugs the gateway into the `switchyard` CLI and embedded mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from switchyard.common.plugins import Migrations, ServicePlugin
from switchyard.gateway.config import DatabaseSettings, Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _database_url() -> str:
    return DatabaseSettings().database_url


def _commands() -> list[Any]:
    from switchyard.gateway.cli import spend
    from switchyard.gateway.replay_cli import replay_app

    return [spend, replay_app]


def _preflight() -> None:
    """Load the routing file as start-up will (RoutingError says what is wrong with it)."""
    from switchyard.common.routing import load_routing

    settings = Settings()
    load_routing(settings.routing_file, settings.simulator_url)


service = ServicePlugin(
    name="gateway",
    default_port=8000,
    summary="The public API: OpenAI's and Anthropic's, the console, history and usage.",
    settings=Settings,
    factory="switchyard.gateway.app:create_app",
    migrations=Migrations(
        script_location=str(MIGRATIONS_DIR),
        version_table="alembic_version_gateway",
        database_url=_database_url,
    ),
    commands=_commands,
    preflight=_preflight,
    start_order=90,
)
