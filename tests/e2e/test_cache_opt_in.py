"""The response cache opt-in of API keys and teams on the real system (Kafka, PostgreSQL,
every service its own process): a tenant admin opts one key in through the gateway's admin
API and an operator opts a team in with `switchyard teams update --cache`; the opted-in
key's and the team member's second identical request are answered from the cache, while
another key of the same tenant, not opted in, reaches the model every time. Bad settings
get the admin API's error object."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from switchyard.simulator.testing import simulator_at

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TENANT = "cache-opt-in"
ADMIN_EMAIL = "cache-admin@example.com"
ADMIN_PASSWORD = "cache opt-in admin password"


@pytest.fixture(scope="module")
def admin(system) -> dict[str, str]:
    system.cli(
        "users",
        "create",
        "--email",
        ADMIN_EMAIL,
        "--tenant",
        TENANT,
        "--role",
        "admin",
        "--password-stdin",
        stdin=ADMIN_PASSWORD + "\n",
    )
    token = httpx.post(
        f"{system.url('gateway')}/v1/auth/token",
        json={"grant_type": "password", "username": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
        timeout=10,
    )
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def admin_call(system, admin, method: str, path: str, body: dict | None = None):
    return httpx.request(
        method, f"{system.url('gateway')}{path}", json=body, headers=admin, timeout=10
    )


def new_key(system, admin, team_id: str | None = None) -> dict:
    """A member of the tenant (in `team_id`) and a key of theirs."""
    email = f"cache-{uuid.uuid4().hex[:8]}@example.com"
    user = admin_call(system, admin, "POST", "/v1/admin/users", {"email": email})
    assert user.status_code == 201, user.text
    if team_id is not None:
        moved = admin_call(
            system, admin, "PATCH", f"/v1/admin/users/{user.json()['id']}", {"team_id": team_id}
        )
        assert moved.status_code == 200, moved.text
    key = admin_call(system, admin, "POST", "/v1/admin/api-keys", {"user_id": user.json()["id"]})
    assert key.status_code == 201, key.text
    return key.json()


def sim_count(system) -> int:
    with simulator_at(system.url("simulator")) as simulator:
        return simulator.calls("sim-small")


def stored_answers(system) -> float:
    for line in httpx.get(f"{system.url('gateway')}/metrics", timeout=5).text.splitlines():
        if line.startswith('switchyard_gateway_cache_stores_total{outcome="stored"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def ask(system, key: dict, body: dict) -> httpx.Response:
    response = httpx.post(
        f"{system.url('gateway')}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key['key']}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response


def settle(system, key: dict) -> None:
    """Until this gateway knows the caller's cache settings: on a loaded machine its first
    fetch of a tenant's settings from history may time out, and until it is retried the
    gateway caches nothing (answers `bypass`), by design."""
    deadline = time.monotonic() + 60
    while ask(system, key, question("settle")).headers.get("x-switchyard-cache") == "bypass":
        assert time.monotonic() < deadline, "the gateway never learned the cache settings"
        time.sleep(1)


def ask_twice(system, key: dict, body: dict) -> tuple[httpx.Response, httpx.Response]:
    """The request, then (once an answer it produced would be stored) the same again."""
    before = stored_answers(system)
    first = ask(system, key, body)
    if first.headers.get("x-switchyard-cache") == "miss":
        deadline = time.monotonic() + 30
        while stored_answers(system) <= before and time.monotonic() < deadline:
            time.sleep(0.1)
    return first, ask(system, key, body)


def question(tag: str) -> dict:
    return {
        "model": "sim-small",
        "temperature": 0,
        "messages": [{"role": "user", "content": f"cache opt-in {tag} {uuid.uuid4().hex}"}],
    }


def test_an_opted_in_key_gets_a_hit_and_another_key_of_the_tenant_does_not(system, admin):
    key_a, key_b = new_key(system, admin), new_key(system, admin)
    opted = admin_call(
        system,
        admin,
        "PATCH",
        f"/v1/admin/api-keys/{key_a['key_id']}",
        {"cache_enabled": True, "cache_ttl_s": 600},
    )
    assert opted.status_code == 200, opted.text
    assert opted.json()["cache"] == {"cache_enabled": True, "cache_ttl_s": 600}

    settle(system, key_a)
    body = question("keys")
    calls = sim_count(system)
    first, second = ask_twice(system, key_a, body)
    assert first.headers["x-switchyard-cache"] == "miss"
    assert second.headers["x-switchyard-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert sim_count(system) == calls + 1

    # Key B of the same tenant asks the very same thing twice: no cache, two model calls.
    for response in ask_twice(system, key_b, body):
        assert "x-switchyard-cache" not in response.headers
    assert sim_count(system) == calls + 3


def test_a_team_opted_in_by_the_operator_gets_hits_for_its_members_keys(system, admin):
    team = admin_call(system, admin, "POST", "/v1/admin/teams", {"name": "cached-team"})
    assert team.status_code == 201, team.text
    team_id = team.json()["id"]
    member_key = new_key(system, admin, team_id=team_id)
    system.cli("teams", "update", team_id, "--cache", "--cache-ttl", "300")
    shown = admin_call(system, admin, "GET", f"/v1/admin/teams/{team_id}")
    assert shown.json()["cache"] == {"cache_enabled": True, "cache_ttl_s": 300}

    settle(system, member_key)
    body = question("team")
    calls = sim_count(system)
    first, second = ask_twice(system, member_key, body)
    assert first.headers["x-switchyard-cache"] == "miss"
    assert second.headers["x-switchyard-cache"] == "hit"
    assert sim_count(system) == calls + 1


def test_bad_cache_settings_get_the_admin_apis_error_object(system, admin):
    key = new_key(system, admin)
    path = f"/v1/admin/api-keys/{key['key_id']}"
    negative = admin_call(system, admin, "PATCH", path, {"cache_ttl_s": -1})
    assert negative.status_code == 400, negative.text
    assert negative.json()["error"]["param"] == "cache_ttl_s"
    unknown = admin_call(
        system, admin, "PATCH", "/v1/admin/teams/no-such-team", {"cache_enabled": True}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "team_not_found"
    # Another tenant's key is invisible to this admin.
    email = f"elsewhere-{uuid.uuid4().hex[:8]}@example.com"
    system.cli("users", "create", "--email", email, "--tenant", "elsewhere", "--no-password")
    foreign = json.loads(system.cli("keys", "create", "--email", email, "--json"))["key_id"]
    other = admin_call(
        system, admin, "PATCH", f"/v1/admin/api-keys/{foreign}", {"cache_enabled": True}
    )
    assert other.status_code == 404 and other.json()["error"]["code"] == "api_key_not_found"
