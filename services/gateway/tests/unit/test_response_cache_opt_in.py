"""The response cache opt-in of API keys and teams, as the gateway applies it: auth's
policy of the caller carries it (faked here), the precedence is request header > key >
team > tenant > default, and each level's TTL is the one stored answers get."""

from __future__ import annotations

import json

import httpx
import pytest

from .conftest import API_KEY
from .history_fakes import install
from .test_response_cache import BODY, async_wait_until

KEY = {"Authorization": f"Bearer {API_KEY}"}


def policy_with(harness, *, key: dict | None = None, team: dict | None = None) -> list:
    """Make the fake auth answer the policy of the test key (key-1 of user-1, in team
    `team-1` when `team` is given) with these cache opt-ins; callers auth does not know
    (the JWT user) get a 404, so no opt-in. Returns the policy requests seen."""
    seen: list = []
    original = harness.auth.handle

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/internal/v1/policy":
            return original(request)
        seen.append(dict(request.url.params))
        if request.url.params.get("key_id") != "key-1":
            return httpx.Response(404, json={"error": {"message": "No such user or API key."}})
        levels = {
            "api_key": {"id": "key-1", "limits": {}, "budget_anchor_at": None, **(key or {})},
            "user": {"id": "user-1", "limits": {}, "budget_anchor_at": None},
            "tenant": {"id": "acme", "limits": {}, "budget_anchor_at": None},
        }
        if team is not None:
            levels["team"] = {"id": "team-1", "limits": {}, "budget_anchor_at": None, **team}
        return httpx.Response(
            200,
            json={
                "tenant": "acme",
                "team_id": "team-1" if team is not None else None,
                "levels": levels,
                "rate_limit_failure_mode": "open",
                "budget_failure_mode": "closed",
            },
        )

    harness.auth.handle = handle
    return seen


@pytest.fixture
def jwt_caller(harness) -> dict:
    """Another caller of the same tenant (a signed-in user, no key, no opt-in)."""
    return {"Authorization": f"Bearer {harness.auth.token(scopes=['chat'])}"}


async def post(harness, headers: dict) -> httpx.Response:
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=headers)
    assert response.status_code == 200, response.text
    return response


async def test_a_key_opted_in_gets_hits_and_another_caller_of_the_tenant_does_not(
    harness, jwt_caller
):
    policy_with(harness, key={"cache_enabled": True})
    history = await install(harness)

    first = await post(harness, KEY)
    await async_wait_until(lambda: history.cache, timeout=5)
    second = await post(harness, KEY)
    others = [await post(harness, jwt_caller) for _ in range(2)]

    assert first.headers["x-switchyard-cache"] == "miss"
    assert second.headers["x-switchyard-cache"] == "hit"
    assert second.json() == first.json()
    # The other caller is not opted in: untouched, and both of its requests reach a model.
    assert all("x-switchyard-cache" not in other.headers for other in others)
    assert len(harness.requests) == 3


async def test_a_team_opted_in_gets_hits_with_the_teams_ttl(harness):
    policy_with(harness, team={"cache_enabled": True, "cache_ttl_s": 120})
    history = await install(harness)

    await post(harness, KEY)
    await async_wait_until(lambda: history.cache, timeout=5)
    hit = await post(harness, KEY)

    assert hit.headers["x-switchyard-cache"] == "hit"
    [put] = [call for call in history.calls if call.method == "PUT"]
    assert json.loads(put.content)["ttl_s"] == 120
    assert len(harness.requests) == 1


async def test_the_key_overrides_its_team_and_tenant_and_the_header_overrides_the_key(harness):
    policy_with(
        harness,
        key={"cache_enabled": False},
        team={"cache_enabled": True, "cache_ttl_s": 3600},
    )
    history = await install(harness)
    history.cache_enabled.add("acme")

    off = [await post(harness, KEY) for _ in range(2)]
    assert all("x-switchyard-cache" not in response.headers for response in off)
    assert not [call for call in history.calls if "/entries/" in call.url.path]

    # A request asking for it still gets it, with the team's TTL (the key sets none).
    asked = KEY | {"X-Switchyard-Cache": "on"}
    assert (await post(harness, asked)).headers["x-switchyard-cache"] == "miss"
    await async_wait_until(lambda: history.cache, timeout=5)
    assert (await post(harness, asked)).headers["x-switchyard-cache"] == "hit"
    [put] = [call for call in history.calls if call.method == "PUT"]
    assert json.loads(put.content)["ttl_s"] == 3600
    assert len(harness.requests) == 3


async def test_the_keys_ttl_wins_over_the_teams_and_the_headers_over_both(harness):
    policy_with(harness, key={"cache_ttl_s": 30}, team={"cache_enabled": True, "cache_ttl_s": 900})
    history = await install(harness)

    await post(harness, KEY)
    await post(harness, KEY | {"X-Switchyard-Cache": "refresh", "X-Switchyard-Cache-TTL": "7"})
    await async_wait_until(
        lambda: len([call for call in history.calls if call.method == "PUT"]) == 2, timeout=5
    )
    puts = [json.loads(call.content)["ttl_s"] for call in history.calls if call.method == "PUT"]
    assert sorted(puts) == [7, 30]


async def test_a_team_turning_it_off_overrides_the_tenant(harness):
    policy_with(harness, team={"cache_enabled": False})
    history = await install(harness)
    history.cache_enabled.add("acme")
    for _ in range(2):
        assert "x-switchyard-cache" not in (await post(harness, KEY)).headers
    assert len(harness.requests) == 2


def test_the_narrowest_level_that_sets_each_setting_decides():
    from switchyard.gateway.cache import TenantCacheSettings
    from switchyard.gateway.governance.policy import CacheOptIn

    tenant = TenantCacheSettings(enabled=True, ttl_s=60)
    assert tenant.with_opt_ins(()) == tenant
    key_off = (CacheOptIn("api_key", False, None), CacheOptIn("team", True, 10))
    assert tenant.with_opt_ins(key_off) == TenantCacheSettings(enabled=False, ttl_s=10)
