"""Every field of the account and admin request bodies takes only its own JSON type: a
boolean, a numeric string or a number in place of a string is a 400 naming the field, never
coerced (`true` stored as 1, `"60"` as 60), and nothing changes."""

from __future__ import annotations

import pytest

from .test_admin_api import assert_error
from .test_cache_opt_in import admin_key, policy_of
from .test_teams_and_limits import acme, make_team  # noqa: F401

pytestmark = pytest.mark.usefixtures("acme")

# (field, a value of another JSON type than the field's own)
NUMBERS = [
    ("max_budget_usd", True),
    ("max_budget_usd", "5"),
    ("rpm_limit", True),
    ("rpm_limit", "10"),
    ("tpm_limit", False),
    ("tpm_limit", "1000"),
    ("max_parallel_requests", "2"),
    ("max_parallel_requests", [2]),
    ("budget_period", 30),
    ("budget_period", True),
]
CACHE = [
    ("cache_ttl_s", True),
    ("cache_ttl_s", False),
    ("cache_ttl_s", "60"),
    ("cache_ttl_s", "60.0"),
    ("cache_enabled", "true"),
    ("cache_enabled", 1),
]
TEAM_ID = [("team_id", 5), ("team_id", True)]
NEW_KEY = [
    ("expires_in_days", True),
    ("expires_in_days", "30"),
    ("expires_in_days", 30.0),
    ("name", 5),
    ("name", True),
    ("scopes", "chat"),
    ("scopes", ["chat", 1]),
    ("allowed_models", [True]),
]


def cases(route: str, fields: list[tuple[str, object]]) -> list:
    return [
        pytest.param(route, field, value, id=f"{route}-{field}-{value!r}")
        for field, value in fields
    ]


async def target(auth_app, acme, route: str) -> tuple[str, str, dict, dict]:  # noqa: F811
    """The method, path, valid body and headers of `route`, creating what it acts on."""
    admin, member = acme["admin_headers"], acme["member_headers"]
    if route == "patch-admin-key":
        key = await admin_key(auth_app, acme)
        return "PATCH", f"/v1/admin/api-keys/{key['key_id']}", {}, admin
    if route == "patch-own-key":
        key = await admin_key(auth_app, acme)
        return "PATCH", f"/v1/api-keys/{key['key_id']}", {}, member
    if route == "create-own-key":
        return "POST", "/v1/api-keys", {"name": "k"}, member
    if route == "create-admin-key":
        return "POST", "/v1/admin/api-keys", {"user_id": acme["member"].id}, admin
    if route == "create-team":
        return "POST", "/v1/admin/teams", {"name": "ml"}, admin
    if route == "patch-team":
        team = await make_team(auth_app, acme)
        return "PATCH", f"/v1/admin/teams/{team['id']}", {}, admin
    if route == "patch-user":
        return "PATCH", f"/v1/admin/users/{acme['member'].id}", {}, admin
    assert route == "create-user"
    return "POST", "/v1/admin/users", {"email": "new@acme.test"}, admin


@pytest.mark.parametrize(
    ("route", "field", "value"),
    cases("patch-admin-key", NUMBERS + CACHE + TEAM_ID)
    + cases("patch-own-key", NUMBERS + TEAM_ID)
    + cases("create-own-key", NUMBERS + NEW_KEY + [("team_id", 5)])
    + cases("create-admin-key", NUMBERS + NEW_KEY + [("user_id", 5), ("team_id", True)])
    + cases("create-team", NUMBERS + CACHE + [("name", 5), ("allowed_models", "gpt-4o")])
    + cases("patch-team", NUMBERS + CACHE + [("name", True), ("allowed_models", [1])])
    + cases("patch-user", NUMBERS + TEAM_ID)
    + cases(
        "create-user",
        [("email", 5), ("role", True), ("password", 12345678), ("password", True)],
    ),
)
async def test_a_field_of_another_json_type_is_a_400_naming_it(
    auth_app,
    acme,  # noqa: F811
    route,
    field,
    value,
) -> None:
    method, path, body, headers = await target(auth_app, acme, route)
    before = (await auth_app.client.get("/v1/admin/api-keys", headers=acme["admin_headers"])).json()
    response = await auth_app.client.request(
        method, path, json={**body, field: value}, headers=headers
    )
    error = assert_error(response, 400, "invalid_request")
    # A list item's error names the item (`scopes.1`).
    assert error["param"] is not None and error["param"].split(".")[0] == field, error
    assert error["message"].startswith(f"Invalid value for '{error['param']}': Input should be")
    after = (await auth_app.client.get("/v1/admin/api-keys", headers=acme["admin_headers"])).json()
    assert after == before


@pytest.mark.parametrize("value", [True, "60", "600"])
async def test_a_keys_cache_ttl_is_never_coerced(auth_app, acme, value) -> None:  # noqa: F811
    key = await admin_key(auth_app, acme)
    set_before = await auth_app.client.patch(
        f"/v1/admin/api-keys/{key['key_id']}",
        json={"cache_ttl_s": 120},
        headers=acme["admin_headers"],
    )
    assert set_before.status_code == 200, set_before.text
    refused = await auth_app.client.patch(
        f"/v1/admin/api-keys/{key['key_id']}",
        json={"cache_ttl_s": value},
        headers=acme["admin_headers"],
    )
    error = assert_error(refused, 400, "invalid_request")
    assert error["param"] == "cache_ttl_s"
    assert error["message"] == "Invalid value for 'cache_ttl_s': Input should be a valid number"
    levels = (await policy_of(auth_app, acme["member"].id, key["key_id"]))["levels"]
    assert levels["api_key"]["cache_ttl_s"] == 120


async def test_json_integers_are_still_numbers(auth_app, acme) -> None:  # noqa: F811
    team = await make_team(auth_app, acme, max_budget_usd=50, cache_ttl_s=60)
    assert team["limits"]["max_budget_usd"] == 50 and team["cache"]["cache_ttl_s"] == 60
    key = await admin_key(auth_app, acme, expires_in_days=30, rpm_limit=5)
    patched = await auth_app.client.patch(
        f"/v1/admin/api-keys/{key['key_id']}",
        json={"cache_ttl_s": 600, "max_budget_usd": 2.5, "cache_enabled": True},
        headers=acme["admin_headers"],
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["cache"] == {"cache_enabled": True, "cache_ttl_s": 600}
    assert patched.json()["limits"]["max_budget_usd"] == 2.5
