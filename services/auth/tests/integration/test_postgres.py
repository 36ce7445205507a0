"""The auth tables and use cases on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from argon2 import profiles
from sqlalchemy import create_engine, inspect

from switchyard.auth.bootstrap import build_database_service
from switchyard.auth.keys import hash_api_key
from switchyard.auth.models import Base
from switchyard.auth.passwords import PasswordHasher
from switchyard.auth.plugin import MIGRATIONS_DIR
from switchyard.auth.service import AuthService, DuplicateEmail, TooManyApiKeys
from switchyard.common.db import downgrade, sync_url, upgrade

pytestmark = pytest.mark.integration

VERSION_TABLE = "alembic_version_auth"
AUTH_TABLES = {
    "auth_users",
    "auth_api_keys",
    "auth_token_families",
    "auth_refresh_tokens",
    "auth_revoked_tokens",
    "auth_signing_keys",
    "auth_outbox",
}


def table_names(url: str) -> set[str]:
    engine = create_engine(sync_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_creates_the_tables_and_downgrade_removes_them(postgres_url: str) -> None:
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
    assert AUTH_TABLES | {VERSION_TABLE} <= table_names(postgres_url)
    assert "alembic_version" not in table_names(postgres_url), "auth uses its own version table"

    downgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE, "base")
    assert not AUTH_TABLES & table_names(postgres_url)


def test_migrations_match_the_models(postgres_url: str) -> None:
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
    engine = create_engine(sync_url(postgres_url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE, "compare_type": True}
            )
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == [], f"models and migrations disagree: {differences}"


async def test_users_keys_and_lookup_on_postgres(postgres_url: str) -> None:
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
    engine, service = build_database_service(
        postgres_url, passwords=PasswordHasher(profiles.CHEAPEST)
    )
    try:
        user = await service.create_user(
            email="Ops@Example.com", tenant="acme", role="admin", password="pw"
        )
        with pytest.raises(DuplicateEmail):
            await service.create_user(email="ops@EXAMPLE.com")
        assert (await service.authenticate("ops@example.com", "pw")).id == user.id

        expires = datetime.now(UTC) + timedelta(days=1)
        issued = await service.create_api_key(
            user_id=user.id, scopes=["chat"], allowed_models=["gpt-4o"], expires_at=expires
        )
        identity = await service.lookup_api_key(hash_api_key(issued.key))
        assert identity is not None
        assert (identity.user_id, identity.tenant, identity.role) == (user.id, "acme", "admin")
        assert identity.allowed_models == ["gpt-4o"]
        assert identity.expires_at == expires and identity.expires_at.tzinfo is not None
        assert await service.lookup_api_key(hash_api_key(issued.key), now=expires) is None

        await service.revoke_api_key(issued.record.id)
        assert await service.lookup_api_key(hash_api_key(issued.key)) is None
    finally:
        await engine.dispose()


async def test_concurrent_key_creations_stop_at_the_users_cap_on_postgres(
    postgres_url: str,
) -> None:
    """The user's row is locked while the keys are counted, so concurrent creations on
    separate connections cannot all see room for one more."""
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
    engine, uncapped = build_database_service(
        postgres_url, passwords=PasswordHasher(profiles.CHEAPEST)
    )
    service = AuthService(
        uncapped.sessions, PasswordHasher(profiles.CHEAPEST), max_api_keys_per_user=4
    )
    try:
        user = await service.create_user(email="cap@example.com", tenant="acme", password="pw")
        outcomes = await asyncio.gather(
            *(service.create_api_key(user_id=user.id, name=f"k{n}") for n in range(12)),
            return_exceptions=True,
        )
        made = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
        refused = [outcome for outcome in outcomes if isinstance(outcome, TooManyApiKeys)]
        assert (len(made), len(refused)) == (4, 8), outcomes
        assert len(await service.list_api_keys(user_id=user.id)) == 4
    finally:
        await engine.dispose()
