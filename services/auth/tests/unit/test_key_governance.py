"""What a member may do to their own keys against what admins decided: a member's key stays
in the member's team, and its limits only tighten; admins keep both powers on the admin
routes. Also: every key route answers a client's bad scopes in OpenAI's error format."""

from __future__ import annotations

import pytest

from .test_admin_api import PASSWORD, assert_error, token_for

INTERNAL = {"x-switchyard-internal-token": "test-internal-token"}
ADMIN_SET = {"max_budget_usd": 50, "budget_period": "30d", "rpm_limit": 60, "tpm_limit": 10_000}


@pytest.fixture
async def acme(auth_app):
    """A tenant with an admin and a member of the team `research`, which has limits."""
    service = auth_app.service
    admin = await service.create_user(
        email="admin@acme.test", tenant="acme", role="admin", password=PASSWORD
    )
    member = await service.create_user(email="member@acme.test", tenant="acme", password=PASSWORD)
    admin_headers = await token_for(auth_app, "admin@acme.test")
    teams = {}
    for name in ("research", "sales"):
        created = await auth_app.client.post(
            "/v1/admin/teams",
            json={"name": name, "rpm_limit": 100, "max_budget_usd": 80, "budget_period": "30d"},
            headers=admin_headers,
        )
        assert created.status_code == 201, created.text
        teams[name] = created.json()["id"]
    moved = await auth_app.client.patch(
        f"/v1/admin/users/{member.id}", json={"team_id": teams["research"]}, headers=admin_headers
    )
    assert moved.status_code == 200, moved.text
    return {
        "admin": admin,
        "member": member,
        "teams": teams,
        "admin_headers": admin_headers,
        "member_headers": await token_for(auth_app, "member@acme.test"),
    }


async def admin_made_key(auth_app, acme, **limits) -> dict:
    """A key of the member that an admin created, with `limits` (ADMIN_SET by default)."""
    created = await auth_app.client.post(
        "/v1/admin/api-keys",
        json={"user_id": acme["member"].id, **(limits or ADMIN_SET)},
        headers=acme["admin_headers"],
    )
    assert created.status_code == 201, created.text
    return created.json()


async def key_view(auth_app, acme, key_id: str) -> dict:
    listed = await auth_app.client.get("/v1/api-keys", headers=acme["member_headers"])
    return next(key for key in listed.json()["data"] if key["key_id"] == key_id)


async def team_of_policy(auth_app, acme, key_id: str) -> str | None:
    policy = await auth_app.client.get(
        "/internal/v1/policy",
        params={"user_id": acme["member"].id, "key_id": key_id},
        headers=INTERNAL,
    )
    assert policy.status_code == 200, policy.text
    return policy.json()["team_id"]


# -- scopes beyond the owner's role are a 403, never a 500 ---------------------------------


async def test_an_admin_creating_a_key_beyond_its_users_role_gets_insufficient_scope(
    auth_app, acme
) -> None:
    refused = await auth_app.client.post(
        "/v1/admin/api-keys",
        json={"user_id": acme["member"].id, "scopes": ["admin", "history:write", "chat"]},
        headers=acme["admin_headers"],
    )
    error = assert_error(refused, 403, "insufficient_scope")
    assert error["param"] == "scopes" and "admin" in error["message"]
    listed = await auth_app.client.get(
        "/v1/admin/api-keys", params={"user_id": acme["member"].id}, headers=acme["admin_headers"]
    )
    assert listed.json()["data"] == []
