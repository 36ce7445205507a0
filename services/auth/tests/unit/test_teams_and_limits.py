"""Teams, budgets and rate limits: the admin API, self-service keys, the policy gateways
read, the events that tell them about changes, and the operator commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import typer
from typer.testing import CliRunner

from switchyard.auth.cli import keys_app, teams_app, tenants_app, users_app
from switchyard.auth.config import Settings
from switchyard.auth.governance import Governance, TeamNotFound
from switchyard.auth.models import Team
from switchyard.common.events import LimitsChanged

from .test_admin_api import PASSWORD, assert_error, token_for

INTERNAL = {"x-switchyard-internal-token": "test-internal-token"}


@pytest.fixture
async def acme(auth_app):
    service = auth_app.service
    admin = await service.create_user(
        email="admin@acme.test", tenant="acme", role="admin", password=PASSWORD
    )
    member = await service.create_user(email="member@acme.test", tenant="acme", password=PASSWORD)
    other = await service.create_user(
        email="admin@globex.test", tenant="globex", role="admin", password=PASSWORD
    )
    return {
        "admin": admin,
        "member": member,
        "other": other,
        "admin_headers": await token_for(auth_app, "admin@acme.test"),
        "member_headers": await token_for(auth_app, "member@acme.test"),
        "other_headers": await token_for(auth_app, "admin@globex.test"),
    }


async def make_team(auth_app, acme, **body) -> dict:
    response = await auth_app.client.post(
        "/v1/admin/teams", json={"name": "research", **body}, headers=acme["admin_headers"]
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_an_admin_creates_a_team_with_limits_and_gateways_hear_of_changes(
    auth_app, acme
) -> None:
    team = await make_team(auth_app, acme, rpm_limit=100, max_budget_usd=50, budget_period="30d")
    assert team["limits"]["rpm_limit"] == 100
    assert team["limits"]["budget_period"] == "30d"
    assert team["limits"]["budget_anchor_at"] is not None
    auth_app.events.clear()

    patched = await auth_app.client.patch(
        f"/v1/admin/teams/{team['id']}", json={"rpm_limit": 10}, headers=acme["admin_headers"]
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["limits"]["rpm_limit"] == 10
    # The budget is untouched by a patch that does not name it.
    assert patched.json()["limits"]["max_budget_usd"] == 50
    event = await auth_app.wait_for_event("auth.limits_changed")
    assert isinstance(event, LimitsChanged)
    assert (event.data.scope, event.data.scope_id) == ("team", team["id"])

    listed = await auth_app.client.get("/v1/admin/teams", headers=acme["admin_headers"])
    assert [entry["name"] for entry in listed.json()["data"]] == ["research"]
    duplicate = await auth_app.client.post(
        "/v1/admin/teams", json={"name": "research"}, headers=acme["admin_headers"]
    )
    assert_error(duplicate, 409, "team_exists")


async def test_removing_a_budget_removes_its_period(auth_app, acme) -> None:
    # "null removes a limit": a budget with a period was refused naming `budget_period`,
    # a field the admin did not send.
    team = await make_team(auth_app, acme, max_budget_usd=5, budget_period="7d", rpm_limit=9)

    patched = await auth_app.client.patch(
        f"/v1/admin/teams/{team['id']}",
        json={"max_budget_usd": None},
        headers=acme["admin_headers"],
    )

    assert patched.status_code == 200, patched.text
    limits = patched.json()["limits"]
    assert (limits["max_budget_usd"], limits["budget_period"]) == (None, None)
    assert limits["rpm_limit"] == 9
    # Naming a period beside the removal is still refused: it would limit nothing.
    both = await auth_app.client.patch(
        f"/v1/admin/teams/{team['id']}",
        json={"max_budget_usd": None, "budget_period": "1d"},
        headers=acme["admin_headers"],
    )
    assert_error(both, 400, "invalid_request")
    assert both.json()["error"]["param"] == "budget_period"


async def test_deleting_a_team_with_members_or_keys_takes_force(auth_app, acme) -> None:
    """A team's budget and model list keep its members in check: deleting it would free
    them silently. Refused (409 `team_not_empty`) while it has members or unrevoked keys;
    `force=true` deletes it and they stay, without a team. An emptied team goes as before."""
    admin = acme["admin_headers"]
    team = await make_team(auth_app, acme, max_budget_usd=10, allowed_models=["m"])
    moved = await auth_app.client.patch(
        f"/v1/admin/users/{acme['member'].id}", json={"team_id": team["id"]}, headers=admin
    )
    assert moved.status_code == 200, moved.text

    refused = await auth_app.client.delete(f"/v1/admin/teams/{team['id']}", headers=admin)
    assert_error(refused, 409, "team_not_empty")
    assert refused.json()["error"]["param"] == "force"
    assert "1 member(s)" in refused.json()["error"]["message"]
    assert (
        await auth_app.client.get(f"/v1/admin/teams/{team['id']}", headers=admin)
    ).status_code == 200
    for junk in ("maybe", "2"):
        bad = await auth_app.client.delete(
            f"/v1/admin/teams/{team['id']}", params={"force": junk}, headers=admin
        )
        assert bad.status_code == 400, (junk, bad.text)
    # Another tenant's admin learns nothing of it, forced or not.
    elsewhere = await auth_app.client.delete(
        f"/v1/admin/teams/{team['id']}", params={"force": "true"}, headers=acme["other_headers"]
    )
    assert_error(elsewhere, 404, "team_not_found")

    forced = await auth_app.client.delete(
        f"/v1/admin/teams/{team['id']}", params={"force": "true"}, headers=admin
    )
    assert forced.status_code == 204, forced.text
    user = await auth_app.service.user_by_id(acme["member"].id)
    assert user is not None and user.team_id is None

    # A team whose members left goes without force.
    empty = await auth_app.client.post("/v1/admin/teams", json={"name": "empty"}, headers=admin)
    gone = await auth_app.client.delete(f"/v1/admin/teams/{empty.json()['id']}", headers=admin)
    assert gone.status_code == 204, gone.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm_limit": -5}, "rpm_limit"),
        ({"tpm_limit": 10**15}, "tpm_limit"),
        ({"max_budget_usd": 10, "budget_period": "fortnight"}, "budget_period"),
        ({"budget_period": "1d"}, "budget_period"),
        ({"max_parallel_requests": 1.5}, "max_parallel_requests"),
        ({"rpm": 5}, "rpm"),
        ({"rpm_limit": "many"}, "rpm_limit"),
    ],
)
async def test_bad_limits_are_400_naming_the_field(auth_app, acme, body, param) -> None:
    response = await auth_app.client.post(
        "/v1/admin/teams", json={"name": "t", **body}, headers=acme["admin_headers"]
    )
    error = assert_error(response, 400)
    assert error["param"] is not None and error["param"].endswith(param), error


@pytest.mark.parametrize(
    ("path", "body", "echoed"),
    [
        ("/v1/api-keys", {"name": "k", "rpm_limit": -1}, "(got -1)"),
        ("/v1/api-keys", {"name": "k", "max_budget_usd": -3}, "(got -3)"),
        ("/v1/admin/teams", {"name": "t", "tpm_limit": -7}, "(got -7)"),
        ("/v1/admin/teams", {"name": "t", "max_parallel_requests": 2.5}, "(got 2.5)"),
    ],
)
async def test_a_refused_limit_is_echoed_as_sent(auth_app, acme, path, body, echoed) -> None:
    """A whole number is not shown as a float: the message quotes what the caller sent."""
    response = await auth_app.client.post(path, json=body, headers=acme["admin_headers"])
    error = assert_error(response, 400)
    assert echoed in error["message"], error


async def test_a_budget_period_is_read_in_any_case(auth_app, acme) -> None:
    """As "NONE" always was; it is stored as the lower-case period."""
    team = await make_team(auth_app, acme, max_budget_usd=5, budget_period="30D")
    assert team["limits"]["budget_period"] == "30d", team


async def test_a_teams_name_cannot_be_removed_and_a_null_is_not_ignored(auth_app, acme) -> None:
    team = await make_team(auth_app, acme)
    response = await auth_app.client.patch(
        f"/v1/admin/teams/{team['id']}", json={"name": None}, headers=acme["admin_headers"]
    )
    error = assert_error(response, 400)
    assert error["param"] is not None and error["param"].endswith("name"), error
    # Leaving it out still changes the rest only.
    kept = await auth_app.client.patch(
        f"/v1/admin/teams/{team['id']}", json={"rpm_limit": 5}, headers=acme["admin_headers"]
    )
    assert kept.status_code == 200, kept.text
    assert kept.json()["name"] == "research"


async def test_a_key_limit_above_its_teams_is_refused_naming_the_field(auth_app, acme) -> None:
    team = await make_team(auth_app, acme, rpm_limit=50, max_parallel_requests=4)
    moved = await auth_app.client.patch(
        f"/v1/admin/users/{acme['member'].id}",
        json={"team_id": team["id"]},
        headers=acme["admin_headers"],
    )
    assert moved.status_code == 200, moved.text
    member = acme["member_headers"]

    too_high = await auth_app.client.post(
        "/v1/api-keys", json={"name": "k", "rpm_limit": 100}, headers=member
    )
    error = assert_error(too_high, 400, "invalid_request")
    assert error["param"] == "rpm_limit" and "team" in error["message"]

    created = await auth_app.client.post(
        "/v1/api-keys", json={"name": "k", "rpm_limit": 20, "max_budget_usd": 3}, headers=member
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["team_id"] == team["id"] and key["limits"]["rpm_limit"] == 20

    raise_it = await auth_app.client.patch(
        f"/v1/api-keys/{key['key_id']}", json={"max_parallel_requests": 5}, headers=member
    )
    assert assert_error(raise_it, 400)["param"] == "max_parallel_requests"


async def test_an_admin_tightens_a_team_whatever_its_members_keys_say(auth_app, acme) -> None:
    # A member's own key must not keep an admin from tightening the team (in an incident,
    # say): the team's new limit holds (every level is admitted against), the key's limit
    # above it stays as it was, inert, and the key stays editable; only raising a limit
    # above its team's is refused.
    admin = acme["admin_headers"]
    team = await make_team(auth_app, acme, rpm_limit=600, max_parallel_requests=8)
    moved = await auth_app.client.patch(
        f"/v1/admin/users/{acme['member'].id}", json={"team_id": team["id"]}, headers=admin
    )
    assert moved.status_code == 200, moved.text
    blocker = await auth_app.client.post(
        "/v1/api-keys",
        json={"name": "blocker", "rpm_limit": 600, "max_parallel_requests": 8},
        headers=acme["member_headers"],
    )
    assert blocker.status_code == 201, blocker.text
    key_id = blocker.json()["key_id"]

    for body in ({"rpm_limit": 10}, {"max_parallel_requests": 0}, {"rpm_limit": 0}):
        tightened = await auth_app.client.patch(
            f"/v1/admin/teams/{team['id']}", json=body, headers=admin
        )
        assert tightened.status_code == 200, tightened.text
    shown = await auth_app.client.get(f"/v1/admin/teams/{team['id']}", headers=admin)
    assert shown.json()["limits"]["rpm_limit"] == 0

    # The key's other limits are still its owner's to lower, and an admin's to edit.
    lowered = await auth_app.client.patch(
        f"/v1/api-keys/{key_id}", json={"rpm_limit": 500}, headers=acme["member_headers"]
    )
    assert lowered.status_code == 200, lowered.text
    edited = await auth_app.client.patch(
        f"/v1/admin/api-keys/{key_id}", json={"tpm_limit": 0}, headers=admin
    )
    assert edited.status_code == 200, edited.text
    lowered_back = await auth_app.client.patch(
        f"/v1/admin/teams/{team['id']}", json={"rpm_limit": 100}, headers=admin
    )
    assert lowered_back.status_code == 200
    raised = await auth_app.client.patch(
        f"/v1/admin/api-keys/{key_id}", json={"rpm_limit": 501}, headers=admin
    )
    error = assert_error(raised, 400, "invalid_request")
    assert error["param"] == "rpm_limit" and "team" in error["message"]


async def test_admins_act_on_their_own_tenant_only_and_members_not_at_all(auth_app, acme) -> None:
    team = await make_team(auth_app, acme)
    for method, path, body in (
        ("GET", f"/v1/admin/teams/{team['id']}", None),
        ("PATCH", f"/v1/admin/teams/{team['id']}", {"rpm_limit": 1}),
        ("DELETE", f"/v1/admin/teams/{team['id']}", None),
        ("PATCH", f"/v1/admin/users/{acme['member'].id}", {"rpm_limit": 1}),
        ("POST", "/v1/admin/api-keys", {"user_id": acme["member"].id}),
    ):
        response = await auth_app.client.request(
            method, path, json=body, headers=acme["other_headers"]
        )
        assert response.status_code == 404, (method, path, response.text)
        response = await auth_app.client.request(
            method, path, json=body, headers=acme["member_headers"]
        )
        assert response.status_code == 403, (method, path, response.text)


async def test_the_policy_gives_every_level_above_a_key(auth_app, acme) -> None:
    team = await make_team(auth_app, acme, max_budget_usd=5, budget_period="1d")
    await auth_app.client.patch(
        f"/v1/admin/users/{acme['member'].id}",
        json={"team_id": team["id"], "rpm_limit": 30},
        headers=acme["admin_headers"],
    )
    created = await auth_app.client.post(
        "/v1/admin/api-keys",
        json={"user_id": acme["member"].id, "tpm_limit": 1000},
        headers=acme["admin_headers"],
    )
    assert created.status_code == 201, created.text
    key_id = created.json()["key_id"]

    policy = await auth_app.client.get(
        "/internal/v1/policy",
        params={"user_id": acme["member"].id, "key_id": key_id},
        headers=INTERNAL,
    )
    assert policy.status_code == 200, policy.text
    body = policy.json()
    assert body["team_id"] == team["id"]
    assert body["levels"]["api_key"]["limits"]["tpm_limit"] == 1000
    assert body["levels"]["user"]["limits"]["rpm_limit"] == 30
    assert body["levels"]["team"]["limits"]["max_budget_usd"] == 5
    assert body["levels"]["tenant"]["id"] == "acme"
    assert (body["rate_limit_failure_mode"], body["budget_failure_mode"]) == ("open", "closed")
    unknown = await auth_app.client.get(
        "/internal/v1/policy", params={"user_id": "nobody"}, headers=INTERNAL
    )
    assert unknown.status_code == 404

    me = await auth_app.client.get("/v1/me", headers=acme["member_headers"])
    assert me.status_code == 200 and me.json()["levels"]["team"]["id"] == team["id"]


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SWITCHYARD_AUTH_DATABASE_URL", settings.database_url)
    app = typer.Typer()
    for group in (users_app, keys_app, teams_app, tenants_app):
        app.add_typer(group)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_a_tenant_nobody_is_in_is_taken_for_a_typo(cli) -> None:
    """An operator naming a tenant no user or team is in gets told so, and nothing is
    made: a typo would otherwise be a tenant of its own."""
    assert cli("users", "create", "--email", "a@acme.test", "--tenant", "acme", "--no-password")
    for command in (
        ("teams", "create", "--tenant", "acmee", "--name", "t1"),
        ("tenants", "update", "--tenant", "acmee", "--rpm-limit", "5"),
    ):
        refused = cli(*command)
        assert refused.exit_code == 1, refused.output
        assert "No user or team is in tenant 'acmee'" in refused.output
    assert cli("teams", "list", "--json").stdout.strip() == ""
    assert cli("teams", "create", "--tenant", "acme", "--name", "t1").exit_code == 0


def test_operators_manage_teams_keys_and_tenants_from_the_cli(cli) -> None:
    assert cli("users", "create", "--email", "ops@acme.test", "--tenant", "acme", "--no-password")
    created = cli(
        "teams", "create", "--tenant", "acme", "--name", "ml", "--rpm-limit", "60", "--json"
    )
    assert created.exit_code == 0, created.output
    team = json.loads(created.stdout)
    assert team["rpm_limit"] == 60

    moved = cli("users", "update", "--email", "ops@acme.test", "--team", "ml")
    assert moved.exit_code == 0, moved.output
    key = cli(
        "keys",
        "create",
        "--email",
        "ops@acme.test",
        "--team",
        "ml",
        "--rpm-limit",
        "30",
        "--max-budget-usd",
        "5",
        "--budget-period",
        "30d",
        "--max-parallel",
        "2",
        "--json",
    )
    assert key.exit_code == 0, key.output
    key_id = json.loads(key.stdout)["key_id"]

    too_high = cli("keys", "update", key_id, "--rpm-limit", "61")
    assert too_high.exit_code == 1 and "rpm_limit" in too_high.output
    bad_period = cli("keys", "update", key_id, "--max-budget-usd", "1", "--budget-period", "2d")
    assert bad_period.exit_code == 1 and "budget_period" in bad_period.output
    negative = cli("teams", "update", team["id"], "--tpm-limit", "-1")
    assert negative.exit_code == 1 and "tpm_limit" in negative.output

    # An unknown --clear is refused naming every name this command takes, the cache's too.
    unknown = cli("teams", "update", team["id"], "--clear", "bogus")
    assert unknown.exit_code == 1
    assert "budget_period" in unknown.output and "cache_ttl_s" in unknown.output
    # An empty --team was taken for no option: the command said it was done, and was not.
    for empty in (
        cli("users", "update", "--email", "a@acme.test", "--team", ""),
        cli("keys", "create", "--email", "a@acme.test", "--name", "x", "--team", " "),
    ):
        assert empty.exit_code == 1 and "--team is empty" in empty.output, empty.output

    updated = cli("keys", "update", key_id, "--rpm-limit", "10", "--clear", "max_budget_usd")
    assert updated.exit_code == 0, updated.output
    assert "rpm_limit=10" in updated.stdout and "max_budget_usd" not in updated.stdout

    tenant = cli(
        "tenants",
        "update",
        "--tenant",
        "acme",
        "--max-budget-usd",
        "100",
        "--rate-limits-when-store-down",
        "closed",
    )
    assert tenant.exit_code == 0, tenant.output
    shown = json.loads(cli("tenants", "show", "--tenant", "acme").stdout)
    assert shown["max_budget_usd"] == 100 and shown["rate_limit_failure_mode"] == "closed"
    wrong_mode = cli("tenants", "update", "--tenant", "acme", "--budgets-when-store-down", "ajar")
    assert wrong_mode.exit_code == 1

    # A team may be named as well as given by id (its name is within a tenant).
    by_name = cli("teams", "update", "ml", "--tenant", "acme", "--rpm-limit", "50")
    assert by_name.exit_code == 0, by_name.output
    assert f"(id {team['id']})" in by_name.stdout and "rpm_limit=50" in by_name.stdout
    # A budget is shown as an operator writes one, never with an exponent.
    tiny = cli("teams", "update", "ml", "--tenant", "acme", "--max-budget-usd", "0.0000015")
    assert tiny.exit_code == 0, tiny.output
    assert "max_budget_usd=0.0000015" in tiny.stdout and "e-06" not in tiny.stdout
    # Below a millionth of a dollar a positive budget is a mistake, not printed in 300 digits.
    for typo in ("1e-300", "5e-324", "0.0000009"):
        refused = cli("teams", "update", "ml", "--tenant", "acme", "--max-budget-usd", typo)
        assert refused.exit_code == 1, refused.output
        assert "must be 0 or at least 0.000001" in refused.output
        assert len(refused.output) < 300
    nothing = cli("teams", "update", "ml", "--tenant", "acme", "--max-budget-usd", "0")
    assert nothing.exit_code == 0 and "max_budget_usd=0" in nothing.stdout
    elsewhere = cli("teams", "update", "ml", "--rpm-limit", "50")  # not in tenant default
    assert elsewhere.exit_code == 1
    assert "nor named so in tenant 'default'" in elsewhere.output

    listed = cli("teams", "list", "--json")
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["ml"]
    # The team has a member and a key: deleting it would free them from its limits.
    refused = cli("teams", "delete", "ml", "--tenant", "acme")
    assert refused.exit_code == 1
    assert "1 member(s) and 1 unrevoked key(s)" in refused.output
    assert "ml" in cli("teams", "list").stdout
    deleted = cli("teams", "delete", "ml", "--tenant", "acme", "--force")
    assert deleted.exit_code == 0, deleted.output
    assert "no longer have its limits" in deleted.stdout
    assert cli("teams", "list", "--json").stdout.strip() == ""


def test_a_tenant_limit_below_its_users_or_keys_applies_and_leaves_them_editable(cli) -> None:
    """Lowering a tenant's limit below a user's or key's is the tenant's to do; their
    limits above it are inert, stay editable, and only raising one above it is refused."""
    assert cli("users", "create", "--email", "u@acme.test", "--tenant", "acme", "--no-password")
    assert cli("users", "update", "--email", "u@acme.test", "--rpm-limit", "50").exit_code == 0
    key = cli("keys", "create", "--email", "u@acme.test", "--tpm-limit", "5000", "--json")
    assert key.exit_code == 0, key.output

    for flag, value in (("--rpm-limit", "10"), ("--tpm-limit", "100")):
        lowered = cli("tenants", "update", "--tenant", "acme", flag, value)
        assert lowered.exit_code == 0, lowered.output
    shown = json.loads(cli("tenants", "show", "--tenant", "acme").stdout)
    assert (shown["rpm_limit"], shown["tpm_limit"]) == (10, 100)

    assert cli("users", "update", "--email", "u@acme.test", "--rpm-limit", "40").exit_code == 0
    raised = cli("users", "update", "--email", "u@acme.test", "--rpm-limit", "45")
    assert raised.exit_code == 1 and "rpm_limit" in raised.output, raised.output


@pytest.mark.parametrize(
    "args",
    [
        ("teams", "create", "--tenant", "", "--name", "zz"),
        ("teams", "create", "--tenant", "no spaces", "--name", "zz"),
        ("tenants", "update", "--tenant", "", "--rpm-limit", "5"),
        ("keys", "create", "--email", "u@acme.test", "--expires-in-days", "100000000"),
        # An empty list option would make a credential or team that can call nothing, and
        # an empty entry would be dropped silently; the API refuses both.
        ("keys", "create", "--email", "u@acme.test", "--allowed-models", ""),
        ("keys", "create", "--email", "u@acme.test", "--allowed-models", "a,,b"),
        ("keys", "create", "--email", "u@acme.test", "--allowed-models", "a, "),
        ("keys", "create", "--email", "u@acme.test", "--scopes", ""),
        ("keys", "create", "--email", "u@acme.test", "--scopes", "chat,"),
        ("teams", "create", "--tenant", "acme", "--name", "zz", "--allowed-models", ""),
        ("teams", "create", "--tenant", "acme", "--name", "zz", "--allowed-models", " , "),
    ],
    ids=[
        "empty-tenant",
        "bad-tenant",
        "tenant-update",
        "expiry",
        "key-models-empty",
        "key-models-empty-entry",
        "key-models-trailing-blank",
        "key-scopes-empty",
        "key-scopes-trailing-comma",
        "team-models-empty",
        "team-models-blank-entries",
    ],
)
def test_bad_cli_input_is_one_line_and_writes_nothing(cli, args) -> None:
    assert cli("users", "create", "--email", "u@acme.test", "--tenant", "acme", "--no-password")
    refused = cli(*args)

    assert refused.exit_code == 1, refused.output
    assert refused.exception is None or isinstance(refused.exception, SystemExit)
    assert len(refused.output.strip().splitlines()) == 1, refused.output
    assert cli("teams", "list", "--json").stdout.strip() == ""
    assert cli("keys", "list", "--json").stdout.strip() == ""


@pytest.mark.parametrize(
    ("command", "args", "field"),
    [
        ("keys", ("--rpm-limit", "5", "--clear", "rpm_limit"), "rpm_limit"),
        ("keys", ("--clear", "tpm_limit", "--tpm-limit", "5"), "tpm_limit"),
        ("keys", ("--max-budget-usd", "5", "--clear", "max_budget_usd"), "max_budget_usd"),
        ("keys", ("--budget-period", "1d", "--clear", "max_budget_usd"), "budget_period"),
        ("teams", ("--max-parallel", "2", "--clear", "max_parallel_requests"), "max_parallel"),
        (
            "teams",
            ("--max-budget-usd", "5", "--budget-period", "1d", "--clear", "budget_period"),
            "budget_period",
        ),
        ("teams", ("--cache-ttl", "60", "--clear", "cache_ttl_s"), "cache_ttl_s"),
        ("users", ("--rpm-limit", "5", "--clear", "rpm_limit"), "rpm_limit"),
        ("tenants", ("--rpm-limit", "5", "--clear", "rpm_limit"), "rpm_limit"),
    ],
)
def test_setting_and_clearing_a_field_in_one_call_is_refused(cli, command, args, field) -> None:
    """Applying either half would silently drop the other: exit 1, one line naming the
    field, nothing changed."""
    assert cli("users", "create", "--email", "u@acme.test", "--tenant", "acme", "--no-password")
    created = cli(
        "teams", "create", "--tenant", "acme", "--name", "ml", "--rpm-limit", "9", "--json"
    )
    key = cli("keys", "create", "--email", "u@acme.test", "--rpm-limit", "9", "--json")
    assert created.exit_code == 0 and key.exit_code == 0, created.output + key.output
    target = {
        "keys": (json.loads(key.stdout)["key_id"],),
        "teams": (json.loads(created.stdout)["id"],),
        "users": ("--email", "u@acme.test"),
        "tenants": ("--tenant", "acme"),
    }[command]

    refused = cli(command, "update", *target, *args)

    assert refused.exit_code == 1, refused.output
    assert len(refused.output.strip().splitlines()) == 1, refused.output
    assert field in refused.output, refused.output
    (team,) = [json.loads(line) for line in cli("teams", "list", "--json").stdout.splitlines()]
    assert team["rpm_limit"] == 9 and team["cache_ttl_s"] is None
    shown = json.loads(cli("tenants", "show", "--tenant", "acme").stdout)
    assert shown["rpm_limit"] is None


def test_budget_periods_are_read_in_any_case(cli) -> None:
    """As "none" always was: "30D" is the 30-day period, stored as `30d`."""
    assert cli("users", "create", "--email", "a@acme.test", "--tenant", "acme", "--no-password")
    created = cli(
        "teams",
        "create",
        "--tenant",
        "acme",
        "--name",
        "ml",
        "--max-budget-usd",
        "5",
        "--budget-period",
        " 30D ",
        "--json",
    )
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["budget_period"] == "30d"


# Not among the cache opt-in tests: every test there runs the auth app (`acme`), whose
# loop stands still while a synchronous test runs, so a transaction of its open at that
# moment held the database's write lock against the commands for their busy timeout.
def test_operators_opt_keys_and_teams_in_from_the_cli(cli) -> None:
    user = cli("users", "create", "--email", "ops@acme.test", "--tenant", "acme", "--no-password")
    assert user.exit_code == 0, user.output
    created = cli("teams", "create", "--tenant", "acme", "--name", "ml", "--json")
    assert created.exit_code == 0, created.output
    team = json.loads(created.stdout)
    key = cli("keys", "create", "--email", "ops@acme.test", "--json")
    assert key.exit_code == 0, key.output
    key_id = json.loads(key.stdout)["key_id"]

    on = cli("keys", "update", key_id, "--cache", "--cache-ttl", "120")
    assert on.exit_code == 0, on.output
    assert "response cache on, ttl 120 s" in on.stdout
    off = cli("teams", "update", team["id"], "--no-cache")
    assert off.exit_code == 0, off.output
    assert "response cache off" in off.stdout
    shown = json.loads(cli("teams", "list", "--json").stdout.splitlines()[0])
    assert (shown["cache_enabled"], shown["cache_ttl_s"]) == (False, None)

    cleared = cli("keys", "update", key_id, "--clear", "cache_enabled", "--clear", "cache_ttl_s")
    assert cleared.exit_code == 0, cleared.output
    assert "response cache as the level above" in cleared.stdout

    negative = cli("keys", "update", key_id, "--cache-ttl", "-5")
    assert negative.exit_code != 0 and "cache-ttl" in negative.output
    contradiction = cli("keys", "update", key_id, "--cache", "--clear", "cache_enabled")
    assert contradiction.exit_code == 1 and "cache_enabled" in contradiction.output
    unknown = cli("keys", "update", "no-such-key", "--cache")
    assert unknown.exit_code == 1 and "no-such-key" in unknown.output


async def test_team_names_are_one_name_whatever_their_case(auth_app, acme) -> None:
    """`Research` and `research` are one team to the people and the CLI that name it, so
    a second team of the same name in another case is refused, on creation and on rename,
    and a name given in another case finds the team (Unicode case folding, so `Straße` is
    `STRASSE` on SQLite too)."""
    headers = acme["admin_headers"]
    team = await make_team(auth_app, acme)
    for name in ("Research", "RESEARCH", " research "):
        again = await auth_app.client.post("/v1/admin/teams", json={"name": name}, headers=headers)
        assert_error(again, 409, "team_exists")
    other = await make_team(auth_app, acme, name="Straße")
    assert_error(
        await auth_app.client.post("/v1/admin/teams", json={"name": "STRASSE"}, headers=headers),
        409,
        "team_exists",
    )
    renamed = await auth_app.client.patch(
        f"/v1/admin/teams/{other['id']}", json={"name": "ReSearch"}, headers=headers
    )
    assert_error(renamed, 409, "team_exists")
    # A team may change the case of its own name.
    recased = await auth_app.client.patch(
        f"/v1/admin/teams/{team['id']}", json={"name": "Research"}, headers=headers
    )
    assert recased.status_code == 200, recased.text
    assert recased.json()["name"] == "Research"
    # Another tenant keeps its own names.
    elsewhere = await auth_app.client.post(
        "/v1/admin/teams", json={"name": "research"}, headers=acme["other_headers"]
    )
    assert elsewhere.status_code == 201, elsewhere.text

    governance = Governance(auth_app.service)
    assert (await governance.team_by_name("acme", "research")).id == team["id"]
    assert (await governance.team_by_name("acme", "strasse")).id == other["id"]
    with pytest.raises(TeamNotFound):
        await governance.team_by_name("acme", "researchers")


async def test_team_names_are_one_name_however_their_characters_are_composed(
    auth_app, acme
) -> None:
    """`café` with a composed `é` and with `e` and a combining accent look alike: one name
    (Unicode's NFC), stored composed, found either way."""
    headers = acme["admin_headers"]
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    team = await make_team(auth_app, acme, name=decomposed)
    assert team["name"] == composed
    again = await auth_app.client.post("/v1/admin/teams", json={"name": composed}, headers=headers)
    assert_error(again, 409, "team_exists")
    upper = await auth_app.client.post(
        "/v1/admin/teams", json={"name": "CAFE\u0301"}, headers=headers
    )
    assert_error(upper, 409, "team_exists")

    governance = Governance(auth_app.service)
    assert (await governance.team_by_name("acme", composed)).id == team["id"]
    assert (await governance.team_by_name("acme", decomposed)).id == team["id"]


async def test_look_alike_team_names_are_one_name_or_refused(auth_app, acme) -> None:
    """Full-width letters are the same name (compatibility forms folded); a word mixing
    scripts with look-alike letters (`Rеsearch` with a Cyrillic `е`) is refused in the
    admin API's own error format, on creation and on rename; a name in one script, or in
    scripts without look-alikes, is a name of its own."""
    headers = acme["admin_headers"]
    team = await make_team(auth_app, acme, name="Research")
    wide = await auth_app.client.post(
        "/v1/admin/teams",
        json={"name": "\uff32\uff45\uff53\uff45\uff41\uff52\uff43\uff48"},
        headers=headers,
    )
    assert_error(wide, 409, "team_exists")
    for name, odd in (
        ("R\u0435search", "\u0435"),
        ("\u0405ales", "\u0405"),
        ("Data \u0391I", "\u0391"),
    ):
        refused = await auth_app.client.post(
            "/v1/admin/teams", json={"name": name}, headers=headers
        )
        error = assert_error(refused, 400, "invalid_request")
        assert error["param"] == "name" and odd in error["message"], error
        assert "look-alike" in error["message"]
    renamed = await auth_app.client.patch(
        f"/v1/admin/teams/{team['id']}", json={"name": "R\u0435search"}, headers=headers
    )
    assert_error(renamed, 400, "invalid_request")
    for name in (
        "\u0418\u0441\u0441\u043b\u0435\u0434\u043e\u0432\u0430\u043d\u0438\u044f",
        "\u958b\u767aTeam",
        "Team-\u03a9",
        "Ops 2",
        "AI Team",
        # Japanese writes Katakana and Han in one word (`データ分析`, `東京タワー`), some of
        # whose letters look alike (`タ` and `夕`): one writing system, accepted.
        "\u30c7\u30fc\u30bf\u5206\u6790",
        "\u6771\u4eac\u30bf\u30ef\u30fc",
        "\ud55c\uad6d\ud300",
        # Different names whose small letters look alike, told apart as written: Russian
        # `Б` and `6` (small `б` looks like `6`), Greek `Σ` and `Ο`.
        "\u041a\u043e\u043c\u0430\u043d\u0434\u0430 \u0411",
        "\u041a\u043e\u043c\u0430\u043d\u0434\u0430 6",
        "\u039f\u03bc\u03ac\u03b4\u03b1 \u03a3",
        "\u039f\u03bc\u03ac\u03b4\u03b1 \u039f",
    ):
        created = await auth_app.client.post(
            "/v1/admin/teams", json={"name": name}, headers=headers
        )
        assert created.status_code == 201, (name, created.text)
    # A name in one script that only looks like another team's: the same name.
    for name in ("\u0391\u0399 Team", "\u0251I Team", "AI Tearn", "Al Team", "A1 Team"):
        twin = await auth_app.client.post("/v1/admin/teams", json={"name": name}, headers=headers)
        error = assert_error(twin, 409, "team_exists")
        assert "looks like" in error["message"] or "ignoring case" in error["message"], error
    governance = Governance(auth_app.service)
    assert (await governance.team_by_name("acme", "\uff32esearch")).id == team["id"]


async def test_teams_named_alike_before_are_told_apart_by_exact_name_or_id(auth_app, acme) -> None:
    """Teams created when names were compared exactly can differ only in case: the exact
    name still finds each, and a name matching several only ignoring case is refused
    naming them, rather than one picked at random."""
    async with auth_app.service.sessions() as session:
        for name in ("Ops", "OPS"):
            session.add(Team(tenant="acme", name=name, created_at=datetime.now(UTC)))
        await session.commit()
    governance = Governance(auth_app.service)
    assert (await governance.team_by_name("acme", "Ops")).name == "Ops"
    assert (await governance.team_by_name("acme", "OPS")).name == "OPS"
    with pytest.raises(TeamNotFound, match="'Ops'.*'OPS'|'OPS'.*'Ops'"):
        await governance.team_by_name("acme", "ops")


def test_the_cli_finds_a_team_named_in_another_case(cli) -> None:
    assert cli("users", "create", "--email", "ops@acme.test", "--tenant", "acme", "--no-password")
    assert cli("teams", "create", "--tenant", "acme", "--name", "ML").exit_code == 0
    moved = cli("users", "update", "--email", "ops@acme.test", "--team", "ml")
    assert moved.exit_code == 0, moved.output
    again = cli("teams", "create", "--tenant", "acme", "--name", "ml")
    assert again.exit_code == 1
    assert "already has a team named 'ML'" in again.output


def test_a_budget_stored_below_the_floor_does_not_block_another_limits_change() -> None:
    from types import SimpleNamespace

    from switchyard.auth.governance import _merged
    from switchyard.auth.service import InvalidInput

    row = SimpleNamespace(
        max_budget_usd=1e-300,
        budget_period=None,
        rpm_limit=None,
        tpm_limit=None,
        max_parallel_requests=None,
    )
    assert _merged(row, {"rpm_limit": 60}).rpm_limit == 60  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        _merged(row, {"max_budget_usd": 5e-324})  # type: ignore[arg-type]


async def test_names_that_look_alike_in_capitals_or_spacing_are_one_name(auth_app, acme) -> None:
    """`0ps` beside `ops` (`0` and `O` look alike; small `o` does not look like `0`), and
    a name with its spaces doubled: the same name to anyone reading a list of teams."""
    headers = acme["admin_headers"]
    for name in ("ops", "olga", "Cool Team", "AI Team"):
        created = await auth_app.client.post(
            "/v1/admin/teams", json={"name": name}, headers=headers
        )
        assert created.status_code == 201, (name, created.text)
    for name in ("0ps", "0PS", "0lga", "C00l Team", "AI  Team", "AI\u2800Team", "AI\u3164Team"):
        twin = await auth_app.client.post("/v1/admin/teams", json={"name": name}, headers=headers)
        error = assert_error(twin, 409, "team_exists")
        assert "looks like" in error["message"], (name, error)
    # Names that differ are still names of their own; capitals are compared for Latin
    # letters only (small Cyrillic `нет` is not Latin `HET`).
    for name in ("opt", "Ops 2", "Olga B", "Het", "\u043d\u0435\u0442"):
        created = await auth_app.client.post(
            "/v1/admin/teams", json={"name": name}, headers=headers
        )
        assert created.status_code == 201, (name, created.text)
