"""A NUL character (U+0000) in anything a request brings (a cursor, a body field, the URL):
PostgreSQL cannot bind one into a text or jsonb value, so each is refused with a 400
naming the parameter before the database fails on it (SQLite, used here, would take it:
these tests check the answer)."""

from __future__ import annotations

import base64
import json

import pytest

NUL_ID = "a\x00b"
KEY = "0" * 64


def cursor_with_id(request_id: str) -> str:
    """A cursor as `encode_cursor` writes one, whose id is `request_id`."""
    raw = json.dumps(["2026-12-07T12:00:00+00:00", request_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def assert_refused(response, param: str, code: str = "invalid_request") -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/v1/history", "/v1/jobs", "/v1/replays"])
async def test_a_cursor_whose_id_holds_a_nul_is_an_invalid_cursor(service, path):
    response = await service.client.get(
        path, params={"cursor": cursor_with_id(NUL_ID)}, headers=service.headers()
    )
    assert_refused(response, "cursor", "invalid_cursor")


async def test_a_cursor_without_a_nul_is_still_taken(service):
    response = await service.client.get(
        "/v1/history", params={"cursor": cursor_with_id("ab")}, headers=service.headers()
    )
    assert response.status_code == 200, response.text


async def test_a_nul_in_the_url_is_400(service):
    # Refused before any route, as the query parameters and ids above it are.
    response = await service.client.get("/v1/history/a%00b", headers=service.headers())
    assert response.status_code == 400, response.text


@pytest.mark.parametrize("field", ["to_model", "model", "api_key_id", "team_id", "user_id"])
async def test_a_replay_field_holding_a_nul_is_400_and_creates_nothing(service, field):
    body = {"since": "1h", "to_model": "sim-large", field: "x\x00y"}
    headers = service.headers(role="admin")
    response = await service.client.post("/v1/replays", json=body, headers=headers)
    assert_refused(response, field)
    listed = await service.client.get("/v1/replays", headers=headers)
    assert listed.json()["data"] == []


async def test_an_idempotency_key_holding_a_nul_is_400(service):
    body = {"key": NUL_ID, "endpoint": "/v1/chat/completions", "fingerprint": "f" * 64}
    response = await service.client.post(
        "/internal/v1/idempotency/claim", json={**body, "lease_s": 60}, headers=service.headers()
    )
    assert_refused(response, "key")


async def test_a_cache_entry_holding_a_nul_deep_in_its_response_is_400(service):
    entry = {
        "api": "openai.chat_completions",
        "model": "m",
        "response": {"choices": [{"message": {"content": "x\x00y"}}]},
        "source_request_id": "r1",
        "ttl_s": 60,
    }
    response = await service.client.put(
        f"/internal/v1/cache/entries/{KEY}", json=entry, headers=service.headers()
    )
    assert_refused(response, "response")


async def test_an_item_reference_holding_a_nul_is_400(service):
    response = await service.client.post(
        "/v1/responses/items", json={"ids": ["msg_1", NUL_ID]}, headers=service.headers()
    )
    assert_refused(response, "ids")
