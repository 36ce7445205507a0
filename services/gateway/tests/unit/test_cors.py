"""CORS: configured origins, methods and headers; deny by default outside development."""

from __future__ import annotations

import pytest

from switchyard.common.settings import SettingsError
from switchyard.gateway.config import Settings

from .auth_double import gateway_with

PRODUCTION = {"environment": "production", "internal_token": "a-real-secret"}
PREFLIGHT = {
    "Origin": "https://app.example.com",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


async def test_preflight_from_an_allowed_origin_is_answered() -> None:
    settings = Settings(
        **PRODUCTION,
        topic_prefix="unit-cors",
        cors_allow_origins="https://app.example.com, https://admin.example.com",
        cors_allow_headers="authorization,content-type,x-api-key",
    )
    async with gateway_with(settings=settings) as gw:
        response = await gw.client.options("/v1/chat/completions", headers=PREFLIGHT)
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "POST" in response.headers["access-control-allow-methods"]
        assert "PATCH" in response.headers["access-control-allow-methods"]  # /v1/api-keys/{id}
        allowed_headers = response.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed_headers and "content-type" in allowed_headers
        assert response.headers["access-control-max-age"] == "600"
        assert "access-control-allow-credentials" not in response.headers
        # No credentials were needed for the preflight, and none were checked.
        assert gw.auth.count("/internal/v1/api-keys/lookup") == 0

        # The actual request, even refused, carries the CORS headers the browser needs.
        refused = await gw.client.post(
            "/v1/chat/completions", json={}, headers={"Origin": "https://app.example.com"}
        )
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "https://app.example.com"
        exposed = [
            name.strip()
            for name in refused.headers["access-control-expose-headers"].lower().split(",")
        ]
        # What a browser client needs to read: the request id, when to retry, its rate
        # limits in either API's names, whether a token count is exact.
        for name in (
            "x-request-id",
            "retry-after-ms",
            "x-ratelimit-remaining-tokens",
            "anthropic-ratelimit-requests-reset",
            "x-switchyard-token-count",
        ):
            assert name in exposed, name


async def test_preflight_from_another_origin_is_refused() -> None:
    settings = Settings(
        **PRODUCTION, topic_prefix="unit-cors", cors_allow_origins=["https://app.example.com"]
    )
    async with gateway_with(settings=settings) as gw:
        response = await gw.client.options(
            "/v1/chat/completions", headers={**PREFLIGHT, "Origin": "https://evil.example"}
        )
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers
        disallowed_method = await gw.client.options(
            "/v1/chat/completions",
            headers={**PREFLIGHT, "Access-Control-Request-Method": "TRACE"},
        )
        assert disallowed_method.status_code == 400


async def test_outside_development_nothing_is_allowed_by_default() -> None:
    settings = Settings(**PRODUCTION, topic_prefix="unit-cors")
    assert settings.effective_cors_origins() == []
    async with gateway_with(settings=settings) as gw:
        response = await gw.client.options("/v1/chat/completions", headers=PREFLIGHT)
        assert "access-control-allow-origin" not in response.headers
        token = gw.auth.token()
        simple = await gw.client.get(
            "/v1/models",
            headers={"Origin": "https://app.example.com", "Authorization": f"Bearer {token}"},
        )
        assert simple.status_code == 200
        assert "access-control-allow-origin" not in simple.headers


async def test_development_allows_any_origin_by_default() -> None:
    settings = Settings(environment="development", topic_prefix="unit-cors")
    async with gateway_with(settings=settings) as gw:
        response = await gw.client.options(
            "/v1/chat/completions", headers={**PREFLIGHT, "Origin": "http://localhost:5173"}
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("environment", ["development", "production"])
async def test_the_console_answers_no_other_origin_whatever_the_api_allows(environment) -> None:
    """The console's pages and forms are for its own origin: a browser on another origin
    may call the API (as configured) but not read or post to the console."""
    options = PRODUCTION if environment == "production" else {"environment": environment}
    settings = Settings(
        **options, topic_prefix="unit-cors", cors_allow_origins="http://localhost:5173"
    )
    origin = {"Origin": "http://localhost:5173"}
    async with gateway_with(settings=settings) as gw:
        api = await gw.client.options("/v1/models", headers={**PREFLIGHT, **origin})
        assert api.headers["access-control-allow-origin"] == "http://localhost:5173"
        for path in ("/ui", "/ui/", "/ui/login", "/ui/static/app.css"):
            page = await gw.client.get(path, headers=origin)
            assert "access-control-allow-origin" not in page.headers, path
            preflight = await gw.client.options(path, headers={**PREFLIGHT, **origin})
            assert "access-control-allow-origin" not in preflight.headers, path
            assert preflight.status_code != 200, path


async def test_origins_may_be_given_as_a_regular_expression() -> None:
    settings = Settings(
        **PRODUCTION,
        topic_prefix="unit-cors",
        cors_allow_origin_regex=r"https://[a-z0-9-]+\.example\.com",
    )
    async with gateway_with(settings=settings) as gw:
        ok = await gw.client.options("/v1/models", headers=PREFLIGHT)
        assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
        bad = await gw.client.options(
            "/v1/models", headers={**PREFLIGHT, "Origin": "https://example.com.evil.net"}
        )
        assert "access-control-allow-origin" not in bad.headers


def test_settings_parse_lists_and_refuse_credentials_with_any_origin(monkeypatch) -> None:
    monkeypatch.setenv("SWITCHYARD_GATEWAY_CORS_ALLOW_ORIGINS", '["https://a.example"]')
    monkeypatch.setenv("SWITCHYARD_GATEWAY_CORS_ALLOW_METHODS", "GET, POST")
    settings = Settings(**PRODUCTION)
    assert settings.cors_allow_origins == ["https://a.example"]
    assert settings.cors_allow_methods == ["GET", "POST"]
    monkeypatch.setenv("SWITCHYARD_GATEWAY_CORS_ALLOW_ORIGINS", "*")
    monkeypatch.setenv("SWITCHYARD_GATEWAY_CORS_ALLOW_CREDENTIALS", "true")
    with pytest.raises(SettingsError, match="explicit origins"):
        Settings(**PRODUCTION)


async def test_an_unexpected_faults_500_carries_the_cors_headers_and_request_id(
    monkeypatch,
) -> None:
    # A browser client can read why it failed, and quote the request id.
    from switchyard.gateway import dispatch

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(dispatch.Dispatch, "start", broken)
    settings = Settings(
        **PRODUCTION, topic_prefix="unit-cors", cors_allow_origins="https://app.example.com"
    )
    async with gateway_with(settings=settings) as gw:
        response = await gw.client.post(
            "/v1/chat/completions",
            json={"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]},
            headers={
                "Origin": "https://app.example.com",
                "Authorization": f"Bearer {gw.auth.token()}",
            },
        )
        assert response.status_code == 500
        assert response.json()["error"]["type"] == "server_error"
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        assert response.headers["x-request-id"]


async def test_browsers_may_use_every_method_a_route_serves_by_default() -> None:
    """The default `cors_allow_methods` covers each route's methods (a PUT on
    /v1/history/settings was refused at the preflight although the route serves it)."""
    settings = Settings(topic_prefix="unit-cors")
    served = {"HEAD", "OPTIONS"}
    async with gateway_with(settings=settings) as gw:
        for operations in gw.app.openapi()["paths"].values():
            served |= {method.upper() for method in operations}
        preflight = await gw.client.options(
            "/v1/history/settings",
            headers={
                **PREFLIGHT,
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Method": "PUT",
            },
        )
    assert served <= set(settings.cors_allow_methods), served - set(settings.cors_allow_methods)
    assert preflight.status_code == 200, preflight.text
