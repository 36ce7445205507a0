"""Refresh tokens: rotation, reuse detection revoking the whole sign-in, logout, and the
events every gateway applies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from switchyard.auth.models import OutboxEvent, RefreshToken
from switchyard.auth.service import AuthService, InvalidGrant
from switchyard.auth.tokens import hash_refresh_token
from switchyard.common.events import TokenFamilyRevoked, TokenRevoked

PASSWORD = "correct horse battery staple"


async def sign_in(harness, email: str = "alice@example.com") -> dict:
    response = await harness.client.post(
        "/v1/auth/token", json={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def refresh(harness, token: str):
    return await harness.client.post("/v1/auth/refresh", json={"refresh_token": token})


@pytest.fixture
async def alice(auth_app):
    return await auth_app.service.create_user(
        email="alice@example.com", tenant="acme", password=PASSWORD
    )


async def test_password_grant_returns_an_access_and_a_refresh_token(auth_app, alice) -> None:
    body = await sign_in(auth_app)
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert body["refresh_expires_in"] == 30 * 24 * 3600
    assert body["refresh_token"].startswith("sy-rt-") and len(body["refresh_token"]) > 40
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert {"iss", "aud", "sub", "tenant", "role", "scopes", "iat", "nbf", "exp", "jti", "sid"} <= (
        set(claims)
    )
    assert claims["sub"] == alice.id and claims["tenant"] == "acme"
    assert claims["exp"] - claims["iat"] == 900


async def test_refresh_token_is_stored_only_as_a_hash(auth_app, alice) -> None:
    body = await sign_in(auth_app)
    async with auth_app.service.sessions() as session:
        rows = (await session.execute(RefreshToken.__table__.select())).all()
    assert [row.token_hash for row in rows] == [hash_refresh_token(body["refresh_token"])]


async def test_refresh_rotates_and_the_old_token_stops_working(auth_app, alice) -> None:
    first = await sign_in(auth_app)
    rotated = await refresh(auth_app, first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    # The same sign-in: the access tokens share the family id.
    sid = jwt.decode(first["access_token"], options={"verify_signature": False})["sid"]
    assert jwt.decode(second["access_token"], options={"verify_signature": False})["sid"] == sid
    third = await refresh(auth_app, second["refresh_token"])
    assert third.status_code == 200


async def test_reusing_a_spent_refresh_token_revokes_the_whole_family(auth_app, alice) -> None:
    first = await sign_in(auth_app)
    second = (await refresh(auth_app, first["refresh_token"])).json()

    # An attacker (or a replay) presents the spent token: refused, and the family ends.
    reused = await refresh(auth_app, first["refresh_token"])
    assert reused.status_code == 401
    error = reused.json()["error"]
    assert error["code"] == "invalid_grant" and first["refresh_token"] not in reused.text

    # The legitimate holder's newest token no longer works either.
    assert (await refresh(auth_app, second["refresh_token"])).status_code == 401
    # ... nor do the family's access tokens, at auth ...
    denied = await auth_app.client.get(
        "/v1/api-keys", headers={"Authorization": f"Bearer {second['access_token']}"}
    )
    assert denied.status_code == 401
    # ... and every gateway is told.
    event = await auth_app.wait_for_event("auth.token_family_revoked")
    assert isinstance(event, TokenFamilyRevoked)
    sid = jwt.decode(second["access_token"], options={"verify_signature": False})["sid"]
    assert event.data.family_id == sid and event.data.reason == "reuse_detected"
    assert event.data.user_id == alice.id
    assert event.data.expires_at > datetime.now(UTC) + timedelta(minutes=14)


async def test_concurrent_use_of_one_refresh_token_is_reuse(service: AuthService) -> None:
    user = await service.create_user(email="bob@example.com", password="pw")
    pair = await service.sign_in(user)
    await service.refresh(pair.refresh_token)
    with pytest.raises(InvalidGrant) as refused:
        await service.refresh(pair.refresh_token)
    assert refused.value.reused


async def test_unknown_expired_and_disabled_refresh_tokens_are_refused(
    auth_app, alice, monkeypatch
) -> None:
    assert (await refresh(auth_app, "sy-rt-unknown")).status_code == 401
    body = await sign_in(auth_app)

    # Expired: the clock moves past the refresh lifetime.
    async with auth_app.service.sessions() as session:
        row = (await session.execute(RefreshToken.__table__.select())).first()
        await session.execute(
            RefreshToken.__table__.update()
            .where(RefreshToken.id == row.id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    expired = await refresh(auth_app, body["refresh_token"])
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "invalid_grant"

    body = await sign_in(auth_app)
    await auth_app.service.set_disabled(alice.id, True)
    assert (await refresh(auth_app, body["refresh_token"])).status_code == 401


async def test_refresh_grant_is_accepted_at_the_token_endpoint(auth_app, alice) -> None:
    body = await sign_in(auth_app)
    response = await auth_app.client.post(
        "/v1/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["refresh_token"] != body["refresh_token"]


async def test_refresh_validation_never_echoes_the_token(auth_app) -> None:
    secret = "sy-rt-" + "x" * 600
    response = await refresh(auth_app, secret)
    assert response.status_code == 400
    assert "xxxxx" not in response.text


async def test_logout_with_the_refresh_token_ends_the_sign_in(auth_app, alice) -> None:
    body = await sign_in(auth_app)
    response = await auth_app.client.post(
        "/v1/auth/logout", json={"refresh_token": body["refresh_token"]}
    )
    assert response.status_code == 204
    assert (await refresh(auth_app, body["refresh_token"])).status_code == 401
    event = await auth_app.wait_for_event("auth.token_family_revoked")
    assert event.data.reason == "logout"


async def test_logout_with_the_access_token_blocks_it_and_its_sign_in(auth_app, alice) -> None:
    body = await sign_in(auth_app)
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await auth_app.client.get("/v1/api-keys", headers=headers)).status_code == 200
    response = await auth_app.client.post("/v1/auth/logout", headers=headers)
    assert response.status_code == 204
    assert (await auth_app.client.get("/v1/api-keys", headers=headers)).status_code == 401
    assert (await refresh(auth_app, body["refresh_token"])).status_code == 401
    revoked = await auth_app.wait_for_event("auth.token_revoked")
    assert isinstance(revoked, TokenRevoked)
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert revoked.data.jti == claims["jti"]
    assert int(revoked.data.expires_at.timestamp()) == claims["exp"]
    await auth_app.wait_for_event("auth.token_family_revoked")


async def test_logout_needs_some_token_and_refuses_a_bad_access_token(auth_app) -> None:
    nothing = await auth_app.client.post("/v1/auth/logout")
    assert nothing.status_code == 400
    bad = await auth_app.client.post("/v1/auth/logout", headers={"Authorization": "Bearer a.b.c"})
    assert bad.status_code == 401
    # An unknown refresh token is not an error (RFC 7009): there is nothing to revoke.
    unknown = await auth_app.client.post(
        "/v1/auth/logout", json={"refresh_token": "sy-rt-never-issued"}
    )
    assert unknown.status_code == 204


async def test_events_are_written_in_the_same_transaction_as_the_change(
    service: AuthService,
) -> None:
    """No bus here: the events wait in the outbox, to be published by the relay."""
    user = await service.create_user(email="carol@example.com", password="pw")
    pair = await service.sign_in(user)
    await service.logout(refresh_token=pair.refresh_token)
    async with service.sessions() as session:
        rows = (await session.execute(OutboxEvent.__table__.select())).all()
    assert [row.event_type for row in rows] == ["auth.token_family_revoked"]
    assert rows[0].published_at is None and rows[0].key == user.id


async def change_password(harness, access_token: str, body: object):
    return await harness.client.post(
        "/v1/auth/password", json=body, headers={"Authorization": f"Bearer {access_token}"}
    )


async def test_a_user_changes_their_password_and_their_other_sign_ins_end(auth_app, alice):
    """A leaked password's sessions end with it: the caller's own sign-in stays, every other
    one is refused (and every gateway told); the old password no longer signs in."""
    here = await sign_in(auth_app)
    elsewhere = await sign_in(auth_app)
    new = "a much longer new passphrase"

    changed = await change_password(
        auth_app, here["access_token"], {"current_password": PASSWORD, "new_password": new}
    )

    assert changed.status_code == 204, changed.text
    assert (await refresh(auth_app, elsewhere["refresh_token"])).status_code == 401
    assert (await refresh(auth_app, here["refresh_token"])).status_code == 200
    event = await auth_app.wait_for_event("auth.token_family_revoked")
    assert isinstance(event, TokenFamilyRevoked)
    other_sid = jwt.decode(elsewhere["access_token"], options={"verify_signature": False})["sid"]
    assert event.data.family_id == other_sid and event.data.user_id == alice.id
    old = await auth_app.client.post(
        "/v1/auth/token",
        json={"grant_type": "password", "username": "alice@example.com", "password": PASSWORD},
    )
    assert old.status_code == 401
    signed_in = await auth_app.client.post(
        "/v1/auth/token",
        json={"grant_type": "password", "username": "alice@example.com", "password": new},
    )
    assert signed_in.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"current_password": "wrong password", "new_password": "long enough now"}, 403,
         "incorrect_password"),
        ({"current_password": PASSWORD, "new_password": "short"}, 400, None),
        ({"current_password": PASSWORD}, 400, None),
        ({"current_password": PASSWORD, "new_password": 12345678}, 400, None),
        ({"current_password": PASSWORD, "new_password": "long enough now", "x": 1}, 400, None),
        ([], 400, None),
    ],
)  # fmt: skip
async def test_a_bad_password_change_is_refused_and_changes_nothing(
    auth_app, alice, body, status, code
):
    here = await sign_in(auth_app)
    refused = await change_password(auth_app, here["access_token"], body)
    assert refused.status_code == status, refused.text
    error = refused.json()["error"]
    if code is not None:
        assert error["code"] == code
    assert PASSWORD not in refused.text  # never echoed
    assert (await sign_in(auth_app))["access_token"]  # the password is unchanged


async def test_guessing_the_current_password_is_throttled_like_sign_in(auth_app, alice):
    here = await sign_in(auth_app)
    statuses = []
    for attempt in range(12):
        response = await change_password(
            auth_app,
            here["access_token"],
            {"current_password": f"guess {attempt}", "new_password": "long enough now"},
        )
        statuses.append(response.status_code)
    assert statuses[0] == 403 and statuses[-1] == 429
    assert "Retry-After" in response.headers


async def test_a_password_change_needs_an_access_token(auth_app, alice):
    body = {"current_password": PASSWORD, "new_password": "long enough now"}
    assert (await auth_app.client.post("/v1/auth/password", json=body)).status_code == 401
