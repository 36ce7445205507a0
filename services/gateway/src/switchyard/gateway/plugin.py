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


service = ServicePlugin(
    name="gateway",
    default_port=8000,
    summary="The public OpenAI-compatible API.",
    settings=Settings,
    factory="switchyard.gateway.app:create_app",
    migrations=Migrations(
        script_location=str(MIGRATIONS_DIR),
        version_table="alembic_version_gateway",
        database_url=_database_url,
    ),
    commands=_commands,
    start_order=90,
)
