"""Auth events through the outbox (in order, never lost, also from other processes), the
revocation snapshot gateways start from, and signing key rotation."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from switchyard.auth.bootstrap import build_token_issuer
from switchyard.auth.config import Settings
from switchyard.auth.models import OutboxEvent
from switchyard.auth.outbox import OutboxRelay
from switchyard.auth.service import AuthService
from switchyard.auth.signing import (
    SigningKey,
    SigningKeyError,
    VerificationKey,
    generate_private_key,
    load_verification_keys,
    private_key_pem,
)
from switchyard.auth.tokens import TokenIssuer
from switchyard.common.bus import BusUnavailableError, InMemoryBus
from switchyard.common.events import MAX_JWT_LEEWAY_S, Event, SigningKeyRotated
from switchyard.common.testing.bodies import WatchedBody

TOPIC = "test.auth.events"


class FlakyBus(InMemoryBus):
    """Refuses the first `failures` publishes, like Kafka being away for a moment."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def publish(self, topic, event, *, key=None, partition=None) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise BusUnavailableError("kafka is away")
        await super().publish(topic, event, key=key, partition=partition)


async def recorded(bus: InMemoryBus) -> list[Event]:
    events: list[Event] = []

    async def record(event: Event) -> None:
        events.append(event)

    await bus.listen(TOPIC, record)
    return events


async def wait_for(condition, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_events_written_by_another_process_are_published_in_order(
    service: AuthService,
) -> None:
    """The CLI has no bus: its events wait in the outbox until a running relay polls."""
    user = await service.create_user(email="a@example.com")
    keys = [await service.create_api_key(user_id=user.id, name=f"k{i}") for i in range(3)]
    for issued in keys:
        await service.revoke_api_key(issued.record.id)
    await service.set_disabled(user.id, True)

    bus = InMemoryBus()
    events = await recorded(bus)
    relay = OutboxRelay(service.sessions, bus, TOPIC, poll_interval_s=0.05)
    await relay.start()
    try:
        await wait_for(lambda: len(events) == 4)
    finally:
        await relay.stop()
        await bus.stop()
    assert [e.type for e in events] == ["auth.api_key_revoked"] * 3 + ["auth.user_disabled"]
    assert [e.data.key_id for e in events[:3]] == [issued.record.id for issued in keys]
    async with service.sessions() as session:
        rows = (await session.execute(OutboxEvent.__table__.select())).all()
    assert all(row.published_at is not None for row in rows)


async def test_a_commit_wakes_the_relay_at_once(service: AuthService) -> None:
    bus = InMemoryBus()
    events = await recorded(bus)
    # A poll interval far longer than the test: only the notification can publish before
    # it ends. The bound below is a fraction of it, so a loaded machine cannot fail the test.
    relay = OutboxRelay(service.sessions, bus, TOPIC, poll_interval_s=600)
    service.on_events_written = relay.notify
    await relay.start()
    try:
        user = await service.create_user(email="b@example.com")
        started = asyncio.get_running_loop().time()
        await service.set_disabled(user.id, True)
        await wait_for(lambda: events, timeout=60.0)
        assert asyncio.get_running_loop().time() - started < 60.0
    finally:
        await relay.stop()
        await bus.stop()


async def test_events_survive_the_bus_being_down(service: AuthService) -> None:
    user = await service.create_user(email="c@example.com")
    issued = await service.create_api_key(user_id=user.id)
    bus = FlakyBus(failures=3)
    events = await recorded(bus)
    relay = OutboxRelay(service.sessions, bus, TOPIC, poll_interval_s=0.05)
    service.on_events_written = relay.notify
    await relay.start()
    try:
        await service.revoke_api_key(issued.record.id)
        await service.set_disabled(user.id, True)
        await wait_for(lambda: len(events) == 2, timeout=10)
    finally:
        await relay.stop()
        await bus.stop()
    assert [e.type for e in events] == ["auth.api_key_revoked", "auth.user_disabled"]


async def test_the_revocation_snapshot_holds_what_gateways_must_refuse(
    service: AuthService,
) -> None:
    alice = await service.create_user(email="alice@example.com", password="pw")
    bob = await service.create_user(email="bob@example.com", password="pw")
    live = await service.create_api_key(user_id=alice.id, name="live")
    dead = await service.create_api_key(user_id=alice.id, name="dead")
    await service.revoke_api_key(dead.record.id)
    pair = await service.sign_in(alice)
    await service.logout(
        refresh_token=pair.refresh_token, claims=service.tokens.verify(pair.access.token)
    )
    await service.set_disabled(bob.id, True)

    snapshot = await service.revocations()
    assert snapshot.revoked_api_keys == [dead.record.id]
    assert live.record.id not in snapshot.revoked_api_keys
    assert snapshot.disabled_users == [bob.id]
    assert [jti for jti, _ in snapshot.revoked_tokens] == [pair.access.jti]
    assert [sid for sid, _ in snapshot.revoked_sessions] == [pair.session_id]
    (_, session_expiry) = snapshot.revoked_sessions[0]
    assert session_expiry <= datetime.now(UTC) + timedelta(minutes=15, seconds=1)

    # Just after the tokens expire a gateway may still accept them for clock skew: the
    # revocations are still listed, and kept.
    skewed = datetime.now(UTC) + timedelta(minutes=16)
    assert await service.purge_expired(now=skewed) == 0
    still = await service.revocations(now=skewed)
    assert [jti for jti, _ in still.revoked_tokens] == [pair.access.jti]
    assert [sid for sid, _ in still.revoked_sessions] == [pair.session_id]

    # Once no skew accepts the access tokens, nothing about them needs remembering.
    later = datetime.now(UTC) + timedelta(minutes=16, seconds=MAX_JWT_LEEWAY_S)
    expired = await service.revocations(now=later)
    assert expired.revoked_tokens == [] and expired.revoked_sessions == []
    assert expired.revoked_api_keys == [dead.record.id]
    assert await service.purge_expired(now=later) >= 2


async def test_a_token_revoked_just_after_its_expiry_is_still_listed(
    service: AuthService,
) -> None:
    # A gateway still accepts it for the clock skew it allows, so the revocation counts.
    alice = await service.create_user(email="alice@example.com", password="pw")
    pair = await service.sign_in(alice)
    claims = dataclasses.replace(
        service.tokens.verify(pair.access.token),
        expires_at=datetime.now(UTC) - timedelta(seconds=5),
    )
    await service.revoke_access_token(claims)
    assert [jti for jti, _ in (await service.revocations()).revoked_tokens] == [claims.jti]

    beyond = await service.sign_in(alice)
    claims = dataclasses.replace(
        service.tokens.verify(beyond.access.token),
        expires_at=datetime.now(UTC) - timedelta(seconds=MAX_JWT_LEEWAY_S + 1),
    )
    await service.revoke_access_token(claims)
    assert claims.jti not in [jti for jti, _ in (await service.revocations()).revoked_tokens]


async def test_the_internal_revocations_endpoint_needs_the_internal_token(auth_app) -> None:
    assert (await auth_app.client.get("/internal/v1/revocations")).status_code == 401
    user = await auth_app.service.create_user(email="d@example.com")
    await auth_app.service.set_disabled(user.id, True)
    response = await auth_app.client.get(
        "/internal/v1/revocations",
        headers={"x-switchyard-internal-token": auth_app.settings.internal_token},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["disabled_users"] == [user.id]
    assert set(body) == {
        "generated_at",
        "revoked_tokens",
        "revoked_sessions",
        "revoked_api_keys",
        "disabled_users",
    }


async def test_the_snapshot_names_only_keys_revoked_since_the_instant_asked(
    service: AuthService, auth_app
) -> None:
    alice = await service.create_user(email="alice@example.com", password="pw")
    old = await service.create_api_key(user_id=alice.id, name="old")
    await service.revoke_api_key(old.record.id)
    cut = datetime.now(UTC)
    recent = await service.create_api_key(user_id=alice.id, name="recent")
    await service.revoke_api_key(recent.record.id)

    snapshot = await service.revocations(api_keys_revoked_since=cut)
    assert snapshot.revoked_api_keys == [recent.record.id]
    assert sorted((await service.revocations()).revoked_api_keys) == sorted(
        [old.record.id, recent.record.id]
    )

    headers = {"x-switchyard-internal-token": auth_app.settings.internal_token}
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    response = await auth_app.client.get(
        "/internal/v1/revocations", params={"api_keys_revoked_since": since}, headers=headers
    )
    assert response.status_code == 200
    # A naive instant or a non-date is refused, never read as some time zone.
    for bad in ("2026-01-01T00:00:00", "yesterday"):
        refused = await auth_app.client.get(
            "/internal/v1/revocations", params={"api_keys_revoked_since": bad}, headers=headers
        )
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["param"] == "api_keys_revoked_since"


# -- signing keys ---------------------------------------------------------------------


def key_file(tmp_path: Path, name: str, *, public: bool = False) -> Path:
    private = generate_private_key()
    path = tmp_path / name
    if public:
        path.write_bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    else:
        path.write_bytes(private_key_pem(private))
    return path


async def test_the_first_start_and_each_rotation_are_announced_once(
    auth_app, settings: Settings, tmp_path: Path
) -> None:
    first = await auth_app.wait_for_event("auth.signing_key_rotated", timeout=5.0)
    assert isinstance(first, SigningKeyRotated)
    service = auth_app.service
    assert first.data.kid == service.tokens.signing_key.kid and first.data.previous_kid is None
    assert await service.record_signing_key() is False  # a restart with the same key

    rotated = settings.model_copy(
        update={
            "signing_key_file": key_file(tmp_path, "new.pem"),
            "verification_key_files": [settings.signing_key_file],
        }
    )
    new_service = AuthService(service.sessions, service._passwords, build_token_issuer(rotated))
    new_service.on_events_written = auth_app.app.state.outbox.notify
    assert await new_service.record_signing_key() is True
    assert await new_service.record_signing_key() is False
    # The outbox relays in the background: wait for the rotation's announcement, then
    # give a second one (of the repeated call) time to arrive before counting.
    new_kid = new_service.tokens.signing_key.kid
    await auth_app.wait_for_event(
        "auth.signing_key_rotated", timeout=5.0, match=lambda e: e.data.kid == new_kid
    )
    await asyncio.sleep(0.2)
    announcements = [e for e in auth_app.events if e.type == "auth.signing_key_rotated"]
    assert len(announcements) == 2
    latest = announcements[-1].data
    assert latest.kid == new_service.tokens.signing_key.kid
    assert latest.previous_kid == first.data.kid
    assert set(latest.published_kids) == {first.data.kid, latest.kid}


def test_rotation_without_downtime(settings: Settings, tmp_path: Path) -> None:
    """The new key signs; tokens of the old one still verify while it is published."""
    old_issuer = build_token_issuer(settings)
    old_token = old_issuer.issue(user_id="u", tenant="t", role="member", scopes=["chat"]).token

    # Step 1: publish the next key (public half only) before it signs.
    next_key = key_file(tmp_path, "next.pem")
    public_next = tmp_path / "next.pub.pem"
    public_next.write_bytes(
        serialization.load_pem_private_key(next_key.read_bytes(), None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    step1 = build_token_issuer(
        settings.model_copy(update={"verification_key_files": [public_next]})
    )
    assert len(step1.jwks()["keys"]) == 2

    # Step 2: the next key signs, the old one only verifies.
    step2 = build_token_issuer(
        settings.model_copy(
            update={
                "signing_key_file": next_key,
                "verification_key_files": [settings.signing_key_file],
            }
        )
    )
    new_token = step2.issue(user_id="u", tenant="t", role="member", scopes=["chat"]).token
    assert (
        jwt.get_unverified_header(new_token)["kid"] != jwt.get_unverified_header(old_token)["kid"]
    )
    assert step2.verify(old_token).user_id == "u"
    assert step2.verify(new_token).user_id == "u"
    jwks = step2.jwks()["keys"]
    assert {jwk["kid"] for jwk in jwks} == set(step2.published_kids)
    assert all("d" not in jwk for jwk in jwks)


def test_verification_keys_are_read_from_public_or_private_pem_files(
    settings: Settings, tmp_path: Path
) -> None:
    public = key_file(tmp_path, "public.pem", public=True)
    private = key_file(tmp_path, "private.pem")
    keys = load_verification_keys(
        settings.model_copy(update={"verification_key_files": [public, private, public]})
    )
    assert len(keys) == 2 and all(isinstance(key, VerificationKey) for key in keys)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SigningKeyError, match="verification key file"):
        load_verification_keys(settings.model_copy(update={"verification_key_files": [garbage]}))


def test_verification_key_files_come_from_a_comma_separated_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signing_key_file: Path
) -> None:
    first, second = key_file(tmp_path, "a.pem"), key_file(tmp_path, "b.pem", public=True)
    monkeypatch.setenv("SWITCHYARD_AUTH_VERIFICATION_KEY_FILES", f"{first}, {second}")
    settings = Settings(environment="test", internal_token="t", signing_key_file=signing_key_file)
    assert settings.verification_key_files == [first, second]
    monkeypatch.setenv("SWITCHYARD_AUTH_VERIFICATION_KEY_FILES", str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="verification key file"):
        Settings(environment="test", internal_token="t", signing_key_file=signing_key_file)


def test_allowed_models_and_sid_claims_round_trip() -> None:
    issuer = TokenIssuer(
        SigningKey.from_private_key(generate_private_key()),
        issuer="switchyard-auth",
        audience="switchyard",
        ttl_s=60,
    )
    token = issuer.issue(
        user_id="u",
        tenant="t",
        role="member",
        scopes=["chat"],
        session_id="family-1",
        allowed_models=["gpt-4o"],
    )
    claims = issuer.verify(token.token)
    assert claims.session_id == "family-1" and claims.allowed_models == ["gpt-4o"]
    plain = issuer.verify(issuer.issue(user_id="u", tenant="t", role="m", scopes=[]).token)
    assert plain.session_id is None and plain.allowed_models is None


async def test_a_body_without_the_internal_token_is_refused_before_it_is_read(auth_app) -> None:
    # A caller without the token must not make auth decode its JSON first (as FastAPI
    # does before the route's dependencies): answered 401 at once.
    body = WatchedBody()

    refused = await auth_app.client.post("/internal/v1/api-keys/lookup", content=body.stream())
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "internal token required"
    assert not body.read
    judged = await auth_app.client.post(
        "/internal/v1/api-keys/lookup",
        content=b"{bad",
        headers={"x-switchyard-internal-token": auth_app.settings.internal_token},
    )
    assert judged.status_code == 400
