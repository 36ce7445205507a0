"""Scopes (403 for a valid credential without the scope a route needs) and tenants (another
tenant's resource is 404, never 403, and the tenant always comes from the credential)."""

from __future__ import annotations

import pytest

from switchyard.common import scopes
from switchyard.gateway.api.deps import ROUTE_SCOPES, required_scope

from .auth_double import gateway_with

CHAT_BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def test_route_scopes_come_from_the_shared_definition() -> None:
    assert (scopes.CHAT, scopes.HISTORY_READ) == ("chat", "history:read")
    assert {scope for _, scope, _ in ROUTE_SCOPES} <= set(scopes.API_KEY_SCOPES)


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("POST", "/v1/chat/completions", "chat"),
        ("POST", "/v1/messages", "chat"),
        ("POST", "/v1/embeddings", "chat"),
        ("GET", "/v1/jobs/{job_id}", "history:read"),  # or a key's own, with chat
        ("GET", "/v1/responses/{response_id}", "history:read"),
        ("POST", "/v1/jobs", "chat"),
        ("DELETE", "/v1/responses/{response_id}", "chat"),
        ("POST", "/v1/jobs/{job_id}/cancel", "chat"),
        ("GET", "/v1/history", "history:read"),
        ("GET", "/v1/history/{request_id}", "history:read"),
        ("GET", "/v1/history/settings", "history:read"),
        ("PUT", "/v1/history/settings", "history:write"),
        ("DELETE", "/v1/history/{request_id}", "history:write"),
        ("GET", "/v1/usage", "history:read"),
        ("POST", "/v1/usage", "history:write"),
        ("GET", "/v1/models", None),
    ],
)
def test_each_route_needs_its_scope(method: str, path: str, scope: str | None) -> None:
    assert required_scope(path, method) == scope


async def test_a_token_without_the_chat_scope_gets_403() -> None:
    async with gateway_with() as gw:
        token = gw.auth.token(scopes=["history:read"])
        response = await gw.client.post(
            "/v1/chat/completions", json=CHAT_BODY, headers=bearer(token)
        )
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["type"] == "permission_error" and error["code"] == "insufficient_scope"
        assert "'chat'" in error["message"] and token.split(".")[1] not in response.text
        embeddings = await gw.client.post(
            "/v1/embeddings", json={"model": "sim-small", "input": "hi"}, headers=bearer(token)
        )
        assert embeddings.status_code == 403
        messages = await gw.client.post(
            "/v1/messages",
            json={
                "model": "sim-small",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
            },
            headers=bearer(token),
        )
        assert messages.status_code == 403


async def test_history_needs_the_history_read_scope() -> None:
    async with gateway_with() as gw:
        chat_only = gw.auth.token(scopes=["chat"])
        response = await gw.client.get("/v1/history", headers=bearer(chat_only))
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "insufficient_scope"
        reader = gw.auth.token(scopes=["history:read"])
        assert (await gw.client.get("/v1/history", headers=bearer(reader))).status_code == 200


async def test_api_key_scopes_are_enforced_too() -> None:
    async with gateway_with() as gw:
        history_only = gw.auth.add_api_key(scopes=["history:read"])
        response = await gw.client.post(
            "/v1/chat/completions", json=CHAT_BODY, headers={"x-api-key": history_only.key}
        )
        assert response.status_code == 403
        assert history_only.key not in response.text
        full = gw.auth.add_api_key()
        ok = await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(full.key))
        assert ok.status_code == 200


async def test_listing_models_needs_no_scope_but_respects_allowed_models() -> None:
    async with gateway_with() as gw:
        token = gw.auth.token(scopes=[], allowed_models=["sim-small"])
        response = await gw.client.get("/v1/models", headers=bearer(token))
        assert response.status_code == 200
        assert [model["id"] for model in response.json()["data"]] == ["sim-small"]


async def test_a_model_outside_the_tokens_allowed_models_is_404() -> None:
    async with gateway_with() as gw:
        token = gw.auth.token(allowed_models=["some-other-model"])
        response = await gw.client.post(
            "/v1/chat/completions", json=CHAT_BODY, headers=bearer(token)
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"


async def test_another_tenants_request_is_404_and_the_tenant_cannot_be_spoofed() -> None:
    async with gateway_with() as gw:
        gw.auth.history_items["req1"] = "acme"
        acme = gw.auth.token(tenant="acme")
        globex = gw.auth.token(tenant="globex")
        assert (await gw.client.get("/v1/history/req1", headers=bearer(acme))).status_code == 200
        foreign = await gw.client.get("/v1/history/req1", headers=bearer(globex))
        assert foreign.status_code == 404
        assert foreign.json()["error"]["message"]
        # Identity headers sent by the client are replaced by the verified ones.
        spoofed = await gw.client.get(
            "/v1/history/req1",
            headers={**bearer(globex), "x-switchyard-tenant": "acme", "x-switchyard-role": "admin"},
        )
        assert spoofed.status_code == 404
