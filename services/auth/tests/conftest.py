"""Fixtures shared by the auth suites: a signing key, settings on a migrated SQLite file,
an `AuthService` with a cheap password hash, and a running app client."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import profiles
from fastapi import FastAPI
from fastapi.testclient import TestClient

from switchyard.auth.app import create_app
from switchyard.auth.bootstrap import build_database_service, build_token_issuer
from switchyard.auth.config import Settings
from switchyard.auth.passwords import PasswordHasher
from switchyard.auth.plugin import MIGRATIONS_DIR
from switchyard.auth.service import AuthService
from switchyard.auth.signing import generate_private_key, private_key_pem
from switchyard.common.bus import InMemoryBus
from switchyard.common.db import upgrade
from switchyard.common.events import Event
from switchyard.common.topics import Topics

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


@dataclass
class AuthHarness:
    """The auth app running in the test's event loop, publishing on an in-memory bus whose
    auth events topic is recorded in `events`."""

    client: httpx.AsyncClient
    app: FastAPI
    bus: InMemoryBus
    settings: Settings
    events: list[Event] = field(default_factory=list)

    @property
    def service(self) -> AuthService:
        return self.app.state.auth.service

    async def wait_for_event(
        self,
        event_type: str,
        timeout: float = 1.0,
        match: Callable[[Any], bool] = lambda _: True,
    ) -> Event:
        """The first event of `event_type` published for which `match(event)` holds, waited
        for up to `timeout` seconds (an event is published after the answer that caused
        it, so one of an earlier request can still arrive)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.type == event_type and match(event):
                    return event
            await asyncio.sleep(0.005)
        raise AssertionError(
            f"no {event_type} event within {timeout}s; got {[e.type for e in self.events]}"
        )


@contextlib.asynccontextmanager
async def running_auth(
    settings: Settings, passwords: PasswordHasher | None = None
) -> AsyncIterator[AuthHarness]:
    """The auth app running on an in-memory bus, with `passwords` (by default the cheap
    hasher that keeps sign-ins fast; the app is otherwise as deployed)."""
    bus = InMemoryBus()
    await bus.start()
    app = create_app(settings, bus=bus, passwords=passwords or PasswordHasher(profiles.CHEAPEST))
    harness_events: list[Event] = []

    async def record(event: Event) -> None:
        harness_events.append(event)

    await bus.listen(Topics(settings.topic_prefix).auth_events, record)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://auth") as client:
                yield AuthHarness(client, app, bus, settings, harness_events)
    finally:
        await bus.stop()


@pytest.fixture
def run_auth(settings: Settings) -> Callable[..., AbstractAsyncContextManager[AuthHarness]]:
    """`run_auth(passwords=...)`: the auth app on these settings with that hasher."""
    return functools.partial(running_auth, settings)


@pytest.fixture
async def auth_app(settings: Settings) -> AsyncIterator[AuthHarness]:
    async with running_auth(settings) as harness:
        yield harness
