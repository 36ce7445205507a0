"""Refresh-token families, the blocklist, revocation snapshots and the outbox on a real
PostgreSQL server: migration 0002 up and down, concurrent refreshes, and two relays
sharing one outbox without publishing an event twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from argon2 import profiles
from sqlalchemy import create_engine, inspect

from switchyard.auth.bootstrap import build_database_service
from switchyard.auth.outbox import OutboxRelay
from switchyard.auth.passwords import PasswordHasher
from switchyard.auth.plugin import MIGRATIONS_DIR
from switchyard.auth.service import InvalidGrant
from switchyard.auth.signing import SigningKey, generate_private_key
from switchyard.auth.tokens import TokenIssuer
from switchyard.common.bus import InMemoryBus
from switchyard.common.db import downgrade, sync_url, upgrade
from switchyard.common.events import Event
from switchyard.common.testing.infra import async_wait_until

pytestmark = pytest.mark.integration

VERSION_TABLE = "alembic_version_auth"
NEW_TABLES = {
    "auth_token_families",
    "auth_refresh_tokens",
    "auth_revoked_tokens",
    "auth_signing_keys",
    "auth_outbox",
}


async def _async_value(value: bool) -> bool:
    return value


def table_names(url: str) -> set[str]:
    engine = create_engine(sync_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
async def service(postgres_url: str):
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
    issuer = TokenIssuer(
        SigningKey.from_private_key(generate_private_key()),
        issuer="switchyard-auth",
        audience="switchyard",
        ttl_s=900,
    )
    engine, auth_service = build_database_service(
        postgres_url, tokens=issuer, passwords=PasswordHasher(profiles.CHEAPEST)
    )
    yield auth_service
    await engine.dispose()


def test_migration_0002_upgrades_and_downgrades(postgres_url: str) -> None:
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE, "0001")
    assert not NEW_TABLES & table_names(postgres_url)
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
    assert NEW_TABLES <= table_names(postgres_url)
    downgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE, "0001")
    tables = table_names(postgres_url)
    assert not NEW_TABLES & tables and {"auth_users", "auth_api_keys"} <= tables
    upgrade(str(MIGRATIONS_DIR), postgres_url, VERSION_TABLE)
    assert NEW_TABLES <= table_names(postgres_url)


async def test_refresh_rotation_and_reuse_detection(service) -> None:
    user = await service.create_user(email="alice@example.com", tenant="acme", password="pw")
    pair = await service.sign_in(user)
    second = await service.refresh(pair.refresh_token)
    assert second.session_id == pair.session_id
    third = await service.refresh(second.refresh_token)

    with pytest.raises(InvalidGrant) as reused:
        await service.refresh(pair.refresh_token)
    assert reused.value.reused
    with pytest.raises(InvalidGrant):
        await service.refresh(third.refresh_token)
    assert await service.is_access_token_revoked(service.tokens.verify(third.access.token))

    snapshot = await service.revocations()
    assert [sid for sid, _ in snapshot.revoked_sessions] == [pair.session_id]


async def test_concurrent_refreshes_of_one_token_let_exactly_one_win(service) -> None:
    """Two requests race with the same refresh token: one gets the next pair; the other
    is reuse, which ends the sign-in (so the winner's new token dies as well)."""
    user = await service.create_user(email="bob@example.com", password="pw")
    for _ in range(5):
        pair = await service.sign_in(user)
        results = await asyncio.gather(
            *(service.refresh(pair.refresh_token) for _ in range(4)), return_exceptions=True
        )
        winners = [result for result in results if not isinstance(result, Exception)]
        losers = [result for result in results if isinstance(result, InvalidGrant)]
        assert len(winners) == 1 and len(losers) == 3, results
        assert any(loser.reused for loser in losers)
        with pytest.raises(InvalidGrant):
            await service.refresh(winners[0].refresh_token)


async def test_logout_blocklist_and_disabled_users_in_the_snapshot(service) -> None:
    alice = await service.create_user(email="carol@example.com", password="pw")
    pair = await service.sign_in(alice)
    claims = service.tokens.verify(pair.access.token)
    await service.logout(claims=claims)
    assert await service.is_access_token_revoked(claims)
    key = await service.create_api_key(user_id=alice.id)
    await service.revoke_api_key(key.record.id)
    await service.set_disabled(alice.id, True)
    snapshot = await service.revocations()
    assert [jti for jti, _ in snapshot.revoked_tokens] == [claims.jti]
    assert snapshot.revoked_api_keys == [key.record.id]
    assert snapshot.disabled_users == [alice.id]
    # timestamptz against an aware instant: a gateway asks only as far back as it needs.
    just_before = datetime.now(UTC) - timedelta(minutes=1)
    assert (await service.revocations(api_keys_revoked_since=just_before)).revoked_api_keys == [
        key.record.id
    ]
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert (await service.revocations(api_keys_revoked_since=later)).revoked_api_keys == []


async def test_two_relays_publish_each_event_once_and_in_order(service) -> None:
    user = await service.create_user(email="dave@example.com")
    keys = [await service.create_api_key(user_id=user.id, name=f"k{i}") for i in range(20)]
    for issued in keys:
        await service.revoke_api_key(issued.record.id)

    bus = InMemoryBus()
    published: list[Event] = []

    async def record(event: Event) -> None:
        published.append(event)

    await bus.listen("pg.auth.events", record)
    relays = [
        OutboxRelay(service.sessions, bus, "pg.auth.events", poll_interval_s=0.01, batch_size=3)
        for _ in range(2)
    ]
    for relay in relays:
        await relay.start()
    try:
        await async_wait_until(
            lambda: _async_value(len(published) >= 20), timeout=10, interval=0.02
        )
        await asyncio.sleep(0.2)  # a duplicate would show up by now
    finally:
        for relay in relays:
            await relay.stop()
        await bus.stop()
    assert [event.data.key_id for event in published] == [k.record.id for k in keys]
