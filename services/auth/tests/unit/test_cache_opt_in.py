"""The response cache opt-in of teams and API keys: set by tenant admins through the admin
API and by operators through the CLI, refused with a clear error for bad values, unknown or
foreign keys and teams and non-admins, and handed to gateways with the policy."""

from __future__ import annotations

import pytest

from switchyard.common.events import LimitsChanged

from .test_admin_api import assert_error
from .test_teams_and_limits import INTERNAL, acme, make_team  # noqa: F401

pytestmark = pytest.mark.usefixtures("acme")


async def admin_key(auth_app, acme, **body) -> dict:  # noqa: F811
    created = await auth_app.client.post(
        "/v1/admin/api-keys",
        json={"user_id": acme["member"].id, **body},
        headers=acme["admin_headers"],
    )
    assert created.status_code == 201, created.text
    return created.json()


async def policy_of(auth_app, user_id: str, key_id: str) -> dict:
    response = await auth_app.client.get(
        "/internal/v1/policy", params={"user_id": user_id, "key_id": key_id}, headers=INTERNAL
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_an_admin_opts_a_key_and_a_team_in_and_gateways_receive_it_with_the_policy(
    auth_app,
    acme,  # noqa: F811
) -> None:
    team = await make_team(auth_app, acme)
    assert team["cache"] == {"cache_enabled": None, "cache_ttl_s": None}
    moved = await auth_app.client.patch(
        f"/v1/admin/users/{acme['member'].id}",
        json={"team_id": team["id"]},
        headers=acme["admin_headers"],
    )
    assert moved.status_code == 200, moved.text
    key = await admin_key(auth_app, acme)
    auth_app.events.clear()

    patched = await auth_app.client.patch(
        f"/v1/admin/api-keys/{key['key_id']}",
        json={"cache_enabled": True, "cache_ttl_s": 600},
        headers=acme["admin_headers"],
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["cache"] == {"cache_enabled": True, "cache_ttl_s": 600}
    # Gateways drop their cached policy of the key when they hear of the change.
    # The team's own change may be heard after the clear: the key's is the one awaited.
    event = await auth_app.wait_for_event(
        "auth.limits_changed", match=lambda event: event.data.scope == "api_key"
    )
    assert isinstance(event, LimitsChanged)
    assert (event.data.scope, event.data.scope_id) == ("api_key", key["key_id"])

    team_patch = await auth_app.client.patch(
        f"/v1/admin/teams/{team['id']}",
        json={"cache_enabled": False},
        headers=acme["admin_headers"],
    )
    assert team_patch.status_code == 200, team_patch.text
    assert team_patch.json()["cache"] == {"cache_enabled": False, "cache_ttl_s": None}

    levels = (await policy_of(auth_app, acme["member"].id, key["key_id"]))["levels"]
    assert (levels["api_key"]["cache_enabled"], levels["api_key"]["cache_ttl_s"]) == (True, 600)
    assert (levels["team"]["cache_enabled"], levels["team"]["cache_ttl_s"]) == (False, None)
    assert levels["user"]["cache_enabled"] is None

    # A patch naming only the limits keeps the opt-in; null gives the decision back.
    limits_only = await auth_app.client.patch(
        f"/v1/admin/api-keys/{key['key_id']}",
        json={"rpm_limit": 5},
        headers=acme["admin_headers"],
    )
    assert limits_only.json()["cache"] == {"cache_enabled": True, "cache_ttl_s": 600}
    cleared = await auth_app.client.patch(
        f"/v1/admin/api-keys/{key['key_id']}",
        json={"cache_enabled": None},
        headers=acme["admin_headers"],
    )
    assert cleared.json()["cache"] == {"cache_enabled": None, "cache_ttl_s": 600}
    listed = await auth_app.client.get("/v1/admin/api-keys", headers=acme["admin_headers"])
    assert listed.status_code == 200, listed.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"cache_ttl_s": -1}, "cache_ttl_s"),
        ({"cache_ttl_s": 0}, "cache_ttl_s"),
        ({"cache_ttl_s": 1.5}, "cache_ttl_s"),
        ({"cache_ttl_s": 8 * 86_400}, "cache_ttl_s"),
        ({"cache_ttl_s": "an hour"}, "cache_ttl_s"),
        ({"cache_enabled": "yes"}, "cache_enabled"),
        ({"cache_enabled": 1}, "cache_enabled"),
        ({"cache": True}, "cache"),
    ],
)
async def test_bad_cache_settings_are_400_naming_the_field_and_change_nothing(
    auth_app,
    acme,  # noqa: F811
    body,
    param,
) -> None:
    team = await make_team(auth_app, acme)
    key = await admin_key(auth_app, acme)
    for path in (f"/v1/admin/teams/{team['id']}", f"/v1/admin/api-keys/{key['key_id']}"):
        response = await auth_app.client.patch(
            path, json={"cache_enabled": True, **body}, headers=acme["admin_headers"]
        )
        error = assert_error(response, 400)
        assert error["param"] is not None and error["param"].endswith(param), error
    levels = (await policy_of(auth_app, acme["member"].id, key["key_id"]))["levels"]
    assert levels["api_key"]["cache_enabled"] is None
    created = await auth_app.client.post(
        "/v1/admin/teams", json={"name": "bad", **body}, headers=acme["admin_headers"]
    )
    assert assert_error(created, 400)["param"].endswith(param)


async def test_a_team_can_be_created_opted_in(auth_app, acme) -> None:  # noqa: F811
    team = await make_team(auth_app, acme, cache_enabled=True, cache_ttl_s=60)
    assert team["cache"] == {"cache_enabled": True, "cache_ttl_s": 60}


async def test_unknown_or_foreign_keys_and_teams_and_non_admins_are_refused(
    auth_app,
    acme,  # noqa: F811
) -> None:
    team = await make_team(auth_app, acme)
    key = await admin_key(auth_app, acme)
    on = {"cache_enabled": True}
    unknown_key = await auth_app.client.patch(
        "/v1/admin/api-keys/no-such-key", json=on, headers=acme["admin_headers"]
    )
    assert_error(unknown_key, 404, "api_key_not_found")
    unknown_team = await auth_app.client.patch(
        "/v1/admin/teams/no-such-team", json=on, headers=acme["admin_headers"]
    )
    assert_error(unknown_team, 404, "team_not_found")
    # Another tenant's admin cannot see, let alone change, acme's key or team.
    for path in (f"/v1/admin/api-keys/{key['key_id']}", f"/v1/admin/teams/{team['id']}"):
        foreign = await auth_app.client.patch(path, json=on, headers=acme["other_headers"])
        assert foreign.status_code == 404, foreign.text
        member = await auth_app.client.patch(path, json=on, headers=acme["member_headers"])
        assert member.status_code == 403, member.text
    # The key's owner may change its limits but not its cache opt-in: that is the admins'.
    own = await auth_app.client.patch(
        f"/v1/api-keys/{key['key_id']}", json=on, headers=acme["member_headers"]
    )
    assert assert_error(own, 403, "admin_only")["param"] == "cache_enabled"
    levels = (await policy_of(auth_app, acme["member"].id, key["key_id"]))["levels"]
    assert levels["api_key"]["cache_enabled"] is None
