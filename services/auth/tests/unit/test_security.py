"""Auth refusing what it must: keys wider than the credential creating them, time claims
that are not times, oversized and over-deep bodies, control characters in names, the
password hash on the event loop, and the embedded dev key after revocation or outside
development."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import jwt
import pytest
from argon2 import profiles
from typer.testing import CliRunner

from switchyard.auth.keys import hash_api_key
from switchyard.auth.passwords import PasswordHasher
from switchyard.auth.service import AuthService, ExceedsCredential, InvalidInput
from switchyard.common.testing.infra import async_wait_until

PASSWORD = "correct horse battery staple"


@pytest.fixture
def dev_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWITCHYARD_ENVIRONMENT", "development")
    monkeypatch.setenv("SWITCHYARD_AUTH_DATABASE_URL", database_url)
    monkeypatch.delenv("SWITCHYARD_DEV_API_KEY", raising=False)
    return tmp_path


async def signed_in(harness, email: str = "alice@example.com", role: str = "member") -> str:
    await harness.service.create_user(email=email, password=PASSWORD, role=role)
    response = await harness.client.post(
        "/v1/auth/token", json={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_key_cannot_hold_more_scopes_or_models_than_the_token_creating_it(auth_app):
    await signed_in(auth_app)
    user = await auth_app.service.user_by_email("alice@example.com")
    narrow = auth_app.service.issue_access_token(
        user, scopes=["keys:write"], allowed_models=["sim-small"]
    ).token

    wider_scopes = await auth_app.client.post(
        "/v1/api-keys", json={"scopes": ["chat", "history:read"]}, headers=bearer(narrow)
    )
    wider_models = await auth_app.client.post(
        "/v1/api-keys",
        json={"scopes": [], "allowed_models": ["sim-small", "gpt-4o"]},
        headers=bearer(narrow),
    )
    defaults = await auth_app.client.post("/v1/api-keys", json={}, headers=bearer(narrow))

    assert wider_scopes.status_code == 403, wider_scopes.text
    assert wider_scopes.json()["error"]["param"] == "scopes"
    assert wider_models.status_code == 403
    assert wider_models.json()["error"]["param"] == "allowed_models"
    # Omitted, the key gets what the token holds, never more: no scopes, its one model.
    assert defaults.status_code == 201, defaults.text
    assert (defaults.json()["scopes"], defaults.json()["allowed_models"]) == ([], ["sim-small"])


async def test_a_member_cannot_mint_admin_keys_and_an_admin_can(auth_app):
    member = await signed_in(auth_app)
    admin = await signed_in(auth_app, "root@example.com", role="admin")

    refused = await auth_app.client.post(
        "/v1/api-keys", json={"scopes": ["chat", "admin"]}, headers=bearer(member)
    )
    granted = await auth_app.client.post(
        "/v1/api-keys", json={"scopes": ["history:write", "admin"]}, headers=bearer(admin)
    )
    plain = await auth_app.client.post("/v1/api-keys", json={}, headers=bearer(member))

    assert refused.status_code == 403
    assert granted.status_code == 201 and granted.json()["scopes"] == ["history:write", "admin"]
    assert plain.json()["scopes"] == ["chat", "history:read"]
    assert "admin" not in jwt.decode(member, options={"verify_signature": False})["scopes"]
    assert "admin" in jwt.decode(admin, options={"verify_signature": False})["scopes"]


async def test_operator_commands_cannot_exceed_the_users_role(service: AuthService):
    member = await service.create_user(email="m@example.com")
    with pytest.raises(ExceedsCredential):
        await service.create_api_key(user_id=member.id, scopes=["admin"])
    with pytest.raises(ExceedsCredential):
        service.issue_access_token(member, scopes=["history:write"])


async def test_a_demoted_users_key_loses_the_scopes_of_the_old_role(service: AuthService):
    admin = await service.create_user(email="a@example.com", role="admin")
    issued = await service.create_api_key(user_id=admin.id, scopes=["chat", "admin"])
    from sqlalchemy import update

    from switchyard.auth.models import User

    async with service.sessions() as session:
        await session.execute(update(User).where(User.id == admin.id).values(role="member"))
        await session.commit()
    identity = await service.lookup_api_key(hash_api_key(issued.key))
    assert identity is not None and identity.scopes == ["chat"]


def forged(harness, **claims) -> str:
    key = harness.service.tokens.signing_key
    now = int(time.time())
    body = {
        "iss": harness.settings.jwt_issuer,
        "aud": harness.settings.jwt_audience,
        "sub": "someone",
        "tenant": "default",
        "role": "member",
        "scopes": ["keys:write"],
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    body.update(claims)
    return jwt.encode(body, key.private_key, algorithm="RS256", headers={"kid": key.kid})


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": str(int(time.time()) + 600)},
        {"exp": 10**20},
        {"exp": 1e300},
        {"iat": "0"},
        {"nbf": -(10**18)},
        {"sub": 42},
    ],
)
async def test_tokens_with_time_claims_that_are_not_times_are_401_not_500(auth_app, claims):
    token = forged(auth_app, **claims)
    for method, path in (("GET", "/v1/api-keys"), ("POST", "/v1/auth/logout")):
        response = await auth_app.client.request(method, path, headers=bearer(token))
        assert response.status_code == 401, (claims, path, response.text)


async def test_the_gateway_can_ask_whether_a_user_still_exists(auth_app):
    await signed_in(auth_app)
    user = await auth_app.service.user_by_email("alice@example.com")
    internal = {"x-switchyard-internal-token": auth_app.settings.internal_token}

    known = await auth_app.client.get(f"/internal/v1/users/{user.id}", headers=internal)
    unknown = await auth_app.client.get("/internal/v1/users/nobody", headers=internal)
    outsider = await auth_app.client.get(f"/internal/v1/users/{user.id}")

    assert known.json() == {
        "user_id": user.id,
        "tenant": "default",
        "active": True,
        "team_id": None,
        "team_models": None,
    }
    assert unknown.status_code == 404
    assert outsider.status_code == 401


async def test_an_unauthenticated_oversized_body_is_413_before_it_is_read(auth_app):
    limit = auth_app.settings.max_body_bytes
    declared = await auth_app.client.post(
        "/v1/auth/token", content=b"x" * (limit + 1), headers={"content-type": "application/json"}
    )

    async def chunked():
        for _ in range(limit // 4096 + 2):
            yield b"a" * 4096

    streamed = await auth_app.client.post(
        "/v1/auth/token", content=chunked(), headers={"content-type": "application/json"}
    )
    form = await auth_app.client.post(
        "/v1/auth/token",
        content=chunked(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )

    for response in (declared, streamed, form):
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("path", ["/v1/auth/token", "/v1/api-keys", "/internal/v1/api-keys/lookup"])
async def test_over_deep_json_bodies_are_400(auth_app, path):
    token = await signed_in(auth_app)
    headers = bearer(token) | {
        "x-switchyard-internal-token": auth_app.settings.internal_token,
        "content-type": "application/json",
    }
    body = b'{"name": ' + b"[" * 500 + b"]" * 500 + b"}"
    response = await auth_app.client.post(path, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert "levels" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "bad", ["a\x00b@example.com", "a\x1b[31m@example.com", "a@ex\r\nample.com"]
)
async def test_emails_with_control_characters_are_refused(auth_app, bad):
    admin = await signed_in(auth_app, "root@example.com", role="admin")
    response = await auth_app.client.post(
        "/v1/admin/users", json={"email": bad, "role": "member"}, headers=bearer(admin)
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "email"
    assert "\x1b" not in response.text


@pytest.mark.parametrize("bad", ["evil\x1b]0;pwned\x07", "line\nbreak", "nul\x00", "rtl\u202e"])
async def test_key_names_with_control_characters_are_refused(auth_app, bad):
    token = await signed_in(auth_app)
    response = await auth_app.client.post("/v1/api-keys", json={"name": bad}, headers=bearer(token))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "name"


def test_the_cli_escapes_control_characters_it_prints(settings, run_with_service, monkeypatch):
    from switchyard.auth.cli import keys_app, users_app

    async def store_raw(service: AuthService):
        user = await service.create_user(email="eve@example.com")
        issued = await service.create_api_key(user_id=user.id, name="plain")
        # Rows written before names were validated (or by another tool) may hold anything.
        from sqlalchemy import update

        from switchyard.auth.models import ApiKey, User

        async with service.sessions() as session:
            await session.execute(
                update(ApiKey).where(ApiKey.id == issued.record.id).values(name="x\x1b[2Jy")
            )
            await session.execute(
                update(User).where(User.id == user.id).values(email="eve\x1b]0;t\x07@example.com")
            )
            await session.commit()

    run_with_service(store_raw)
    monkeypatch.setenv("SWITCHYARD_AUTH_DATABASE_URL", settings.database_url)
    runner = CliRunner()
    keys = runner.invoke(keys_app, ["list"])
    users = runner.invoke(users_app, ["list"])

    assert keys.exit_code == 0 and users.exit_code == 0, keys.output + users.output
    for output in (keys.output, users.output):
        assert "\x1b" not in output and "\x07" not in output
    assert "x\\x1b[2Jy" in keys.output
    assert "eve\\x1b]0;t\\x07@example.com" in users.output


async def test_password_hashing_runs_off_the_event_loop_and_sheds_load(run_auth):
    loop_thread = threading.get_ident()
    release = threading.Event()
    hashing_threads: list[int] = []

    class BlockingHasher(PasswordHasher):
        def verify(self, password_hash, password):
            hashing_threads.append(threading.get_ident())
            release.wait(10)
            return super().verify(password_hash, password)

    hasher = BlockingHasher(profiles.CHEAPEST, workers=1, max_pending=1)
    async with run_auth(passwords=hasher) as auth_app:
        await auth_app.service.create_user(email="bob@example.com", password=PASSWORD)
        grant = {"grant_type": "password", "username": "bob@example.com", "password": PASSWORD}
        first = asyncio.create_task(auth_app.client.post("/v1/auth/token", json=grant))
        await async_wait_until(
            lambda: _now(bool(hashing_threads)), timeout=10, message="the hash to start"
        )
        # While that hash runs, the loop still answers, and a second sign-in is shed at once.
        live = await auth_app.client.get("/livez")
        shed = await auth_app.client.post("/v1/auth/token", json=grant)
        release.set()
        signed = await first

    assert live.status_code == 200
    assert shed.status_code == 429 and shed.headers["retry-after"] == "1"
    assert signed.status_code == 200
    assert hashing_threads and loop_thread not in hashing_threads


def test_a_revoked_dev_key_is_replaced_by_a_working_one(dev_env: Path, run_with_service):
    from switchyard.auth.dev import prepare_dev

    def printed(messages):
        return next(m for m in messages if m.startswith("API key: ")).removeprefix("API key: ")

    first = printed(prepare_dev().messages)

    async def revoke(service: AuthService):
        identity = await service.lookup_api_key(hash_api_key(first))
        await service.revoke_api_key(identity.key_id)

    run_with_service(revoke)
    second = printed(prepare_dev().messages)

    async def works(service: AuthService):
        return await service.lookup_api_key(hash_api_key(second))

    assert second != first
    assert run_with_service(works) is not None
    assert (dev_env / ".switchyard" / "dev-api-key").read_text().strip() == second


def test_a_revoked_configured_dev_key_is_reported_not_printed(
    dev_env: Path, run_with_service, monkeypatch
):
    from switchyard.auth.dev import prepare_dev

    chosen = "sk-sy-chosen-key-for-the-demo-0000000000000000000000"
    monkeypatch.setenv("SWITCHYARD_DEV_API_KEY", chosen)
    prepare_dev()

    async def revoke(service: AuthService):
        identity = await service.lookup_api_key(hash_api_key(chosen))
        await service.revoke_api_key(identity.key_id)

    run_with_service(revoke)
    messages = prepare_dev().messages
    assert not any(chosen in message for message in messages)
    assert any("No working development API key" in message for message in messages)


@pytest.mark.parametrize("environment", ["production", "test"])
def test_no_dev_key_is_created_or_printed_outside_development(
    dev_env: Path, run_with_service, monkeypatch, environment
):
    from switchyard.auth.dev import DEV_EMAIL, prepare_dev

    monkeypatch.setenv("SWITCHYARD_ENVIRONMENT", environment)
    messages = prepare_dev().messages

    async def dev_user(service: AuthService):
        try:
            return await service.user_by_email(DEV_EMAIL)
        except Exception:  # noqa: BLE001 - UserNotFound
            return None

    assert not any("sk-sy-" in message for message in messages)
    assert run_with_service(dev_user) is None
    assert not (dev_env / ".switchyard" / "dev-api-key").exists()


async def test_input_validation_of_the_service(service: AuthService):
    with pytest.raises(InvalidInput):
        await service.create_user(email="x\x1b@example.com")


async def _now(value):
    return value
