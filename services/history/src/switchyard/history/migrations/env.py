"""Alembic environment of the history service.

Run through `switchyard db upgrade` (or `switchyard.common.db.upgrade`), which passes the
database URL and this service's own version table (`alembic_version_history`), so the
history, auth and any other service can migrate the same database independently.
Works on PostgreSQL (psycopg 3) and SQLite.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, engine_from_config, pool

from switchyard.history.config import VERSION_TABLE
from switchyard.history.models import Base

config = context.config
target_metadata = Base.metadata
version_table = config.attributes.get("version_table", VERSION_TABLE)


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def run_migrations_offline() -> None:
    """Emit the migration SQL for the configured URL without connecting (`alembic --sql`)."""
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=target_metadata,
        version_table=version_table,
        literal_binds=True,
        render_as_batch=_is_sqlite(url or ""),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=version_table,
        # SQLite cannot ALTER most things in place; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the connection handed over in the config's attributes, or on a new one
    to the configured URL."""
    # A caller may hand over an open connection (tests, embedded mode); otherwise connect.
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as connection:
        _run_with(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
