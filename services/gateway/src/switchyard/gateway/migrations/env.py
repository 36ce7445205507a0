"""Alembic environment for the gateway's tables (the fleet's limit ledger), on PostgreSQL
(psycopg 3) or SQLite. The URL and version table come from `switchyard.common.db`; the
gateway keeps its own version table (`alembic_version_gateway`)."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import engine_from_config, pool

DEFAULT_VERSION_TABLE = "alembic_version_gateway"

config = context.config
version_table = config.attributes.get("version_table", DEFAULT_VERSION_TABLE)


def run_migrations_offline() -> None:
    """Emit the migration SQL for the configured URL without connecting (`alembic --sql`)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=None,
        version_table=version_table,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the connection handed over in the config's attributes, or on a new
    one to the configured URL."""
    connectable = config.attributes.get("connection") or engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )

    def run(connection: Any) -> None:
        context.configure(connection=connection, target_metadata=None, version_table=version_table)
        with context.begin_transaction():
            context.run_migrations()

    if hasattr(connectable, "connect"):
        with connectable.connect() as connection:
            run(connection)
    else:
        run(connectable)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
