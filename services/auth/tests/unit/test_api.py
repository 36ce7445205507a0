"""The HTTP API as clients and the gateway see it."""

from __future__ import annotations

import jwt
import pytest
from fastapi.testclient import TestClient

from switchyard.auth.app import create_app
from switchyard.auth.config import Settings
from switchyard.auth.keys import hash_api_key
from switchyard.auth.service import AuthService
from switchyard.common.testing.infra import ready

PASSWORD = "correct horse battery staple"


@pytest.fixture
def internal(settings: Settings) -> dict[str, str]:
    return {"x-switchyard-internal-token": settings.internal_token}


@pytest.fixture
def create_user(run_with_service):
    def create_user(email: str = "alice@example.com", **fields):
        async def create(service: AuthService):
            return await service.create_user(email=email, password=PASSWORD, **fields)

        return run_with_service(create)

    return create_user


def assert_error(response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert error["message"]
    return error


def password_token(client: TestClient, email: str = "alice@example.com") -> str:
    response = client.post(
        "/v1/auth/token", json={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def test_json_password_grant_issues_a_token_the_jwks_verifies(
    client: TestClient, create_user
) -> None:
    user = create_user(tenant="acme", role="admin")
    response = client.post(
        "/v1/auth/token",
        json={"grant_type": "password", "username": "Alice@Example.com", "password": PASSWORD},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 900

    jwks = client.get("/.well-known/jwks.json").json()
    kid = jwt.get_unverified_header(body["access_token"])["kid"]
    (jwk,) = [key for key in jwks["keys"] if key["kid"] == kid]
    claims = jwt.decode(
        body["access_token"],
        jwt.PyJWK(jwk).key,
        algorithms=["RS256"],
        audience="switchyard",
        issuer="switchyard-auth",
    )
    assert (claims["sub"], claims["tenant"], claims["role"]) == (user.id, "acme", "admin")


def test_form_encoded_password_grant_works_like_oauth2_clients_send_it(
    client: TestClient, create_user
) -> None:
    create_user()
    response = client.post(
        "/v1/auth/token",
        data={
            "grant_type": "password",
            "username": "alice@example.com",
            "password": PASSWORD,
            "client_id": "cli",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["access_token"].count(".") == 2


def test_wrong_password_and_unknown_email_get_the_same_401(client: TestClient, create_user) -> None:
    create_user()
    wrong = client.post(
        "/v1/auth/token",
        json={"grant_type": "password", "username": "alice@example.com", "password": "guess-1"},
    )
    unknown = client.post(
        "/v1/auth/token",
        json={"grant_type": "password", "username": "nobody@example.com", "password": "guess-2"},
    )
    for response, password in ((wrong, "guess-1"), (unknown, "guess-2")):
        assert_error(response, 401, "invalid_request_error")
        assert password not in response.text
        assert response.headers["www-authenticate"] == "Bearer"
    assert wrong.json() == unknown.json()


def test_a_disabled_user_cannot_sign_in(client: TestClient, create_user, run_with_service) -> None:
    user = create_user()
    token_from_before = password_token(client)

    async def disable(service: AuthService) -> None:
        await service.set_disabled(user.id, True)

    run_with_service(disable)
    response = client.post(
        "/v1/auth/token",
        json={"grant_type": "password", "username": "alice@example.com", "password": PASSWORD},
    )
    error = assert_error(response, 401, "invalid_request_error")
    assert error["message"] == "Incorrect email or password."
    # A token issued before the user was disabled no longer creates keys.
    refused = client.post(
        "/v1/api-keys", json={}, headers={"Authorization": f"Bearer {token_from_before}"}
    )
    assert_error(refused, 401, "invalid_request_error")


@pytest.mark.parametrize(
    ("request_kwargs", "param", "message_part", "code"),
    [
        (
            {"json": {"grant_type": "password", "username": "a@b.c"}},
            "password",
            "required",
            "invalid_request",
        ),
        (
            {"json": {"grant_type": "password", "username": 42, "password": "x"}},
            "username",
            "string",
            "invalid_request",
        ),
        (
            {
                "content": b'{"grant_type": "password", "username":',
                "headers": {"content-type": "application/json"},
            },
            None,
            "not valid JSON",
            "invalid_json",
        ),
        ({"json": ["grant_type", "password"]}, None, "must be a JSON object", "invalid_json"),
        (
            {"data": {"grant_type": "password", "password": "x"}},
            "username",
            "required",
            "invalid_request",
        ),
        (
            {"json": {"grant_type": "client_credentials", "username": "a", "password": "b"}},
            "grant_type",
            "Unsupported grant_type",
            "unsupported_grant_type",
        ),
        (
            {"json": {"email": "a@b.c", "password": "x"}},
            "username",
            "takes the email as 'username'",
            "invalid_request",
        ),
        (
            {"json": {"username": "a@b.c", "password": "x"}},
            "grant_type",
            "Missing 'grant_type'",
            "invalid_request",
        ),
    ],
    ids=[
        "missing-field",
        "wrong-type",
        "malformed-json",
        "not-an-object",
        "form-missing",
        "grant",
        "email-for-username",
        "no-grant-type",
    ],
)
def test_bad_token_requests_get_400_naming_the_problem(
    client: TestClient, request_kwargs: dict, param: str | None, message_part: str, code: str
) -> None:
    response = client.post("/v1/auth/token", **request_kwargs)
    error = assert_error(response, 400, "invalid_request_error")
    assert error["param"] == param
    assert message_part in error["message"]
    # The codes every service answers with: invalid_json as on the gateway's model routes.
    assert error["code"] == code
    assert "PasswordGrant" not in error["message"]


@pytest.mark.parametrize("body", [b"{bad", b"[1, 2]", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_invalid_json_on_every_route(
    client: TestClient, create_user, body: bytes
) -> None:
    create_user()
    headers = {
        "content-type": "application/json",
        "Authorization": f"Bearer {password_token(client)}",
    }
    for path in ("/v1/auth/token", "/v1/auth/refresh", "/v1/auth/logout", "/v1/api-keys"):
        response = client.post(path, content=body, headers=headers)
        error = assert_error(response, 400, "invalid_request_error")
        assert error["code"] == "invalid_json", (path, error)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "text/plain; charset=utf-8", "application/xml"]
)
def test_a_json_object_sent_as_another_media_type_is_told_to_send_json(
    client: TestClient, create_user, content_type: str
) -> None:
    # It was answered "must be a JSON object", which it is.
    create_user()
    headers = {
        "content-type": content_type,
        "Authorization": f"Bearer {password_token(client)}",
    }
    for path, body in (("/v1/api-keys", b'{"name": "ci"}'),):
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == 415, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "unsupported_media_type"
        assert "application/json" in error["message"]
        assert content_type.split(";")[0] in error["message"]


def test_an_empty_body_is_invalid_json_where_a_body_is_required(
    client: TestClient, create_user
) -> None:
    create_user()
    headers = {
        "content-type": "application/json",
        "Authorization": f"Bearer {password_token(client)}",
    }
    for path in ("/v1/auth/token", "/v1/auth/refresh", "/v1/api-keys"):
        response = client.post(path, content=b"", headers=headers)
        error = assert_error(response, 400, "invalid_request_error")
        assert error["code"] == "invalid_json", (path, error)
        assert "empty" in error["message"]


def test_validation_errors_never_echo_the_password(client: TestClient) -> None:
    secret = "p" * 2000  # too long: rejected by validation
    response = client.post(
        "/v1/auth/token", json={"grant_type": "password", "username": "a@b.c", "password": secret}
    )
    assert_error(response, 400, "invalid_request_error")
    assert "ppppp" not in response.text


def test_internal_lookup_requires_the_internal_token(
    client: TestClient, internal: dict[str, str]
) -> None:
    body = {"secret_hash": "0" * 64}
    missing = client.post("/internal/v1/api-keys/lookup", json=body)
    wrong = client.post(
        "/internal/v1/api-keys/lookup",
        json=body,
        headers={"x-switchyard-internal-token": "guess"},
    )
    for response in (missing, wrong):
        assert_error(response, 401, "invalid_request_error")
    assert_error(
        client.post("/internal/v1/api-keys/lookup", json=body, headers=internal),
        404,
        "invalid_request_error",
    )


def test_internal_lookup_resolves_a_key_and_hides_revoked_ones(
    client: TestClient, create_user, run_with_service, internal: dict[str, str]
) -> None:
    user = create_user(tenant="acme")

    async def make_keys(service: AuthService):
        live = await service.create_api_key(user_id=user.id, name="live", allowed_models=["m1"])
        dead = await service.create_api_key(user_id=user.id, name="dead")
        await service.revoke_api_key(dead.record.id)
        return live, dead

    live, dead = run_with_service(make_keys)
    response = client.post(
        "/internal/v1/api-keys/lookup",
        json={"secret_hash": hash_api_key(live.key)},
        headers=internal,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "key_id": live.record.id,
        "user_id": user.id,
        "tenant": "acme",
        "role": "member",
        "scopes": ["chat", "history:read"],
        "allowed_models": ["m1"],
        "expires_at": None,
        "team_id": None,
    }
    revoked = client.post(
        "/internal/v1/api-keys/lookup",
        json={"secret_hash": hash_api_key(dead.key)},
        headers=internal,
    )
    assert_error(revoked, 404, "invalid_request_error")
    malformed = client.post(
        "/internal/v1/api-keys/lookup", json={"secret_hash": live.key}, headers=internal
    )
    assert assert_error(malformed, 400, "invalid_request_error")["param"] == "secret_hash"


def test_a_signed_in_user_creates_a_key_that_the_gateway_can_resolve(
    client: TestClient, create_user, internal: dict[str, str]
) -> None:
    user = create_user()
    token = password_token(client)
    response = client.post(
        "/v1/api-keys",
        json={"name": "laptop", "scopes": ["chat"], "expires_in_days": 7},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["key"].startswith("sk-sy-") and created["prefix"] == created["key"][:12]
    assert created["scopes"] == ["chat"] and created["expires_at"] is not None

    lookup = client.post(
        "/internal/v1/api-keys/lookup",
        json={"secret_hash": hash_api_key(created["key"])},
        headers=internal,
    )
    assert lookup.status_code == 200
    assert lookup.json()["user_id"] == user.id and lookup.json()["key_id"] == created["key_id"]


def test_creating_a_key_needs_a_valid_access_token(client: TestClient, create_user) -> None:
    create_user()
    no_token = client.post("/v1/api-keys", json={})
    assert assert_error(no_token, 401, "invalid_request_error")["code"] == "missing_token"
    garbage = client.post("/v1/api-keys", json={}, headers={"Authorization": "Bearer abc.def.ghi"})
    assert assert_error(garbage, 401, "invalid_request_error")["code"] == "invalid_token"
    # An API key where an access token is needed is told so, not called invalid.
    key = client.get("/v1/me", headers={"Authorization": "Bearer sk-sy-" + "a" * 43})
    error = assert_error(key, 401, "invalid_request_error")
    assert error["code"] == "invalid_token" and "not an API key" in error["message"]
    token = password_token(client)
    bad_scope = client.post(
        "/v1/api-keys", json={"scopes": ["root"]}, headers={"Authorization": f"Bearer {token}"}
    )
    assert "Unknown scope" in assert_error(bad_scope, 400, "invalid_request_error")["message"]
    bad_type = client.post(
        "/v1/api-keys",
        json={"expires_in_days": "soon"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert assert_error(bad_type, 400, "invalid_request_error")["param"] == "expires_in_days"


def test_operations_routes(client: TestClient) -> None:
    ready_answer = ready(lambda: client.get("/readyz"))
    assert ready_answer.json()["checks"] == {"database": True}
    client.post(
        "/v1/auth/token", json={"grant_type": "password", "username": "x@y.z", "password": "p"}
    )
    metrics = client.get("/metrics").text
    assert 'switchyard_auth_token_requests_total{outcome="invalid_credentials"}' in metrics
    openapi = client.get("/openapi.json").json()
    content = openapi["paths"]["/v1/auth/token"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-www-form-urlencoded"} <= set(content)


def test_reads_answer_while_another_connection_writes(
    client: TestClient, create_user, run_with_service, internal: dict[str, str], tmp_path
) -> None:
    """The readiness probe, a gateway's key lookup and revocation snapshot, and a caller's
    own reads (the token check, `/v1/me`, its keys) read without SQLite's write lock: a
    write in progress (the outbox relay's, or another process's held longer than a probe's
    2 s) does not keep them waiting up to SQLite's 15 s busy timeout (the probe answering
    503 meanwhile), nor do they hold writes up."""
    import sqlite3
    import time

    user = create_user()
    issued = run_with_service(lambda service: service.create_api_key(user_id=user.id, name="k"))
    bearer = {"Authorization": f"Bearer {password_token(client)}"}
    reads = [
        lambda: client.get("/readyz"),
        lambda: client.post(
            "/internal/v1/api-keys/lookup",
            json={"secret_hash": hash_api_key(issued.key)},
            headers=internal,
        ),
        lambda: client.get("/internal/v1/revocations", headers=internal),
        lambda: client.get("/v1/me", headers=bearer),
        lambda: client.get("/v1/api-keys", headers=bearer),
    ]
    holder = sqlite3.connect(tmp_path / "auth.db", timeout=30, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        answers = []
        for read in reads:
            started = time.monotonic()
            answers.append((read(), time.monotonic() - started))
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    for answer, elapsed in answers:
        assert answer.status_code == 200, (answer.request.url, answer.text)
        assert elapsed < 2.0, answer.request.url
    assert answers[1][0].json()["key_id"] == issued.record.id


def test_readiness_fails_when_the_database_is_unreachable(settings: Settings) -> None:
    # Nothing listens on port 1, so the SELECT 1 readiness check cannot succeed.
    unreachable = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    broken = settings.model_copy(update={"database_url": unreachable})
    with TestClient(create_app(broken)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"] == {"database": False}


def test_readiness_fails_while_the_schema_is_behind_this_version(
    settings: Settings, tmp_path
) -> None:
    """A database the previous version migrated (`switchyard db upgrade` not run yet): the
    replica stays out of service rather than answering 500s on the missing column."""
    from switchyard.auth.plugin import MIGRATIONS_DIR
    from switchyard.common.db import upgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'behind.db'}"
    upgrade(str(MIGRATIONS_DIR), url, "alembic_version_auth", "0003")
    behind = settings.model_copy(update={"database_url": url})
    with TestClient(create_app(behind)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"] == {"database": False}
    upgrade(str(MIGRATIONS_DIR), url, "alembic_version_auth")
    with TestClient(create_app(behind)) as client:
        ready(lambda: client.get("/readyz"))


def test_internal_key_by_id_tells_the_state_of_any_key_and_needs_the_internal_token(
    client: TestClient, create_user, run_with_service, internal: dict[str, str]
) -> None:
    user = create_user(tenant="acme")

    async def make_keys(service: AuthService):
        live = await service.create_api_key(user_id=user.id, name="live", allowed_models=["m1"])
        dead = await service.create_api_key(user_id=user.id, name="dead")
        await service.revoke_api_key(dead.record.id)
        return live, dead

    live, dead = run_with_service(make_keys)
    response = client.get(f"/internal/v1/api-keys/{live.record.id}", headers=internal)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "key_id": live.record.id,
        "user_id": user.id,
        "tenant": "acme",
        "role": "member",
        "scopes": ["chat", "history:read"],
        "allowed_models": ["m1"],
        "expires_at": None,
        "team_id": None,
        "revoked": False,
        "user_active": True,
    }
    revoked = client.get(f"/internal/v1/api-keys/{dead.record.id}", headers=internal)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked"] is True

    run_with_service(lambda service: service.set_disabled(user.id, True))
    disabled = client.get(f"/internal/v1/api-keys/{live.record.id}", headers=internal)
    assert disabled.json()["user_active"] is False

    unknown = client.get("/internal/v1/api-keys/no-such-key", headers=internal)
    assert assert_error(unknown, 404, "invalid_request_error")["code"] == "api_key_not_found"
    for headers in ({}, {"x-switchyard-internal-token": "guess"}):
        outsider = client.get(f"/internal/v1/api-keys/{live.record.id}", headers=headers)
        assert_error(outsider, 401, "invalid_request_error")
        assert live.record.id not in outsider.text
