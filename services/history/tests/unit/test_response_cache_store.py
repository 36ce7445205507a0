"""The response cache's shared store (history side): entries per tenant with a time to
live, no content kept for metadata-only tenants, purges; and cache hits counted with
their savings in history and the usage reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from switchyard.common.events import TerminalStatus, TokenUsage, UsageData, UsageRecorded
from switchyard.history.cache import CacheStore

KEY = "a" * 64
ENTRY = {
    "api": "openai.chat_completions",
    "model": "sim-small",
    "response": {"object": "chat.completion", "choices": []},
    "stream_events": None,
    "source_request_id": "r1",
    "ttl_s": 60,
}


async def test_entries_are_per_tenant_and_expire(engine):
    store = CacheStore(engine)
    now = datetime.now(UTC)
    values = {k: v for k, v in ENTRY.items() if k != "ttl_s"}
    await store.put("acme", KEY, **values, ttl_s=60, now=now)
    assert (await store.get("acme", KEY)).response == ENTRY["response"]
    assert await store.get("globex", KEY) is None
    assert await store.get("acme", KEY, now=now + timedelta(seconds=61)) is None
    await store.put("globex", KEY, **values, ttl_s=1, now=now - timedelta(seconds=5))
    assert await store.purge(expired_only=True) == 1
    assert await store.purge(tenant="acme", model="other") == 0
    assert await store.purge(tenant="acme") == 1


async def test_cache_api_stores_nothing_for_metadata_only_tenants(service):
    headers = service.headers()
    url = f"/internal/v1/cache/entries/{KEY}"
    assert (await service.client.put(url, json=ENTRY, headers=headers)).json()["stored"] is True
    found = await service.client.get(url, headers=headers)
    assert found.status_code == 200 and found.json()["source_request_id"] == "r1"
    other = await service.client.get(url, headers=service.headers(tenant="globex"))
    assert other.status_code == 404

    await service.client.put(
        "/v1/history/settings",
        json={"store_content": False},
        headers=service.headers(role="admin"),
    )
    settings = (await service.client.get("/internal/v1/cache/settings", headers=headers)).json()
    assert settings["store_content"] is False
    refused = await service.client.put(url, json={**ENTRY, "model": "m2"}, headers=headers)
    assert refused.json()["stored"] is False


async def test_an_entry_keeps_the_headers_describing_its_body(service):
    headers = service.headers()
    url = f"/internal/v1/cache/entries/{KEY}"
    kept = {**ENTRY, "headers": {"x-switchyard-token-count": "exact"}}
    assert (await service.client.put(url, json=kept, headers=headers)).json()["stored"] is True
    found = (await service.client.get(url, headers=headers)).json()
    assert found["headers"] == {"x-switchyard-token-count": "exact"}
    # Without any, the entry reads as before: no `headers` member.
    await service.client.put(url, json=ENTRY, headers=headers)
    assert "headers" not in (await service.client.get(url, headers=headers)).json()
    for bad in (
        {"X-Upper": "v"},
        {"x-control": "a\r\nb"},
        {f"x-{n}": "v" for n in range(9)},
        {"x-long": "v" * 257},
    ):
        refused = await service.client.put(url, json={**ENTRY, "headers": bad}, headers=headers)
        assert refused.status_code == 400, bad


async def test_cache_api_refuses_bad_keys_and_ttls(service):
    headers = service.headers()
    assert (
        await service.client.get("/internal/v1/cache/entries/not-a-key", headers=headers)
    ).status_code in (400, 404)
    bad_ttl = await service.client.put(
        f"/internal/v1/cache/entries/{KEY}", json={**ENTRY, "ttl_s": 0}, headers=headers
    )
    assert bad_ttl.status_code == 400
    no_identity = await service.client.get(
        "/internal/v1/cache/settings",
        headers={"x-switchyard-internal-token": "test-internal-token"},
    )
    assert no_identity.status_code == 401


async def test_hits_and_savings_show_in_history_and_usage(service, events):
    original = events.requested(prompt="Hello")
    await service.publish(original, events.completed(original), events.usage(original))
    hit = events.requested(prompt="Hello")
    await service.publish(hit, events.completed(hit))
    await service.publish(
        UsageRecorded(
            source="gateway",
            tenant=hit.tenant,
            request_id=hit.request_id,
            data=UsageData(
                api=hit.data.api,
                model=hit.data.model,
                user_id=hit.data.user_id,
                api_key_id=hit.data.api_key_id,
                status=TerminalStatus.COMPLETED,
                usage=TokenUsage(),
                cost_usd=0,
                upstream_calls=0,
                cache_hit=True,
                saved_cost_usd=0.0021,
            ),
        )
    )
    item = await service.wait_for(hit.request_id, "completed")
    assert item["cache_hit"] is True
    usage = (
        await service.client.get(
            "/v1/usage",
            params={"since": "2025-01-01", "until": "2026-01-01", "group_by": "model"},
            headers=service.headers(),
        )
    ).json()
    assert usage["totals"]["requests"] == 2
    assert usage["totals"]["cache_hits"] == 1
    assert usage["totals"]["cache_saved_usd"] == 0.0021
    assert usage["totals"]["cost_usd"] == 0.0021  # the hit cost nothing
