"""Auth down in a deployment on Kafka and PostgreSQL: a gateway keeps serving the keys auth
vouched for, past their cache TTL (stale-if-error), refuses one the operator revokes with
the CLI meanwhile (the command publishes the revocation itself), refuses a key it never saw
with a counted 503, and takes new keys again once auth is back, without a restart."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from switchyard.common.testing.processes import free_port

pytestmark = pytest.mark.e2e

BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "auth outage"}]}


def test_a_gateway_serves_known_keys_while_its_auth_is_down(system):
    auth_port, gateway_port = free_port(), free_port()
    auth = system.start_service("auth-outage", "auth", port=auth_port)
    gateway = system.start_service(
        "gateway-auth-outage",
        "gateway",
        port=gateway_port,
        env={
            "SWITCHYARD_AUTH_URL": f"http://127.0.0.1:{auth_port}",
            # Short TTLs, so the outage outlasts every cached answer.
            "SWITCHYARD_GATEWAY_API_KEY_CACHE_TTL_S": "1",
            "SWITCHYARD_GATEWAY_POLICY_CACHE_TTL_S": "1",
        },
    )
    base = f"http://127.0.0.1:{gateway_port}"

    def chat(key: str) -> httpx.Response:
        return httpx.post(
            f"{base}/v1/chat/completions",
            json=BODY,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )

    restarted = None
    try:
        doomed = json.loads(system.cli("keys", "create", "--email", system.email, "--json"))
        assert chat(system.api_key).status_code == 200
        assert chat(doomed["key"]).status_code == 200
        auth.popen.kill()
        auth.popen.wait()
        time.sleep(2)  # past both TTLs

        assert [chat(system.api_key).status_code for _ in range(5)] == [200] * 5
        assert chat(doomed["key"]).status_code == 200
        # Revoked by the operator while auth is down: the command publishes the event
        # itself, so the gateway serving cached answers refuses the key at once.
        system.cli("keys", "revoke", doomed["key_id"])
        deadline = time.monotonic() + 5
        while (status := chat(doomed["key"]).status_code) != 401:
            assert status == 200 and time.monotonic() < deadline, status
            time.sleep(0.2)
        created = system.cli("keys", "create", "--email", system.email, "--json")
        new_key = json.loads(created)["key"]
        refused = chat(new_key)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "auth_unavailable"
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert 'switchyard_gateway_auth_stale_answers_total{lookup="api_key"}' in metrics
        assert 'switchyard_gateway_requests_rejected_total{reason="auth_unavailable"}' in metrics

        restarted = system.start_service("auth-outage-restarted", "auth", port=auth_port)
        deadline = time.monotonic() + 30
        while (status := chat(new_key).status_code) != 200:
            assert status == 503 and time.monotonic() < deadline, status
            time.sleep(0.5)
    finally:
        gateway.stop()
        if restarted is not None:
            restarted.stop()
