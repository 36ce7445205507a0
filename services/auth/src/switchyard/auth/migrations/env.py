"""Alembic environment for the auth tables, on PostgreSQL (psycopg 3) or SQLite.

The URL and version table come from the config built by `switchyard.common.db`
(`alembic_config`); auth keeps its own version table so several services can share one
database without their migration histories colliding.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import engine_from_config, pool

from switchyard.auth.models import Base

DEFAULT_VERSION_TABLE = "alembic_version_auth"

config = context.config
version_table = config.attributes.get("version_table", DEFAULT_VERSION_TABLE)


def run_migrations_offline() -> None:
    """Write the migrations' SQL for the configured URL instead of running them (Alembic's
    `--sql` mode)."""
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        version_table=version_table,
        literal_binds=True,
        render_as_batch=url is not None and url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the connection the caller put in the Alembic config
    (`connection`), or on a new one to the configured URL; SQLite in batch mode."""
    connectable = config.attributes.get("connection") or engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )

    def run(connection: Any) -> None:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            version_table=version_table,
            # SQLite cannot ALTER most things in place; batch mode rebuilds the table.
            render_as_batch=connection.dialect.name == "sqlite",
        )
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
