"""A NUL character (U+0000) in a body field of the admin and key APIs: PostgreSQL cannot
bind one into a text value, so each is refused with a 400 naming the field before the
database fails on it (SQLite, used here, would take it: these tests check the answer and
that nothing changed)."""

from __future__ import annotations

import pytest

from .test_admin_api import PASSWORD, assert_error, token_for

NUL_ID = "a\x00b"


@pytest.fixture
async def acme(auth_app):
    """A tenant with an admin and a member, the member in the team `research`."""
    service = auth_app.service
    await service.create_user(
        email="admin@acme.test", tenant="acme", role="admin", password=PASSWORD
    )
    member = await service.create_user(email="member@acme.test", tenant="acme", password=PASSWORD)
    admin_headers = await token_for(auth_app, "admin@acme.test")
    created = await auth_app.client.post(
        "/v1/admin/teams", json={"name": "research"}, headers=admin_headers
    )
    assert created.status_code == 201, created.text
    team_id = created.json()["id"]
    moved = await auth_app.client.patch(
        f"/v1/admin/users/{member.id}", json={"team_id": team_id}, headers=admin_headers
    )
    assert moved.status_code == 200, moved.text
    return {
        "member": member,
        "team_id": team_id,
        "admin_headers": admin_headers,
        "member_headers": await token_for(auth_app, "member@acme.test"),
    }


def assert_nul_refused(response, param: str) -> None:
    error = assert_error(response, 400, "invalid_request")
    assert error["param"] == param
    assert "NUL" in error["message"]


@pytest.mark.parametrize("field", ["user_id", "team_id"])
async def test_an_admin_made_key_naming_an_id_with_a_nul_is_400(auth_app, acme, field) -> None:
    body = {"user_id": acme["member"].id, "name": "k", field: NUL_ID}
    response = await auth_app.client.post(
        "/v1/admin/api-keys", json=body, headers=acme["admin_headers"]
    )
    assert_nul_refused(response, field)
    listed = await auth_app.client.get("/v1/api-keys", headers=acme["member_headers"])
    assert listed.json()["data"] == []


async def test_an_own_key_naming_a_team_with_a_nul_is_400(auth_app, acme) -> None:
    response = await auth_app.client.post(
        "/v1/api-keys", json={"name": "k", "team_id": NUL_ID}, headers=acme["member_headers"]
    )
    assert_nul_refused(response, "team_id")


async def test_moving_a_user_to_a_team_with_a_nul_is_400_and_keeps_their_team(
    auth_app, acme
) -> None:
    url = f"/v1/admin/users/{acme['member'].id}"
    response = await auth_app.client.patch(
        url, json={"team_id": NUL_ID}, headers=acme["admin_headers"]
    )
    assert_nul_refused(response, "team_id")
    user = await auth_app.service.user_by_id(acme["member"].id)
    assert user.team_id == acme["team_id"]


async def test_moving_a_key_to_a_team_with_a_nul_is_400(auth_app, acme) -> None:
    created = await auth_app.client.post(
        "/v1/api-keys", json={"name": "k"}, headers=acme["member_headers"]
    )
    assert created.status_code == 201, created.text
    response = await auth_app.client.patch(
        f"/v1/admin/api-keys/{created.json()['key_id']}",
        json={"team_id": NUL_ID},
        headers=acme["admin_headers"],
    )
    assert_nul_refused(response, "team_id")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "ops", "budget_period": "1d\x00"}, "budget_period"),
        ({"name": "ops", "allowed_models": ["gpt\x00"]}, "allowed_models"),
    ],
)
async def test_a_team_field_with_a_nul_is_400_naming_it(auth_app, acme, body, param) -> None:
    response = await auth_app.client.post(
        "/v1/admin/teams", json=body, headers=acme["admin_headers"]
    )
    assert_nul_refused(response, param)
