"""Settings of the history service, and where its Alembic migrations live."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from switchyard.common.settings import ServiceSettings

# Shipped inside the package so `switchyard db upgrade` works from an installed wheel.
MIGRATIONS_DIR = str(Path(__file__).parent / "migrations")
# Each service keeps its own Alembic version table, so several can share one database.
VERSION_TABLE = "alembic_version_history"


class Settings(ServiceSettings):
    """History service settings (`SWITCHYARD_HISTORY_*` plus the shared `SWITCHYARD_*`)."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_HISTORY_")

    port: int = 8002
    database_url: str = Field(
        default="sqlite+aiosqlite:///.switchyard/history.db",
        validation_alias=AliasChoices("SWITCHYARD_HISTORY_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL (postgresql+psycopg://...) in production; SQLite in embedded mode.",
    )
    group: str = Field(
        default="history", description="Consumer group on the request, reply and usage topics."
    )
    max_batch: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="Most events written to the database in one transaction.",
    )
