"""A request header whose value is not ASCII (any octet a client may send, read by
Starlette as Latin-1) reaches the service a route forwards to with its own octets, on the
auth routes the gateway forwards and on the history routes it calls: never a 500 from the
HTTP client refusing to encode it."""

from __future__ import annotations

import httpx
import pytest

from .conftest import API_KEY
from .history_fakes import install
from .test_blank_credentials import auth_over_the_wire

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.parametrize("name", ["user-agent", "accept", "content-type", "x-forwarded-for"])
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/auth/token"), ("GET", "/v1/me"), ("GET", "/v1/api-keys")]
)
async def test_a_non_ascii_header_reaches_auth_with_its_own_octets(harness, name, method, path):
    seen: list[httpx.Request] = []
    gateway = harness.app.state.gateway
    gateway.http = httpx.AsyncClient(transport=httpx.MockTransport(auth_over_the_wire(seen)))
    response = await harness.client.request(
        method, path, headers=[(b"authorization", b"Bearer a.b.c"), (name.encode(), b"caf\xe9")]
    )
    assert response.status_code == 200, response.text
    [forwarded] = seen
    assert dict(forwarded.headers.raw)[name.encode()].startswith(b"caf\xe9")


async def test_a_non_ascii_bearer_on_a_forwarded_route_is_auths_answer_not_a_500(harness):
    seen: list[httpx.Request] = []
    gateway = harness.app.state.gateway
    gateway.http = httpx.AsyncClient(transport=httpx.MockTransport(auth_over_the_wire(seen)))
    response = await harness.client.get("/v1/me", headers=[(b"authorization", b"Bearer \xc3\xbc")])
    assert response.status_code == 200, response.text
    assert (b"authorization", b"Bearer \xc3\xbc") in seen[0].headers.raw


@pytest.mark.parametrize("path", ["/v1/history", "/v1/usage", "/v1/jobs"])
async def test_a_non_ascii_accept_reaches_history_with_its_own_octets(harness, path):
    history = await install(harness)
    response = await harness.client.get(
        path, headers=[(b"authorization", AUTH["Authorization"].encode()), (b"accept", b"t/\xe9")]
    )
    assert response.status_code == 200, response.text
    assert (b"accept", b"t/\xe9") in history.calls[-1].headers.raw
