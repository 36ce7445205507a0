"""A blank credential (`Authorization: Bearer` followed by blanks, or a blank `x-api-key`)
is a missing one: 401 in the called API's own format, on the gateway's own routes and on
the auth routes it forwards, never a 503 or a lookup."""

from __future__ import annotations

import json

import h11
import httpx
import pytest
from fastapi.security.utils import get_authorization_scheme_param

from .conftest import API_KEY, asgi_scope

BLANK_BEARERS = ["Bearer ", "Bearer    ", "Bearer \t", "Bearer \t  \t", "bearer  "]
CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}


def auth_over_the_wire(seen: list[httpx.Request]):
    """Auth as the gateway reaches it: the request must be one HTTP/1.1 can carry (h11's
    checks, as the gateway's HTTP client applies them), and a bearer without a token is
    auth's 401 `missing_token` (auth reads the header with FastAPI's parser)."""

    def handle(request: httpx.Request) -> httpx.Response:
        try:
            h11.Request(
                method=request.method, target=request.url.raw_path, headers=request.headers.raw
            )
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc
        seen.append(request)
        _, token = get_authorization_scheme_param(request.headers.get("authorization"))
        if not token:
            return httpx.Response(
                401,
                json={
                    "error": {
                        "message": "An access token is required.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "missing_token",
                    }
                },
                headers={"WWW-Authenticate": "Bearer"},
            )
        return httpx.Response(200, json={"object": "list", "data": []})

    return handle


@pytest.mark.parametrize("authorization", [*BLANK_BEARERS, "Bearer"])
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/api-keys"), ("GET", "/v1/me"), ("PATCH", "/v1/admin/api-keys/key-1")],
)
async def test_a_blank_bearer_on_a_forwarded_auth_route_is_auths_401(
    harness, authorization, method, path
):
    seen: list[httpx.Request] = []
    gateway = harness.app.state.gateway
    gateway.http = httpx.AsyncClient(transport=httpx.MockTransport(auth_over_the_wire(seen)))
    response = await harness.client.request(
        method,
        path,
        headers={"Authorization": authorization, "User-Agent": "client/1.0 "},
        json={} if method == "PATCH" else None,
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "missing_token"
    assert response.headers["www-authenticate"] == "Bearer"
    assert [request.headers["authorization"] for request in seen] == [authorization.strip()]


async def test_a_token_still_reaches_auth_unchanged(harness):
    seen: list[httpx.Request] = []
    gateway = harness.app.state.gateway
    gateway.http = httpx.AsyncClient(transport=httpx.MockTransport(auth_over_the_wire(seen)))
    response = await harness.client.get("/v1/api-keys", headers={"Authorization": "Bearer  a.b.c "})
    assert response.status_code == 200, response.text
    assert seen[0].headers["authorization"] == "Bearer  a.b.c"


async def test_a_header_http_cannot_carry_is_a_400_not_auth_unavailable(harness):
    gateway = harness.app.state.gateway
    gateway.http = httpx.AsyncClient(transport=httpx.MockTransport(auth_over_the_wire([])))
    response = await harness.client.get(
        "/v1/api-keys", headers={"Authorization": "Bearer a.b.c", "User-Agent": "x\x00y"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "a.b.c" not in error["message"]


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": value} for value in BLANK_BEARERS]
    + [{"x-api-key": " "}, {"x-api-key": " \t "}, {"Authorization": "Bearer  ", "x-api-key": ""}],
)
async def test_a_blank_credential_on_chat_completions_is_an_openai_401(harness, headers):
    response = await harness.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert harness.requests == []


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": value} for value in BLANK_BEARERS]
    + [{"x-api-key": " "}, {"x-api-key": " \t "}, {"Authorization": "Bearer  ", "x-api-key": ""}],
)
async def test_a_blank_credential_on_messages_is_an_anthropic_401(harness, headers):
    response = await harness.client.post(
        "/v1/messages", json={**CHAT, "max_tokens": 16}, headers=headers
    )
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert harness.requests == []


async def test_a_blank_bearer_beside_a_valid_api_key_uses_the_key(harness):
    response = await harness.client.post(
        "/v1/messages",
        json={**CHAT, "max_tokens": 16},
        headers={"Authorization": "Bearer   ", "x-api-key": API_KEY},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/api-keys/.."),
        ("PATCH", "/v1/admin/users/."),
        ("PATCH", "/v1/admin/teams/%2e%2e"),
        ("DELETE", "/v1/admin/api-keys/%2E."),
    ],
)
async def test_a_dot_segment_on_a_forwarded_auth_route_is_a_404_never_another_path(
    harness, method, path
):
    # Sent as is (`curl --path-as-is`): the route matches with `..` as the id, and the URL
    # parser would have removed the segment, calling auth's `/v1` instead.
    seen: list[httpx.Request] = []
    gateway = harness.app.state.gateway
    gateway.http = httpx.AsyncClient(transport=httpx.MockTransport(auth_over_the_wire(seen)))
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    decoded = path.replace("%2e", ".").replace("%2E", ".")
    await harness.app(asgi_scope(method, decoded, raw_path=path.encode()), receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 404, body
    error = json.loads(body)["error"]
    assert error["code"] == "not_found" and set(error) == {"message", "type", "param", "code"}
    assert seen == []
