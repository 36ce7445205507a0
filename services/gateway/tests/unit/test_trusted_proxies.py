"""`SWITCHYARD_GATEWAY_FORWARDED_ALLOW_IPS`: behind a trusted proxy (an Ingress), a
request is taken as from the address the proxy names in `X-Forwarded-For`, so auth's
per-address sign-in limits tell clients apart; a client's own `X-Forwarded-For` entries
never count, and without the setting every request is from its TCP peer. (The test
client's peer is 127.0.0.1.)"""

from __future__ import annotations

import httpx
import pytest

from switchyard.common.settings import SettingsError
from switchyard.gateway.config import Settings

from .conftest import Harness


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"forwarded_allow_ips": ["127.0.0.0/8"]})


async def _sign_in_forwarded_for(harness: Harness, forwarded_for: str | None) -> str:
    """The `X-Forwarded-For` auth gets for a sign-in sent with `forwarded_for`."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401, json={"error": {"message": "no", "type": "auth_error"}})

    assert harness.upstreams is not None
    harness.upstreams.route = handle
    headers = {"x-forwarded-for": forwarded_for} if forwarded_for else {}
    answer = await harness.client.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": "a@example.com", "password": "x"},
        headers=headers,
    )
    assert answer.status_code == 401, answer.text
    return seen[-1].headers["x-forwarded-for"]


async def test_the_client_a_trusted_proxy_names_reaches_auth_last(harness):
    forwarded = await _sign_in_forwarded_for(harness, "198.51.100.7")
    assert forwarded.split(", ")[-1] == "198.51.100.7"


async def test_entries_a_client_wrote_itself_do_not_count(harness):
    # The client sent `6.6.6.6`; the proxy appended the address it saw.
    forwarded = await _sign_in_forwarded_for(harness, "6.6.6.6, 198.51.100.7")
    assert forwarded.split(", ")[-1] == "198.51.100.7"


async def test_a_request_without_the_header_is_from_its_peer(harness):
    assert (await _sign_in_forwarded_for(harness, None)).split(", ")[-1] == "127.0.0.1"


def test_the_setting_takes_addresses_and_networks_only(monkeypatch):
    monkeypatch.setenv("SWITCHYARD_GATEWAY_FORWARDED_ALLOW_IPS", "10.0.0.0/8, 192.0.2.1")
    assert Settings().forwarded_allow_ips == ["10.0.0.0/8", "192.0.2.1/32"]
    for value in ("*", "proxy.internal", "10.0.0.0/33"):
        monkeypatch.setenv("SWITCHYARD_GATEWAY_FORWARDED_ALLOW_IPS", value)
        with pytest.raises(SettingsError, match="SWITCHYARD_GATEWAY_FORWARDED_ALLOW_IPS"):
            Settings()
    monkeypatch.delenv("SWITCHYARD_GATEWAY_FORWARDED_ALLOW_IPS")
    assert Settings().forwarded_allow_ips == []
