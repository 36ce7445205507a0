"""Fixtures shared by the auth suites: a signing key, settings on a migrated SQLite file,
an `AuthService` with a cheap password hash, and a running app client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from argon2 import profiles
from fastapi.testclient import TestClient

from switchyard.auth.app import create_app
from switchyard.auth.bootstrap import build_database_service, build_token_issuer
from switchyard.auth.config import Settings
from switchyard.auth.passwords import PasswordHasher
from switchyard.auth.plugin import MIGRATIONS_DIR
from switchyard.auth.service import AuthService
from switchyard.auth.signing import generate_private_key, private_key_pem
from switchyard.common.db import upgrade

INTERNAL_TOKEN = "test-internal-token"


@pytest.fixture(scope="session")
def signing_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "signing-key.pem"
    path.write_bytes(private_key_pem(generate_private_key()))
    return path


def migrate(database_url: str) -> None:
    upgrade(str(MIGRATIONS_DIR), database_url, "alembic_version_auth")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/auth.db"
    migrate(url)
    return url


@pytest.fixture
def settings(database_url: str, signing_key_file: Path, tmp_path: Path) -> Settings:
    return Settings(
        environment="test",
        database_url=database_url,
        signing_key_file=signing_key_file,
        internal_token=INTERNAL_TOKEN,
        dev_key_file=tmp_path / "unused-dev-key.pem",
        dev_api_key_file=tmp_path / "unused-dev-api-key",
        dev_api_key=None,
    )


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[AuthService]:
    engine, auth_service = build_database_service(
        settings.database_url,
        tokens=build_token_issuer(settings),
        passwords=PasswordHasher(profiles.CHEAPEST),
    )
    yield auth_service
    await engine.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def run_with_service(settings: Settings):
    """Run `action(service)` on its own engine and loop, from synchronous tests (the ones
    using the app client, whose loop runs in another thread)."""
    import asyncio

    def run_action(action):
        return asyncio.run(run(action))

    async def run(action):
        engine, auth_service = build_database_service(
            settings.database_url,
            tokens=build_token_issuer(settings),
            passwords=PasswordHasher(profiles.CHEAPEST),
        )
        try:
            return await action(auth_service)
        finally:
            await engine.dispose()

    return run_action
