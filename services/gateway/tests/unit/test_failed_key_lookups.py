"""API keys auth does not know are limited per client address: past the limit, a key that
would need a lookup is refused with 429 in the called API's own format without reaching
auth, while keys known to be valid, and every other address, are served as before."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from switchyard.common.sliding_window import SlidingWindowLimiter, client_key
from switchyard.common.testing.infra import async_wait_until
from switchyard.gateway.config import Settings

from .auth_double import AuthDouble, GatewayUnderTest, gateway_with

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {**CHAT, "max_tokens": 16}
LOOKUP = "/internal/v1/api-keys/lookup"
ATTACKER = "203.0.113.7"
NEIGHBOUR = "198.51.100.20"


def unknown_key() -> str:
    return "sk-sy-" + uuid.uuid4().hex + uuid.uuid4().hex


def settings(limit: int = 5) -> Settings:
    return Settings(
        request_timeout_s=2.0,
        topic_prefix="unit-failed-lookups",
        api_key_failed_lookups_per_address=limit,
    )


def client_from(gw: GatewayUnderTest, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=gw.app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


async def chat(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
    )


async def test_an_address_past_the_limit_gets_429_and_auth_is_not_asked() -> None:
    auth = AuthDouble()
    async with gateway_with(auth, settings(limit=5)) as gw:
        async with client_from(gw, ATTACKER) as attacker:
            for _ in range(5):
                assert (await chat(attacker, unknown_key())).status_code == 401
            assert auth.count(LOOKUP) == 5
            refused = await chat(attacker, unknown_key())
            anthropic = await attacker.post(
                "/v1/messages", json=MESSAGES, headers={"x-api-key": unknown_key()}
            )
    assert auth.count(LOOKUP) == 5
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    error = refused.json()["error"]
    assert error["code"] == "too_many_failed_authentications"
    assert error["type"] == "rate_limit_error"
    assert "retry after" in error["message"]
    assert anthropic.status_code == 429
    body = anthropic.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert anthropic.headers["retry-after"] == refused.headers["retry-after"]


async def test_known_keys_and_other_addresses_are_unaffected() -> None:
    auth = AuthDouble()
    async with gateway_with(auth, settings(limit=3)) as gw:
        known = auth.add_api_key()
        new_key = auth.add_api_key()
        async with client_from(gw, ATTACKER) as attacker, client_from(gw, NEIGHBOUR) as other:
            assert (await chat(attacker, known.key)).status_code == 200
            for _ in range(3):
                assert (await chat(attacker, unknown_key())).status_code == 401
            assert (await chat(attacker, unknown_key())).status_code == 429
            # A key cached as valid is served from that answer: no lookup is needed.
            assert (await chat(attacker, known.key)).status_code == 200
            # The same unknown key, still cached as unknown, is refused as before (401).
            # A key never seen from this address needs auth: 429, even a valid one.
            assert (await chat(attacker, new_key.key)).status_code == 429
            # Another client is not held up by the flood.
            assert (await chat(other, new_key.key)).status_code == 200
            assert (await chat(other, unknown_key())).status_code == 401


async def test_a_key_auth_vouches_for_is_not_a_failure() -> None:
    auth = AuthDouble()
    async with gateway_with(auth, settings(limit=3)) as gw:
        keys = [auth.add_api_key() for _ in range(10)]
        async with client_from(gw, ATTACKER) as client:
            for _ in range(2):
                assert (await chat(client, unknown_key())).status_code == 401
            for record in keys:
                assert (await chat(client, record.key)).status_code == 200
            assert (await chat(client, unknown_key())).status_code == 401
            assert (await chat(client, unknown_key())).status_code == 429


async def test_keys_sent_at_once_get_no_more_lookups_than_the_limit() -> None:
    auth = AuthDouble()
    async with gateway_with(auth, settings(limit=5)) as gw:
        async with client_from(gw, ATTACKER) as client:
            answers = await asyncio.gather(*(chat(client, unknown_key()) for _ in range(40)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [401] * 5 + [429] * 35
    assert auth.count(LOOKUP) == 5


async def test_an_auth_outage_is_not_counted_as_failures() -> None:
    auth = AuthDouble(down=True)
    async with gateway_with(auth, settings(limit=2)) as gw:
        async with client_from(gw, ATTACKER) as client:
            for _ in range(6):
                assert (await chat(client, unknown_key())).status_code == 503
            auth.down = False
            assert (await chat(client, unknown_key())).status_code == 401


async def test_the_window_passes() -> None:
    now = [1000.0]
    auth = AuthDouble()
    async with gateway_with(auth, settings()) as gw:
        gw.gateway.authenticator.failed_lookups = SlidingWindowLimiter(
            2, 60.0, clock=lambda: now[0]
        )
        async with client_from(gw, ATTACKER) as client:
            for _ in range(2):
                assert (await chat(client, unknown_key())).status_code == 401
            refused = await chat(client, unknown_key())
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "60"
            now[0] += 45
            assert (await chat(client, unknown_key())).headers["retry-after"] == "15"
            now[0] += 15
            assert (await chat(client, unknown_key())).status_code == 401


async def test_an_ipv6_client_is_counted_per_64() -> None:
    auth = AuthDouble()
    async with gateway_with(auth, settings(limit=2)) as gw:
        for host in ("2001:db8:1:2::1", "2001:db8:1:2::2"):
            async with client_from(gw, host) as client:
                assert (await chat(client, unknown_key())).status_code == 401
        async with client_from(gw, "2001:db8:1:2:ffff::9") as client:
            assert (await chat(client, unknown_key())).status_code == 429
        async with client_from(gw, "2001:db8:1:3::1") as client:
            assert (await chat(client, unknown_key())).status_code == 401


async def test_no_limit_when_set_to_zero() -> None:
    auth = AuthDouble()
    async with gateway_with(auth, settings(limit=0)) as gw:
        assert gw.gateway.authenticator.failed_lookups is None
        async with client_from(gw, ATTACKER) as client:
            for _ in range(40):
                assert (await chat(client, unknown_key())).status_code == 401
    assert auth.count(LOOKUP) == 40


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("[2001:db8::1]", "2001:db8::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("unknown", "unknown"),
        ("proxy.internal", "proxy.internal"),
    ],
)
def test_client_key(host: str, key: str) -> None:
    assert client_key(host) == key


@pytest.mark.parametrize("value", ["-1", "1000001", "x", "1.5"])
def test_the_limit_setting_is_checked(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_GATEWAY_API_KEY_FAILED_LOOKUPS_PER_ADDRESS", value)
    with pytest.raises(ValueError):
        Settings()


async def test_one_new_valid_key_sent_many_times_at_once_is_one_lookup_never_refused() -> None:
    # Requests waiting for the same key's lookup share it: one lookup, one count at most,
    # taken back when auth vouches for the key (after a deploy, every key is new).
    auth = AuthDouble()
    async with gateway_with(auth, settings(limit=3)) as gw:
        fresh = auth.add_api_key()
        async with client_from(gw, ATTACKER) as client:
            answers = await asyncio.gather(*(chat(client, fresh.key) for _ in range(40)))
    assert [answer.status_code for answer in answers] == [200] * 40
    assert auth.count(LOOKUP) == 1


async def test_a_client_that_hangs_up_during_its_lookups_is_still_counted() -> None:
    # The lookup goes on for whoever else waits for the key, and its verdict counts
    # against the address whatever became of the request that started it.
    auth = AuthDouble()
    async with gateway_with(auth, settings(limit=3)) as gw:
        authenticator = gw.gateway.authenticator
        calls = [
            asyncio.ensure_future(
                authenticator.authenticate(f"Bearer {unknown_key()}", None, client=ATTACKER)
            )
            for _ in range(3)
        ]
        await asyncio.sleep(0)
        for call in calls:
            call.cancel()
        await async_wait_until(lambda: asyncio.sleep(0, not authenticator._lookups), timeout=5)
        async with client_from(gw, ATTACKER) as client:
            refused = await chat(client, unknown_key())
    assert refused.status_code == 429
    assert auth.count(LOOKUP) == 3
