"""The admin API: only admins, only their own tenant, and another tenant's things are 404
(never 403), so their existence does not leak. Plus a user's own key management."""

from __future__ import annotations

import pytest

from switchyard.common.events import ApiKeyRevoked, TokenFamilyRevoked, UserDisabled

PASSWORD = "correct horse battery staple"


async def token_for(harness, email: str) -> dict[str, str]:
    response = await harness.client.post(
        "/v1/auth/token", json={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
async def people(auth_app):
    service = auth_app.service
    admin = await service.create_user(
        email="admin@acme.test", tenant="acme", role="admin", password=PASSWORD
    )
    member = await service.create_user(email="member@acme.test", tenant="acme", password=PASSWORD)
    stranger = await service.create_user(
        email="admin@globex.test", tenant="globex", role="admin", password=PASSWORD
    )
    return {"admin": admin, "member": member, "stranger": stranger}


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    return error


async def test_an_admin_creates_and_lists_users_of_their_tenant_only(auth_app, people) -> None:
    headers = await token_for(auth_app, "admin@acme.test")
    created = await auth_app.client.post(
        "/v1/admin/users",
        json={"email": "New@Acme.test", "role": "member", "password": "a long password"},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["email"] == "new@acme.test" and user["tenant"] == "acme"
    assert user["has_password"] is True and "password" not in created.text.replace(
        "has_password", ""
    )
    listed = await auth_app.client.get("/v1/admin/users", headers=headers)
    emails = {entry["email"] for entry in listed.json()["data"]}
    assert emails == {"admin@acme.test", "member@acme.test", "new@acme.test"}
    duplicate = await auth_app.client.post(
        "/v1/admin/users", json={"email": "new@acme.test"}, headers=headers
    )
    assert_error(duplicate, 409, "user_exists")


async def test_an_unknown_field_is_refused_not_dropped(auth_app, people) -> None:
    # A tenant is the caller's own: asking for another one must not quietly create the
    # user in the caller's.
    headers = await token_for(auth_app, "admin@acme.test")
    refused = await auth_app.client.post(
        "/v1/admin/users",
        json={"email": "other@acme.test", "tenant": "othertenant"},
        headers=headers,
    )
    error = assert_error(refused, 400)
    assert error["param"] == "tenant" and "tenant" in error["message"]
    listed = await auth_app.client.get("/v1/admin/users", headers=headers)
    assert "other@acme.test" not in {entry["email"] for entry in listed.json()["data"]}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/admin/api-keys?tenant=other",
        "/v1/admin/users?limit=1",
        "/v1/admin/teams?after=t1",
        "/v1/api-keys?user_id=u1",
        "/v1/me?verbose=1",
    ],
)
async def test_an_unknown_query_parameter_is_refused_not_ignored(auth_app, people, path) -> None:
    # An admin filtering by a parameter no route reads got the whole list, unfiltered.
    headers = await token_for(auth_app, "admin@acme.test")
    refused = await auth_app.client.get(path, headers=headers)
    error = assert_error(refused, 400, "unknown_parameter")
    assert error["param"] == path.split("?")[1].split("=")[0]
    assert (await auth_app.client.get(path.split("?")[0], headers=headers)).status_code == 200
    # Credentials are judged first: no token is 401, a member on an admin route 403.
    assert_error(await auth_app.client.get(path), 401)
    if path.startswith("/v1/admin"):
        member = await token_for(auth_app, "member@acme.test")
        assert_error(await auth_app.client.get(path, headers=member), 403)


async def test_members_get_403_on_every_admin_route(auth_app, people) -> None:
    headers = await token_for(auth_app, "member@acme.test")
    admin_id = people["admin"].id
    for method, path in (
        ("GET", "/v1/admin/users"),
        ("POST", "/v1/admin/users"),
        ("POST", f"/v1/admin/users/{admin_id}/disable"),
        ("POST", f"/v1/admin/users/{admin_id}/enable"),
        ("GET", "/v1/admin/api-keys"),
        ("DELETE", "/v1/admin/api-keys/anything"),
    ):
        kwargs = {"json": {"email": "x@y.z"}} if path == "/v1/admin/users" else {}
        response = await auth_app.client.request(method, path, headers=headers, **kwargs)
        error = assert_error(response, 403, "admin_required")
        assert error["type"] == "permission_error", (method, path)
    anonymous = await auth_app.client.get("/v1/admin/users")
    assert_error(anonymous, 401)


async def test_another_tenants_users_and_keys_are_404(auth_app, people) -> None:
    headers = await token_for(auth_app, "admin@acme.test")
    stranger = people["stranger"]
    foreign_key = await auth_app.service.create_api_key(user_id=stranger.id)
    for response in (
        await auth_app.client.post(f"/v1/admin/users/{stranger.id}/disable", headers=headers),
        await auth_app.client.post("/v1/admin/users/no-such-user/disable", headers=headers),
        await auth_app.client.delete(
            f"/v1/admin/api-keys/{foreign_key.record.id}", headers=headers
        ),
        await auth_app.client.delete("/v1/admin/api-keys/no-such-key", headers=headers),
    ):
        assert_error(response, 404)
    # The foreign key and user are untouched.
    assert (await auth_app.service.active_user(stranger.id)) is not None
    keys = await auth_app.service.list_api_keys(user_id=stranger.id)
    assert keys[0].revoked_at is None
    listed = await auth_app.client.get("/v1/admin/api-keys", headers=headers)
    assert all(key["tenant"] == "acme" for key in listed.json()["data"])


async def test_disabling_a_user_ends_their_sign_ins_and_tells_every_gateway(
    auth_app, people
) -> None:
    member_headers = await token_for(auth_app, "member@acme.test")
    headers = await token_for(auth_app, "admin@acme.test")
    member = people["member"]
    response = await auth_app.client.post(f"/v1/admin/users/{member.id}/disable", headers=headers)
    assert response.status_code == 200 and response.json()["disabled"] is True
    event = await auth_app.wait_for_event("auth.user_disabled")
    assert isinstance(event, UserDisabled) and event.data.user_id == member.id
    assert event.tenant == "acme"
    family = await auth_app.wait_for_event("auth.token_family_revoked")
    assert isinstance(family, TokenFamilyRevoked) and family.data.reason == "user_disabled"
    assert (await auth_app.client.get("/v1/api-keys", headers=member_headers)).status_code == 401

    enabled = await auth_app.client.post(f"/v1/admin/users/{member.id}/enable", headers=headers)
    assert enabled.status_code == 200 and enabled.json()["disabled"] is False
    await auth_app.wait_for_event("auth.user_enabled")
    # Old sign-ins stay ended: the member signs in again.
    assert (await auth_app.client.get("/v1/api-keys", headers=member_headers)).status_code == 401
    fresh = await token_for(auth_app, "member@acme.test")
    assert (await auth_app.client.get("/v1/api-keys", headers=fresh)).status_code == 200


async def test_an_admin_cannot_disable_themselves(auth_app, people) -> None:
    headers = await token_for(auth_app, "admin@acme.test")
    response = await auth_app.client.post(
        f"/v1/admin/users/{people['admin'].id}/disable", headers=headers
    )
    assert_error(response, 400)


async def test_an_admin_lists_and_revokes_any_key_of_the_tenant(auth_app, people) -> None:
    headers = await token_for(auth_app, "admin@acme.test")
    issued = await auth_app.service.create_api_key(user_id=people["member"].id, name="ci")
    listed = await auth_app.client.get(
        "/v1/admin/api-keys", params={"user_id": people["member"].id}, headers=headers
    )
    (entry,) = listed.json()["data"]
    assert entry["key_id"] == issued.record.id and entry["status"] == "active"
    assert entry["prefix"] == issued.key[:12]
    assert issued.key not in listed.text and "secret_hash" not in listed.text

    revoked = await auth_app.client.delete(
        f"/v1/admin/api-keys/{issued.record.id}", headers=headers
    )
    assert revoked.status_code == 204
    event = await auth_app.wait_for_event("auth.api_key_revoked")
    assert isinstance(event, ApiKeyRevoked)
    assert (event.data.key_id, event.data.user_id, event.data.reason) == (
        issued.record.id,
        people["member"].id,
        "admin",
    )
    assert issued.key not in event.model_dump_json()
    listed = await auth_app.client.get("/v1/admin/api-keys", headers=headers)
    assert listed.json()["data"][0]["status"] == "revoked"
    # Revoking again is harmless and publishes nothing new.
    again = await auth_app.client.delete(f"/v1/admin/api-keys/{issued.record.id}", headers=headers)
    assert again.status_code == 204
    assert [e.type for e in auth_app.events].count("auth.api_key_revoked") == 1


async def test_users_list_and_revoke_their_own_keys_only(auth_app, people) -> None:
    headers = await token_for(auth_app, "member@acme.test")
    created = await auth_app.client.post("/v1/api-keys", json={"name": "laptop"}, headers=headers)
    key_id = created.json()["key_id"]
    other = await auth_app.service.create_api_key(user_id=people["admin"].id)

    mine = await auth_app.client.get("/v1/api-keys", headers=headers)
    assert [key["key_id"] for key in mine.json()["data"]] == [key_id]
    assert created.json()["key"] not in mine.text

    not_mine = await auth_app.client.delete(f"/v1/api-keys/{other.record.id}", headers=headers)
    assert_error(not_mine, 404, "api_key_not_found")
    response = await auth_app.client.delete(f"/v1/api-keys/{key_id}", headers=headers)
    assert response.status_code == 204
    event = await auth_app.wait_for_event("auth.api_key_revoked")
    assert event.data.key_id == key_id and event.data.reason == "owner"
    # A revoked key authenticates nothing: changing its limits is refused, not recorded.
    changed = await auth_app.client.patch(
        f"/v1/api-keys/{key_id}", json={"rpm_limit": 5}, headers=headers
    )
    assert_error(changed, 409, "api_key_revoked")
    admin = await token_for(auth_app, "admin@acme.test")
    by_admin = await auth_app.client.patch(
        f"/v1/admin/api-keys/{key_id}", json={"rpm_limit": 5}, headers=admin
    )
    assert_error(by_admin, 409, "api_key_revoked")


async def narrowed_token(
    harness, email: str, scopes: list[str], models: list[str] | None = None
) -> dict[str, str]:
    """An access token of the user narrowed to `scopes` (and `models`), as `switchyard
    tokens create --scopes ... --allowed-models ...` issues it."""
    user = await harness.service.user_by_email(email)
    token = harness.service.issue_access_token(user, scopes=scopes, allowed_models=models)
    return {"Authorization": f"Bearer {token.token}"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/admin/users", None),
        ("POST", "/v1/admin/users", {"email": "boss@acme.test", "role": "admin"}),
        ("GET", "/v1/admin/teams", None),
        ("POST", "/v1/admin/teams", {"name": "t"}),
        ("GET", "/v1/admin/api-keys", None),
        ("GET", "/v1/admin/tenant", None),
    ],
)
async def test_an_admins_token_narrowed_to_chat_has_no_admin_powers(
    auth_app, people, method, path, body
) -> None:
    headers = await narrowed_token(auth_app, "admin@acme.test", ["chat"])
    response = await auth_app.client.request(method, path, json=body, headers=headers)
    assert_error(response, 403, "insufficient_scope")
    # The same admin signed in with the admin scope may.
    full = await auth_app.client.request(
        method, path, json=body, headers=await token_for(auth_app, "admin@acme.test")
    )
    assert full.status_code in (200, 201), full.text


async def test_a_key_an_admin_creates_holds_no_more_than_the_creating_token(
    auth_app, people
) -> None:
    headers = await narrowed_token(
        auth_app, "admin@acme.test", ["admin", "chat"], models=["sim-small"]
    )
    body = {"user_id": people["admin"].id, "name": "minted"}
    wider = await auth_app.client.post(
        "/v1/admin/api-keys",
        json={**body, "scopes": ["chat", "history:read", "history:write", "admin"]},
        headers=headers,
    )
    assert_error(wider, 403, "insufficient_scope")
    other_models = await auth_app.client.post(
        "/v1/admin/api-keys", json={**body, "allowed_models": ["sim-large"]}, headers=headers
    )
    assert_error(other_models, 403, "insufficient_scope")
    created = await auth_app.client.post("/v1/admin/api-keys", json=body, headers=headers)
    assert created.status_code == 201, created.text
    key = created.json()
    assert set(key["scopes"]) <= {"admin", "chat"}
    assert key["allowed_models"] == ["sim-small"]


async def test_an_admins_narrowed_token_is_bound_as_a_member_on_its_own_keys(
    auth_app, people
) -> None:
    full = await token_for(auth_app, "admin@acme.test")
    team = await auth_app.client.post("/v1/admin/teams", json={"name": "blue"}, headers=full)
    assert team.status_code == 201, team.text
    narrowed = await narrowed_token(auth_app, "admin@acme.test", ["chat", "keys:write"])
    # Putting a key in a team, or taking it out of one, is an admin's power.
    elsewhere = await auth_app.client.post(
        "/v1/api-keys", json={"name": "k", "team_id": team.json()["id"]}, headers=narrowed
    )
    assert_error(elsewhere, 403, "admin_only")
    # So is removing a limit.
    key = await auth_app.client.post(
        "/v1/api-keys", json={"name": "limited", "rpm_limit": 5}, headers=narrowed
    )
    assert key.status_code == 201, key.text
    lifted = await auth_app.client.patch(
        f"/v1/api-keys/{key.json()['key_id']}", json={"rpm_limit": None}, headers=narrowed
    )
    assert_error(lifted, 403, "admin_only")
    # The admin's own full token may do both.
    allowed = await auth_app.client.patch(
        f"/v1/api-keys/{key.json()['key_id']}", json={"rpm_limit": None}, headers=full
    )
    assert allowed.status_code == 200, allowed.text


async def test_an_admin_sets_a_members_password_ending_their_sign_ins(auth_app, people) -> None:
    admin = await token_for(auth_app, "admin@acme.test")
    member_sign_in = await auth_app.client.post(
        "/v1/auth/token",
        json={"grant_type": "password", "username": "member@acme.test", "password": PASSWORD},
    )
    member_id = people["member"].id

    changed = await auth_app.client.post(
        f"/v1/admin/users/{member_id}/password",
        json={"password": "a reset passphrase"},
        headers=admin,
    )

    assert changed.status_code == 200, changed.text
    assert changed.json()["id"] == member_id and "password" not in changed.text.lower().replace(
        "has_password", ""
    )
    refreshed = await auth_app.client.post(
        "/v1/auth/refresh", json={"refresh_token": member_sign_in.json()["refresh_token"]}
    )
    assert refreshed.status_code == 401
    event = await auth_app.wait_for_event("auth.token_family_revoked")
    assert isinstance(event, TokenFamilyRevoked) and event.data.user_id == member_id
    signed_in = await auth_app.client.post(
        "/v1/auth/token",
        json={
            "grant_type": "password",
            "username": "member@acme.test",
            "password": "a reset passphrase",
        },
    )
    assert signed_in.status_code == 200


async def test_only_an_admin_of_the_users_tenant_sets_a_password(auth_app, people) -> None:
    body = {"password": "a reset passphrase"}
    member = await token_for(auth_app, "member@acme.test")
    stranger = await token_for(auth_app, "admin@globex.test")
    admin = await token_for(auth_app, "admin@acme.test")
    path = f"/v1/admin/users/{people['member'].id}/password"

    assert_error(await auth_app.client.post(path, json=body, headers=member), 403)
    assert_error(await auth_app.client.post(path, json=body, headers=stranger), 404)
    assert_error(await auth_app.client.post(path, json={"password": "short"}, headers=admin), 400)
    assert_error(
        await auth_app.client.post(
            "/v1/admin/users/no-such-user/password", json=body, headers=admin
        ),
        404,
        "user_not_found",
    )
    # An admin's own needs the current one (a stolen token must not take the account).
    own = await auth_app.client.post(
        f"/v1/admin/users/{people['admin'].id}/password", json=body, headers=admin
    )
    assert "/v1/auth/password" in assert_error(own, 400, "invalid_request")["message"]
    # Nothing changed: both still sign in with the old password.
    assert (await token_for(auth_app, "member@acme.test"))["Authorization"]
    assert (await token_for(auth_app, "admin@acme.test"))["Authorization"]
