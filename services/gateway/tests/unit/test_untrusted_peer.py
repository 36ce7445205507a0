"""Without `SWITCHYARD_GATEWAY_FORWARDED_ALLOW_IPS`, a client's `X-Forwarded-For` never
decides its address: auth gets the gateway's TCP peer last, whatever the client wrote."""

from __future__ import annotations

from .test_trusted_proxies import _sign_in_forwarded_for


async def test_a_clients_own_header_is_not_believed(harness):
    forwarded = await _sign_in_forwarded_for(harness, "198.51.100.7")
    assert forwarded == "198.51.100.7, 127.0.0.1"
