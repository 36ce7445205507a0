"""One request through all four services, as an application developer sees it: the
official `openai` SDK against the gateway, real Kafka in between, the reply recorded in
PostgreSQL and visible in the history API."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from switchyard.common.db import sync_url
from switchyard.common.testing.infra import wait_until
from switchyard.common.testing.processes import free_port

pytestmark = pytest.mark.e2e


def client(system, api_key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=system.url("gateway") + "/v1",
        api_key=api_key or system.api_key,
        max_retries=0,
        timeout=30,
    )


def history_row(system, request_id: str):
    engine = create_engine(sync_url(system.database_url))
    try:
        with engine.connect() as connection:
            return (
                connection.execute(
                    text(
                        "SELECT status, model, tenant, response FROM history_requests"
                        " WHERE request_id = :id"
                    ),
                    {"id": request_id},
                )
                .mappings()
                .first()
            )
    finally:
        engine.dispose()


def test_chat_completion_is_answered_and_recorded_in_postgres(system):
    raw = client(system).chat.completions.with_raw_response.create(
        model="sim-small", messages=[{"role": "user", "content": "Hello Switchyard"}]
    )
    completion = raw.parse()
    request_id = raw.headers["x-request-id"]

    assert completion.choices[0].message.content == "Simulated reply to: Hello Switchyard"
    assert completion.model == "sim-small"
    assert completion.usage.total_tokens > 0

    row = wait_until(
        lambda: (r := history_row(system, request_id)) and r["status"] == "completed" and r,
        timeout=30,
        message="the completed request in history_requests",
    )
    assert row["model"] == "sim-small"
    assert row["tenant"] == "e2e"
    assert (
        row["response"]["choices"][0]["message"]["content"]
        == "Simulated reply to: Hello Switchyard"
    )


def test_history_api_lists_the_callers_requests(system):
    raw = client(system).chat.completions.with_raw_response.create(
        model="sim-small", messages=[{"role": "user", "content": "remember me"}]
    )
    request_id = raw.headers["x-request-id"]
    headers = {"Authorization": f"Bearer {system.api_key}"}

    def listed():
        response = httpx.get(system.url("gateway") + "/v1/history", headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return [item for item in response.json()["data"] if item["id"] == request_id]

    [item] = wait_until(listed, timeout=30, message="the request in GET /v1/history")
    one = httpx.get(
        system.url("gateway") + f"/v1/history/{request_id}", headers=headers, timeout=10
    )
    assert one.status_code == 200
    assert (
        one.json()["response"]["choices"][0]["message"]["content"]
        == "Simulated reply to: remember me"
    )
    assert item["status"] in ("completed", "pending")


def test_streaming_reply_arrives_as_server_sent_events(system):
    stream = client(system).chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": "stream please"}], stream=True
    )
    text_parts = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(text_parts) == "Simulated reply to: stream please"


def test_access_token_from_auth_is_accepted_by_the_gateway(system):
    response = httpx.post(
        system.url("auth") + "/v1/auth/token",
        timeout=10,
        json={"grant_type": "password", "username": system.email, "password": system.password},
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    completion = client(system, api_key=token).chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": "with a JWT"}]
    )
    assert completion.choices[0].message.content == "Simulated reply to: with a JWT"


def test_invalid_api_key_gets_401(system):
    with pytest.raises(openai.AuthenticationError) as caught:
        client(system, api_key="sk-sy-" + "x" * 43).chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 401
    assert "x" * 43 not in str(caught.value)


def test_unknown_model_gets_404_model_not_found(system):
    with pytest.raises(openai.NotFoundError) as caught:
        client(system).chat.completions.create(
            model="gpt-nonexistent", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"


def test_malformed_json_gets_400_in_openai_format(system):
    response = httpx.post(
        system.url("gateway") + "/v1/chat/completions",
        content=b'{"model": ',
        headers={"Authorization": f"Bearer {system.api_key}", "content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.headers["x-request-id"]


def test_gateway_answers_503_within_two_seconds_when_kafka_is_unreachable(system):
    port = free_port()
    system.start_service(
        "gateway-no-kafka",
        "gateway",
        port=port,
        ready_path="/livez",
        env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
    )
    started = time.monotonic()
    response = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        timeout=10,
        headers={"Authorization": f"Bearer {system.api_key}"},
        json={"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]},
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "bus_unavailable"
    assert elapsed < 2.0
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 503
