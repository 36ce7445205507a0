"""The history service as a `switchyard` CLI plugin (entry point `switchyard.services`)."""

from __future__ import annotations

from switchyard.common.plugins import Migrations, ServicePlugin
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE, Settings

service = ServicePlugin(
    name="history",
    default_port=8002,
    summary="Persists every event to the database and serves request history.",
    settings=Settings,
    factory="switchyard.history.app:create_app",
    migrations=Migrations(
        script_location=MIGRATIONS_DIR,
        version_table=VERSION_TABLE,
        database_url=lambda: Settings().database_url,
    ),
    # Consumers start before producers in embedded mode, so no early event is missed.
    start_order=15,
)
