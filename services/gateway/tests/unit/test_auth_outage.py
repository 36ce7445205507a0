"""Auth unreachable: callers it vouched for lately keep being served from the gateway's
cached answers past their TTL (stale-if-error, `SWITCHYARD_GATEWAY_AUTH_STALE_IF_ERROR_S`),
while revocations and refusals still apply; callers it never vouched for get a 503 the
operator can see (a counter and a log line); a gateway started with auth down answers a
token 503, never 401."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client import REGISTRY

from switchyard.common.events import ApiKeyRevoked, ApiKeyRevokedData, new_id
from switchyard.gateway import auth as gateway_auth
from switchyard.gateway.config import Settings
from switchyard.gateway.governance.policy import PolicySource, PolicyUnavailable

from .auth_double import AuthDouble, gateway_with

BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}
TTL_S = 0.05


def settings(stale_s: float) -> Settings:
    return Settings(
        request_timeout_s=2.0,
        topic_prefix="unit-auth-outage",
        api_key_cache_ttl_s=TTL_S,
        policy_cache_ttl_s=TTL_S,
        auth_stale_if_error_s=stale_s,
    )


async def status_of(gw, credential: str) -> int:
    response = await gw.client.post(
        "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {credential}"}
    )
    return response.status_code


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_callers_auth_vouched_for_are_served_while_it_is_down() -> None:
    auth = AuthDouble()
    async with gateway_with(auth, settings(stale_s=60)) as gw:
        known, revoked, unseen = auth.add_api_key(), auth.add_api_key(), auth.add_api_key()
        token = auth.token()
        for credential in (known.key, revoked.key, token):
            assert await status_of(gw, credential) == 200
        stale_before = {
            lookup: counted("switchyard_gateway_auth_stale_answers_total", lookup=lookup)
            for lookup in ("api_key", "user", "policy")
        }
        refused_before = counted(
            "switchyard_gateway_requests_rejected_total", reason="auth_unavailable"
        )

        auth.down = True
        await asyncio.sleep(TTL_S * 2)  # every cached answer is past its TTL
        await gw.publish_auth_event(
            ApiKeyRevoked(
                source="auth",
                tenant="acme",
                request_id=new_id(),
                data=ApiKeyRevokedData(key_id=revoked.key_id, user_id=revoked.user_id),
            )
        )
        deadline = time.monotonic() + 5
        while await status_of(gw, revoked.key) != 401:  # revocations still apply
            assert time.monotonic() < deadline, "the revocation never applied"
            await asyncio.sleep(0.05)
        await asyncio.sleep(TTL_S * 2)  # and the refusal's own TTL is past
        assert await status_of(gw, revoked.key) == 401

        assert await status_of(gw, known.key) == 200
        assert await status_of(gw, token) == 200
        assert await status_of(gw, unseen.key) == 503  # never vouched for: not guessed
        # Auth is asked again at most every few seconds per caller, not on each request.
        calls = len(auth.calls)
        for _ in range(5):
            assert await status_of(gw, known.key) == 200
        assert len(auth.calls) == calls

        for lookup in ("api_key", "user", "policy"):
            now = counted("switchyard_gateway_auth_stale_answers_total", lookup=lookup)
            assert now > stale_before[lookup], lookup
        refused = counted("switchyard_gateway_requests_rejected_total", reason="auth_unavailable")
        assert refused == refused_before + 1

        auth.down = False
        new_key = auth.add_api_key()
        assert await status_of(gw, new_key.key) == 200


async def known_key_past_its_ttl(gw, auth: AuthDouble, **failure) -> str:
    """A key auth vouched for, with auth failing since as `failure` sets the double (by
    default: down) and the answer past its TTL."""
    known = auth.add_api_key()
    assert await status_of(gw, known.key) == 200
    for name, value in (failure or {"down": True}).items():
        setattr(auth, name, value)
    await asyncio.sleep(TTL_S * 2)
    return known.key


async def test_stale_answers_end_at_their_bound() -> None:
    auth = AuthDouble()
    async with gateway_with(auth, settings(stale_s=0.3)) as gw:
        key = await known_key_past_its_ttl(gw, auth)
        assert await status_of(gw, key) == 200
        deadline = time.monotonic() + 5
        while await status_of(gw, key) == 200:
            assert time.monotonic() < deadline, "a stale answer outlived its bound"
            await asyncio.sleep(0.05)
        assert await status_of(gw, key) == 503


async def test_without_a_stale_bound_an_expired_answer_waits_for_auth() -> None:
    auth = AuthDouble()
    async with gateway_with(auth, settings(stale_s=0)) as gw:
        assert await status_of(gw, await known_key_past_its_ttl(gw, auth)) == 503


async def test_a_gateway_started_while_auth_is_down_answers_a_token_503_not_401() -> None:
    auth = AuthDouble(down=True)
    async with gateway_with(auth, settings(stale_s=60)) as gw:
        token = auth.token()
        response = await gw.client.post(
            "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "auth_unavailable"

        auth.down = False
        deadline = time.monotonic() + 10
        while await status_of(gw, token) != 200:
            assert time.monotonic() < deadline, "the token was never accepted"
            await asyncio.sleep(0.1)


async def test_an_auth_answering_503_is_ridden_out_but_not_one_answering_401(
    monkeypatch,
) -> None:
    """429 and 5xx are an outage; any other status (a wrong internal token: 401) is a
    misconfiguration that stale answers must not hide."""
    monkeypatch.setattr(gateway_auth, "STALE_RETRY_S", 0.2)
    auth = AuthDouble()
    async with gateway_with(auth, settings(stale_s=60)) as gw:
        key = await known_key_past_its_ttl(gw, auth, answer_status=503)
        assert await status_of(gw, key) == 200

        auth.answer_status = 401
        await asyncio.sleep(0.3)  # past the outage's retry window: auth is asked again
        assert await status_of(gw, key) == 503


async def test_a_hung_auth_holds_a_caller_it_vouched_for_at_most_briefly(monkeypatch) -> None:
    """Auth not answering (each call waits out its timeout): a caller with a cached answer
    is served it after `STALE_WAIT_S`, not after auth's timeout, and later ones at once."""
    # Waits far enough apart that a loaded machine cannot blur them: the first caller
    # is served well before the hang ends, later ones well before `STALE_WAIT_S`.
    stale_wait_s, hang_s = 1.0, 3.0
    monkeypatch.setattr(gateway_auth, "STALE_WAIT_S", stale_wait_s)
    auth = AuthDouble()
    async with gateway_with(auth, settings(stale_s=60)) as gw:
        key = await known_key_past_its_ttl(gw, auth, hang_s=hang_s)

        started = time.monotonic()
        assert await status_of(gw, key) == 200
        first = time.monotonic() - started
        await asyncio.sleep(hang_s + 0.1)  # the hung lookup times out: auth is known down
        started = time.monotonic()
        assert await status_of(gw, key) == 200
        later = time.monotonic() - started

        assert first < hang_s - 0.5, first
        assert later < stale_wait_s - 0.1, later


async def test_a_policy_invalidated_by_a_limit_change_is_not_served_stale() -> None:
    """Auth down: a caller's policy past its TTL stands in for auth's answer, unless a limit
    change (an auth event) invalidated it; then its limits are unknown (PolicyUnavailable,
    503 `limits_unavailable`), never the old ones."""
    down = False

    def handle(request: httpx.Request) -> httpx.Response:
        if down:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(404)  # no limits for this caller

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    policies = PolicySource(
        lambda: client,
        auth_url="http://127.0.0.1:1",
        internal_token="t",
        ttl_s=TTL_S,
        stale_if_error_s=60,
    )
    try:
        first = await policies.get("u1", "k1")
        await policies.get("u2", "k2")
        down = True
        await asyncio.sleep(TTL_S * 2)

        assert await policies.get("u1", "k1") is first  # stale, within its bound
        policies.invalidate("user", "u2")
        with pytest.raises(PolicyUnavailable):
            await policies.get("u2", "k2")
    finally:
        await client.aclose()


async def test_a_flood_of_unknown_keys_evicts_no_known_caller(monkeypatch) -> None:
    monkeypatch.setattr(gateway_auth, "MAX_CACHED_UNKNOWN_KEYS", 8)
    auth = AuthDouble()
    async with gateway_with(auth, settings(stale_s=60)) as gw:
        known = auth.add_api_key()
        assert await status_of(gw, known.key) == 200
        for n in range(3 * 8):  # three times what the unknown keys' cache holds
            assert await status_of(gw, f"{gateway_auth.API_KEY_PREFIX}random-{n}") == 401
        assert auth.count("/internal/v1/api-keys/lookup") == 1 + 3 * 8
        auth.down = True
        await asyncio.sleep(TTL_S * 2)
        assert await status_of(gw, known.key) == 200  # its answer outlived the flood
