"""How the `switchyard` CLI and embedded mode find the auth service."""

from __future__ import annotations

from pathlib import Path

from switchyard.common.plugins import DevContribution, Migrations, ServicePlugin

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _settings():
    from switchyard.auth.config import Settings

    return Settings()


def _database_url() -> str:
    # Only the database settings: a migration job needs no signing key or internal token.
    from switchyard.auth.config import DatabaseSettings

    return DatabaseSettings().database_url


def _commands() -> list:
    from switchyard.auth.cli import keys_app, teams_app, tenants_app, tokens_app, users_app

    return [users_app, keys_app, tokens_app, teams_app, tenants_app]


def _prepare_dev() -> DevContribution:
    from switchyard.auth.dev import prepare_dev

    return prepare_dev()


service = ServicePlugin(
    name="auth",
    default_port=8001,
    summary="Users, API keys and signed access tokens (JWKS).",
    settings=_settings,
    factory="switchyard.auth.app:create_app",
    migrations=Migrations(
        script_location=str(MIGRATIONS_DIR),
        version_table="alembic_version_auth",
        database_url=_database_url,
    ),
    commands=_commands,
    prepare_dev=_prepare_dev,
    start_order=20,
)
