"""The history service as a `switchyard` CLI plugin (entry point `switchyard.services`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from switchyard.common.plugins import Migrations, ServicePlugin
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE, DatabaseSettings, Settings


def _commands() -> list[typer.Typer | Callable[..., Any]]:
    from switchyard.history.cli import cache_app, retention_app, tenant_settings_app, usage_app

    return [usage_app, retention_app, tenant_settings_app, cache_app]


service = ServicePlugin(
    name="history",
    default_port=8002,
    summary="Persists every event to the database and serves request history.",
    settings=Settings,
    factory="switchyard.history.app:create_app",
    migrations=Migrations(
        script_location=MIGRATIONS_DIR,
        version_table=VERSION_TABLE,
        database_url=lambda: DatabaseSettings().database_url,
    ),
    commands=_commands,
    # Consumers start before producers in embedded mode, so no early event is missed.
    start_order=15,
)
