"""Every model route enters the bus the same way (`intake`): an unknown model is 404, an
event the bus does not take is 503 (or 413 when too large), each in the called API's own
error format, and nothing is published for a refused request."""

from __future__ import annotations

import pytest

from switchyard.common.bus import BusUnavailableError, EventTooLargeError
from switchyard.common.events import ChatRequested

from .conftest import API_KEY

AUTH = {"authorization": f"Bearer {API_KEY}"}
ANTHROPIC = {**AUTH, "anthropic-version": "2023-06-01"}
MESSAGES = [{"role": "user", "content": "hi"}]

# (route, body without `model`, headers, the API's error format)
ROUTES = [
    ("/v1/chat/completions", {"messages": MESSAGES}, AUTH, "openai"),
    ("/v1/messages", {"messages": MESSAGES, "max_tokens": 8}, ANTHROPIC, "anthropic"),
    ("/v1/messages/count_tokens", {"messages": MESSAGES}, ANTHROPIC, "anthropic"),
    ("/v1/embeddings", {"input": "hi"}, AUTH, "openai"),
    ("/v1/responses", {"input": "hi"}, AUTH, "openai"),
    ("/v1/responses", {"input": "hi", "background": True}, AUTH, "openai"),
    ("/v1/jobs", {"messages": MESSAGES}, AUTH, "openai"),
]
IDS = ["chat", "messages", "count_tokens", "embeddings", "responses", "background", "jobs"]


def error_of(answer, vendor: str) -> dict:
    body = answer.json()
    if vendor == "anthropic":
        assert body["type"] == "error", body
        return body["error"]
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def refuse_requests(harness, monkeypatch, error: Exception) -> list:
    """The bus refuses every `chat.requested`; returns what it was asked to publish."""
    attempted: list = []
    original = harness.bus.publish

    async def publish(topic, event, **kwargs):
        if isinstance(event, ChatRequested):
            attempted.append(event)
            raise error
        return await original(topic, event, **kwargs)

    monkeypatch.setattr(harness.bus, "publish", publish)
    return attempted


@pytest.mark.parametrize(("path", "body", "headers", "vendor"), ROUTES, ids=IDS)
async def test_an_unknown_model_is_404_on_every_model_route(
    harness, monkeypatch, path, body, headers, vendor
):
    attempted = refuse_requests(harness, monkeypatch, AssertionError("never published"))
    answer = await harness.client.post(
        path, headers=headers, json={"model": "no-such-model", **body}
    )
    assert answer.status_code == 404, answer.text
    error = error_of(answer, vendor)
    assert error["code"] == "model_not_found"
    assert "no-such-model" in error["message"]
    assert attempted == []


@pytest.mark.parametrize(("path", "body", "headers", "vendor"), ROUTES, ids=IDS)
async def test_a_bus_that_refuses_the_request_is_503_on_every_model_route(
    harness, monkeypatch, path, body, headers, vendor
):
    attempted = refuse_requests(harness, monkeypatch, BusUnavailableError("broker down"))
    answer = await harness.client.post(path, headers=headers, json={"model": "sim-small", **body})
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "2"
    error = error_of(answer, vendor)
    assert error["code"] == "bus_unavailable"
    if vendor == "anthropic":
        assert error["type"] == "overloaded_error"
    assert len(attempted) == 1  # tried once, and answered at once: never a hang


@pytest.mark.parametrize(("path", "body", "headers", "vendor"), ROUTES, ids=IDS)
async def test_a_request_too_large_for_the_bus_is_413_on_every_model_route(
    harness, monkeypatch, path, body, headers, vendor
):
    refuse_requests(harness, monkeypatch, EventTooLargeError("too large"))
    answer = await harness.client.post(path, headers=headers, json={"model": "sim-small", **body})
    assert answer.status_code == 413, answer.text
    assert error_of(answer, vendor)["code"] == "request_too_large"


async def test_a_refused_interactive_request_frees_its_place_in_flight(harness, monkeypatch):
    refuse_requests(harness, monkeypatch, BusUnavailableError("broker down"))
    gateway = harness.app.state.gateway
    for _ in range(3):
        answer = await harness.client.post(
            "/v1/chat/completions", headers=AUTH, json={"model": "sim-small", "messages": MESSAGES}
        )
        assert answer.status_code == 503
    assert gateway.in_flight == 0
