"""The gateway's Swagger UI and OpenAPI document: served from local files, with an
Authorize button, typed query parameters for history, usage and jobs, and error responses
that match what the routes really answer (checked by calling every route)."""

from __future__ import annotations

import json
import re

from switchyard.common.httpserver import refusal
from switchyard.gateway.api.admin import AUTH_ROUTES

from .conftest import API_KEY

AUTHORIZED = {"Authorization": f"Bearer {API_KEY}"}
# Bodies the gateway relays to history unread (history validates them; the fake auth
# service of these tests stands in for history too and knows nothing of them).
RELAYED_BODIES = {"/v1/history/settings"}
# Forwarded to auth as they come, answered by auth (its own suite tests those answers, and
# tests/e2e/test_governance.py through the gateway); the fake auth service here lacks them.
FORWARDED_TO_AUTH = {path for _, path, _, _ in AUTH_ROUTES}


async def spec_of(harness) -> dict:
    response = await harness.client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(spec: dict):
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def format_of(body: dict) -> str:
    """Whose error object `body` is: Anthropic's `{"type": "error", "error": {...}}` or
    OpenAI's `{"error": {"message", "type", "param", "code"}}`."""
    if body.get("type") == "error":
        assert body["error"]["message"] and body["error"]["type"]
        return "anthropic"
    assert body["error"]["message"] and body["error"]["type"]
    assert {"param", "code"} <= set(body["error"])
    return "openai"


def assert_error_body(path: str, body: dict) -> None:
    """`body` is in the format of the API at `path`, and so is the answer the HTTP server
    writes on its own (a 431 or 408) before the gateway sees a request for `path`."""
    expected = "anthropic" if path.startswith("/v1/messages") else "openai"
    assert format_of(body) == expected, (path, body)
    for status in (431, 408):
        refused = refusal(status, "Refused.", "refused", path.encode()).partition(b"\r\n\r\n")[2]
        assert format_of(json.loads(refused)) == expected, (path, status, refused)


async def test_swagger_ui_is_served_from_local_assets(harness):
    page = await harness.client.get("/docs")
    assert page.status_code == 200
    references = re.findall(r"(?:src|href)=\"([^\"]+)\"", page.text)
    assert references and all(reference.startswith("/docs/assets/") for reference in references)
    for reference in references:
        asset = await harness.client.get(reference)
        assert asset.status_code == 200 and asset.content
    assert (await harness.client.get("/docs/assets/index.html")).status_code == 404


async def test_no_other_site_may_frame_the_docs_page(harness):
    # It takes an API key (Authorize) and sends requests with it: clickjacking's target.
    page = await harness.client.get("/docs")
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_every_api_route_declares_both_credentials_for_the_authorize_button(harness):
    spec = await spec_of(harness)
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"]["name"] == "x-api-key"
    for _, path, operation in operations(spec):
        if path.startswith("/v1/"):
            assert operation["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}], path
        else:
            assert "security" not in operation, path


async def test_history_usage_and_jobs_have_typed_query_parameters(harness):
    spec = await spec_of(harness)

    def parameters(path: str) -> dict:
        return {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}

    history = parameters("/v1/history")
    assert history["limit"]["schema"]["type"] == "integer"
    assert history["limit"]["schema"]["maximum"] == 100
    assert history["status"]["schema"]["items"]["enum"] == [
        "pending",
        "completed",
        "failed",
        "cancelled",
        "expired",
        "refused",
    ]
    assert history["status"]["explode"] is False
    assert {"cursor", "since", "until", "model", "api_key_id", "user_id"} <= set(history)
    usage = parameters("/v1/usage")
    assert usage["format"]["schema"]["enum"] == ["json", "csv"]
    assert "model" in usage["group_by"]["schema"]["items"]["enum"]
    jobs = parameters("/v1/jobs")
    assert jobs["limit"]["schema"]["type"] == "integer" and "queued" in str(jobs["status"])


async def test_error_responses_carry_the_error_body_and_no_route_claims_fastapis_422(harness):
    spec = await spec_of(harness)
    assert "HTTPValidationError" not in str(spec)
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "403", "404", "409", "413", "422", "429", "503", "504"} <= set(chat)
    messages = spec["paths"]["/v1/messages"]["post"]["responses"]
    assert messages["429"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "AnthropicErrorResponse"
    )
    for _, _, operation in operations(spec):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["example"], status


async def test_what_every_route_answers_is_documented(harness):
    spec = await spec_of(harness)
    for method, path, operation in operations(spec):
        if path in FORWARDED_TO_AUTH:
            continue
        documented = set(operation["responses"])
        url = path.replace("{request_id}", "0" * 32).replace("{job_id}", "0" * 32)
        probes = [("no credentials", {}, None)]
        if method in ("POST", "PUT"):
            probes.append(("oversized body", AUTHORIZED, b"[" + b"1," * 10_000 + b"1]"))
            if path not in RELAYED_BODIES and "{" not in path:
                probes.append(("malformed body", AUTHORIZED, b"{not json"))
        if "{" in path:
            url = path.replace("{request_id}", "bad id!").replace("{job_id}", "bad id!")
            probes.append(("unknown id", AUTHORIZED, None))
        for name, headers, body in probes:
            response = await harness.client.request(
                method, url, headers={**headers, "content-type": "application/json"}, content=body
            )
            if path in ("/livez", "/readyz"):
                continue
            assert str(response.status_code) in documented, (method, path, name, response.text)
            assert_error_body(path, response.json())


async def test_forwarded_auth_routes_document_their_body_and_created_status(harness):
    paths = (await spec_of(harness))["paths"]
    create_key = paths["/v1/api-keys"]["post"]
    assert "201" in create_key["responses"] and "200" not in create_key["responses"]
    assert "application/json" in create_key["requestBody"]["content"]
    sign_in = paths["/v1/auth/token"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-www-form-urlencoded"} <= set(sign_in)
    assert "requestBody" not in paths["/v1/admin/users/{user_id}/disable"]["post"]
    assert "requestBody" not in paths["/v1/me"]["get"]
