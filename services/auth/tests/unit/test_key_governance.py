"""What a member may do to their own keys against what admins decided: a member's key stays
in the member's team, and its limits only tighten; admins keep both powers on the admin
routes. Also: a client's bad input (scopes beyond a user's role, a team name with control
characters) is a 4xx in OpenAI's error format, never a 500."""

from __future__ import annotations

import pytest

from .test_admin_api import PASSWORD, assert_error, token_for
from .test_teams_and_limits import INTERNAL

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


# -- a member's key stays in the member's team -------------------------------------------


@pytest.mark.parametrize("team", [None, "sales", "no-such-team"])
async def test_a_member_cannot_create_a_key_outside_their_team(auth_app, acme, team) -> None:
    team_id = acme["teams"].get(team, team)
    refused = await auth_app.client.post(
        "/v1/api-keys", json={"name": "k", "team_id": team_id}, headers=acme["member_headers"]
    )
    error = assert_error(refused, 403, "admin_only")
    assert error["param"] == "team_id"
    listed = await auth_app.client.get("/v1/api-keys", headers=acme["member_headers"])
    assert listed.json()["data"] == []


async def test_a_members_key_is_in_their_team_when_omitted_or_named(auth_app, acme) -> None:
    research = acme["teams"]["research"]
    for body in ({"name": "a"}, {"name": "b", "team_id": research}):
        created = await auth_app.client.post(
            "/v1/api-keys", json=body, headers=acme["member_headers"]
        )
        assert created.status_code == 201, created.text
        assert created.json()["team_id"] == research
        assert await team_of_policy(auth_app, acme, created.json()["key_id"]) == research


@pytest.mark.parametrize("team", [None, "sales"])
async def test_a_member_cannot_move_their_key_out_of_their_team(auth_app, acme, team) -> None:
    key = await admin_made_key(auth_app, acme)
    refused = await auth_app.client.patch(
        f"/v1/api-keys/{key['key_id']}",
        json={"team_id": acme["teams"].get(team)},
        headers=acme["member_headers"],
    )
    assert assert_error(refused, 403, "admin_only")["param"] == "team_id"
    assert await team_of_policy(auth_app, acme, key["key_id"]) == acme["teams"]["research"]


async def test_an_admin_may_still_count_a_members_key_against_no_team(auth_app, acme) -> None:
    key = await admin_made_key(auth_app, acme)
    moved = await auth_app.client.patch(
        f"/v1/admin/api-keys/{key['key_id']}", json={"team_id": None}, headers=acme["admin_headers"]
    )
    assert moved.status_code == 200, moved.text
    assert await team_of_policy(auth_app, acme, key["key_id"]) is None
    # Sending the key's team as it is (a client echoing the key it read) changes nothing.
    same = await auth_app.client.patch(
        f"/v1/api-keys/{key['key_id']}",
        json={"team_id": None, "rpm_limit": 10},
        headers=acme["member_headers"],
    )
    assert same.status_code == 200, same.text
    assert await team_of_policy(auth_app, acme, key["key_id"]) is None
    # The member may put it back into their team (that tightens), not take it out again.
    back = await auth_app.client.patch(
        f"/v1/api-keys/{key['key_id']}",
        json={"team_id": acme["teams"]["research"]},
        headers=acme["member_headers"],
    )
    assert back.status_code == 200, back.text
    assert back.json()["team_id"] == acme["teams"]["research"]


# -- a member's limits only tighten --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_budget_usd": None, "budget_period": None, "rpm_limit": None}, "max_budget_usd"),
        ({"rpm_limit": None}, "rpm_limit"),
        # Removing the budget alone leaves its period without one: still a removal (403),
        # not a combination to correct (400).
        ({"max_budget_usd": None}, "max_budget_usd"),
        ({"rpm_limit": 61}, "rpm_limit"),
        ({"tpm_limit": None}, "tpm_limit"),
        ({"max_budget_usd": 100, "budget_period": "1d"}, "max_budget_usd"),
        ({"max_budget_usd": 50.01}, "max_budget_usd"),
        ({"budget_period": "1d"}, "budget_period"),
        ({"max_budget_usd": 10, "budget_period": "1d"}, "budget_period"),
        ({"budget_period": None}, "budget_period"),
    ],
)
async def test_a_member_cannot_loosen_their_keys_limits(auth_app, acme, body, param) -> None:
    key = await admin_made_key(auth_app, acme)
    refused = await auth_app.client.patch(
        f"/v1/api-keys/{key['key_id']}", json=body, headers=acme["member_headers"]
    )
    error = assert_error(refused, 403, "admin_only")
    assert error["param"] == param, error
    limits = (await key_view(auth_app, acme, key["key_id"]))["limits"]
    assert {name: limits[name] for name in ADMIN_SET} == ADMIN_SET


async def test_a_member_may_tighten_their_keys_limits(auth_app, acme) -> None:
    key = await admin_made_key(auth_app, acme)
    anchor = key["limits"]["budget_anchor_at"]
    tightened = await auth_app.client.patch(
        f"/v1/api-keys/{key['key_id']}",
        json={"max_budget_usd": 20, "rpm_limit": 30, "max_parallel_requests": 2},
        headers=acme["member_headers"],
    )
    assert tightened.status_code == 200, tightened.text
    limits = tightened.json()["limits"]
    assert (limits["max_budget_usd"], limits["budget_period"]) == (20, "30d")
    assert (limits["rpm_limit"], limits["tpm_limit"], limits["max_parallel_requests"]) == (
        30,
        10_000,
        2,
    )
    # A lower amount keeps the period the admin set, and its anchor.
    assert limits["budget_anchor_at"] == anchor
    # The same value again changes nothing and is not a loosening.
    same = await auth_app.client.patch(
        f"/v1/api-keys/{key['key_id']}", json={"rpm_limit": 30}, headers=acme["member_headers"]
    )
    assert same.status_code == 200, same.text


async def test_a_member_may_add_a_budget_where_none_is_set(auth_app, acme) -> None:
    key = await admin_made_key(auth_app, acme, rpm_limit=60)
    added = await auth_app.client.patch(
        f"/v1/api-keys/{key['key_id']}",
        json={"max_budget_usd": 5, "budget_period": "1d"},
        headers=acme["member_headers"],
    )
    assert added.status_code == 200, added.text
    assert (added.json()["limits"]["max_budget_usd"], added.json()["limits"]["budget_period"]) == (
        5,
        "1d",
    )


async def test_an_admin_may_still_raise_and_remove_a_members_key_limits(auth_app, acme) -> None:
    key = await admin_made_key(auth_app, acme)
    changed = await auth_app.client.patch(
        f"/v1/admin/api-keys/{key['key_id']}",
        json={"max_budget_usd": None, "budget_period": None, "rpm_limit": 90},
        headers=acme["admin_headers"],
    )
    assert changed.status_code == 200, changed.text
    limits = changed.json()["limits"]
    assert (limits["max_budget_usd"], limits["rpm_limit"]) == (None, 90)


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


@pytest.mark.parametrize("name", ["re\x00search", "re\nsearch", "\u202eresearch"])
async def test_a_team_name_with_control_characters_is_a_400_naming_it(auth_app, acme, name) -> None:
    created = await auth_app.client.post(
        "/v1/admin/teams", json={"name": name}, headers=acme["admin_headers"]
    )
    assert assert_error(created, 400, "invalid_request")["param"] == "name"
    renamed = await auth_app.client.patch(
        f"/v1/admin/teams/{acme['teams']['sales']}",
        json={"name": name},
        headers=acme["admin_headers"],
    )
    assert assert_error(renamed, 400, "invalid_request")["param"] == "name"
    listed = await auth_app.client.get("/v1/admin/teams", headers=acme["admin_headers"])
    assert sorted(team["name"] for team in listed.json()["data"]) == ["research", "sales"]


async def test_a_team_name_in_the_form_of_a_team_id_is_a_400_naming_it(auth_app, acme) -> None:
    """Teams are taken by id or by name, the id first: a team named with another team's id
    would make that string name the other team."""
    other = acme["teams"]["research"]
    for name in (other, other.upper(), "0" * 32):
        created = await auth_app.client.post(
            "/v1/admin/teams", json={"name": name}, headers=acme["admin_headers"]
        )
        error = assert_error(created, 400, "invalid_request")
        assert error["param"] == "name" and "team id" in error["message"]
        renamed = await auth_app.client.patch(
            f"/v1/admin/teams/{acme['teams']['sales']}",
            json={"name": name},
            headers=acme["admin_headers"],
        )
        assert assert_error(renamed, 400, "invalid_request")["param"] == "name"
    # A name of other lengths or letters is a name.
    made = await auth_app.client.post(
        "/v1/admin/teams", json={"name": "0" * 31 + "g"}, headers=acme["admin_headers"]
    )
    assert made.status_code == 201, made.text


async def test_a_user_whose_keys_exceed_a_teams_limits_moves_into_it_with_them(
    auth_app, acme
) -> None:
    # The team's limits hold for the keys from then on (each level is admitted against);
    # the keys' higher ones stay as they were, inert, as when a team's limits are lowered.
    key = await admin_made_key(auth_app, acme, rpm_limit=90)
    strict = await auth_app.client.post(
        "/v1/admin/teams", json={"name": "strict", "rpm_limit": 50}, headers=acme["admin_headers"]
    )
    assert strict.status_code == 201, strict.text
    moved = await auth_app.client.patch(
        f"/v1/admin/users/{acme['member'].id}",
        json={"team_id": strict.json()["id"]},
        headers=acme["admin_headers"],
    )
    assert moved.status_code == 200, moved.text
    assert await team_of_policy(auth_app, acme, key["key_id"]) == strict.json()["id"]
    assert (await key_view(auth_app, acme, key["key_id"]))["limits"]["rpm_limit"] == 90


async def test_a_users_team_sent_unchanged_leaves_their_keys_where_they_are(auth_app, acme) -> None:
    """An admin took a member's key out of the team (and gave it limits above the team's);
    a client echoing the user's unchanged team puts it back into no team's limits."""
    key = await admin_made_key(auth_app, acme)
    moved = await auth_app.client.patch(
        f"/v1/admin/api-keys/{key['key_id']}",
        json={"team_id": None, "rpm_limit": 500},
        headers=acme["admin_headers"],
    )
    assert moved.status_code == 200, moved.text

    echoed = await auth_app.client.patch(
        f"/v1/admin/users/{acme['member'].id}",
        json={"team_id": acme["teams"]["research"]},
        headers=acme["admin_headers"],
    )

    assert echoed.status_code == 200, echoed.text
    assert await team_of_policy(auth_app, acme, key["key_id"]) is None
