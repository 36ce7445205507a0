"""How the `switchyard` CLI and embedded mode find the auth service."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from switchyard.common.plugins import DevContribution, Migrations, PrincipalNames, ServicePlugin

if TYPE_CHECKING:
    from switchyard.auth.config import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _settings() -> Settings:
    from switchyard.auth.config import Settings

    return Settings()


def _database_url() -> str:
    # Only the database settings: a migration job needs no signing key or internal token.
    from switchyard.auth.config import DatabaseSettings

    return DatabaseSettings().database_url


def _commands() -> list[Any]:
    from switchyard.auth.cli import keys_app, teams_app, tenants_app, tokens_app, users_app

    return [users_app, keys_app, tokens_app, teams_app, tenants_app]


async def _principal_names(
    user_ids: set[str], api_key_ids: set[str], team_ids: set[str]
) -> PrincipalNames:
    """Emails, API key names and team names by id, read from the auth database."""
    from sqlalchemy import select

    from switchyard.auth.models import ApiKey, Team, User
    from switchyard.common.db import create_engine, dispose_engine

    engine = create_engine(_database_url())
    try:
        async with engine.connect() as connection:
            emails = (
                dict(
                    (
                        await connection.execute(
                            select(User.id, User.email).where(User.id.in_(user_ids))
                        )
                    ).all()
                )
                if user_ids
                else {}
            )
            names = (
                dict(
                    (
                        await connection.execute(
                            select(ApiKey.id, ApiKey.name).where(ApiKey.id.in_(api_key_ids))
                        )
                    ).all()
                )
                if api_key_ids
                else {}
            )
            teams = (
                dict(
                    (
                        await connection.execute(
                            select(Team.id, Team.name).where(Team.id.in_(team_ids))
                        )
                    ).all()
                )
                if team_ids
                else {}
            )
    finally:
        await dispose_engine(engine)
    return PrincipalNames(emails=emails, key_names=names, team_names=teams)


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
    principal_names=_principal_names,
)
