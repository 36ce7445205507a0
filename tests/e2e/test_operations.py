"""What platform teams rely on: every service's /metrics passes `promtool check metrics`
and carries the series dashboards need, and SIGTERM during load loses nothing."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
import uuid

import httpx
import pytest

from switchyard.common.testing.processes import free_port
from switchyard.simulator.testing import simulator_at

pytestmark = pytest.mark.e2e

EXPECTED_SERIES = {
    "gateway": [
        "switchyard_gateway_request_duration_seconds_bucket",
        "switchyard_gateway_added_latency_seconds_bucket",
        "switchyard_gateway_requests_in_flight",
        "switchyard_bus_events_published_total",
    ],
    "inference": [
        "switchyard_bus_events_handled_total",
        "switchyard_bus_consumer_lag_events",
        "switchyard_inference_circuit_state",
    ],
    "history": ["switchyard_bus_events_handled_total", "switchyard_bus_consumer_lag_events"],
    "auth": [],
}


def chat(base_url: str, key: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/chat/completions",
        timeout=60,
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "sim-small", "messages": [{"role": "user", "content": text}]},
    )


@pytest.mark.parametrize("service", sorted(EXPECTED_SERIES))
def test_metrics_pass_promtool_and_have_the_expected_series(system, service):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run deploy/local/promtool.sh (make test does)"
    assert chat(system.url("gateway"), system.api_key, "warm the metrics up").status_code == 200
    text = httpx.get(system.url(service) + "/metrics", timeout=10).text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for series in EXPECTED_SERIES[service]:
        assert series in text, f"{service} does not export {series}"


def assert_graceful_exit(process, exit_code: int) -> None:
    # uvicorn finishes its shutdown, then re-raises the SIGTERM it caught, so the exit
    # status is the signal's; the log shows whether the shutdown ran to the end.
    assert exit_code in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in process.log()


async def _many(base_url: str, key: str, count: int, tag: str) -> list[tuple[str, httpx.Response]]:
    async with httpx.AsyncClient(timeout=90) as client:
        texts = [f"{tag} {i} {uuid.uuid4().hex}" for i in range(count)]

        async def one(text: str) -> httpx.Response:
            return await client.post(
                f"{base_url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": "sim-small", "messages": [{"role": "user", "content": text}]},
            )

        tasks = [asyncio.create_task(one(text)) for text in texts]
        return list(zip(texts, await asyncio.gather(*tasks), strict=True))


def test_sigterm_on_an_inference_replica_during_load_loses_nothing(system):
    port = free_port()
    replica = system.start_service("inference-sigterm", "inference", port=port)
    with simulator_at(system.url("simulator")) as simulator, simulator.slowed(700):

        async def run():
            load = asyncio.create_task(_many(system.url("gateway"), system.api_key, 30, "sigterm"))
            await asyncio.sleep(0.4)
            replica.popen.send_signal(signal.SIGTERM)
            return await load

        results = asyncio.run(run())
        started = time.monotonic()
        exit_code = replica.popen.wait(timeout=30)
    assert_graceful_exit(replica, exit_code)
    assert time.monotonic() - started < 30
    for text, response in results:
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == f"Simulated reply to: {text}"


def test_sigterm_on_a_gateway_finishes_the_requests_it_holds(system):
    port = free_port()
    gateway = system.start_service("gateway-sigterm", "gateway", port=port)
    with simulator_at(system.url("simulator")) as simulator, simulator.slowed(700):

        async def run():
            load = asyncio.create_task(
                _many(f"http://127.0.0.1:{port}", system.api_key, 20, "drain")
            )
            await asyncio.sleep(0.4)
            gateway.popen.send_signal(signal.SIGTERM)
            return await load

        results = asyncio.run(run())
        exit_code = gateway.popen.wait(timeout=30)
    assert_graceful_exit(gateway, exit_code)
    for text, response in results:
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == f"Simulated reply to: {text}"


def test_sigterm_on_a_gateway_ends_a_stream_past_its_drain_with_an_error_event(system):
    """A stream that outlasts the gateway's drain period (`SWITCHYARD_GATEWAY_SHUTDOWN_DRAIN_S`)
    ends with a `gateway_shutting_down` error event instead of a dropped connection; the
    gateway then exits by itself, and inference still finishes the request, which history
    records as completed."""
    from .test_protocols import recorded

    port = free_port()
    gateway = system.start_service(
        "gateway-drain", "gateway", port=port, env={"SWITCHYARD_GATEWAY_SHUTDOWN_DRAIN_S": "1.5"}
    )
    body = {
        "model": "sim-small",
        "stream": True,
        "messages": [{"role": "user", "content": "a long answer " + uuid.uuid4().hex}],
    }
    with simulator_at(system.url("simulator")) as simulator, simulator.slowed(8000):
        lines: list[str] = []
        with (
            httpx.Client(timeout=60) as client,
            client.stream(
                "POST",
                f"http://127.0.0.1:{port}/v1/chat/completions",
                headers={"Authorization": f"Bearer {system.api_key}"},
                json=body,
            ) as response,
        ):
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            for line in response.iter_lines():
                if not line:
                    continue
                lines.append(line)
                if len(lines) == 1:
                    gateway.popen.send_signal(signal.SIGTERM)
                    signalled = time.monotonic()
        ended_after = time.monotonic() - signalled
        exit_code = gateway.popen.wait(timeout=30)
        assert_graceful_exit(gateway, exit_code)
        assert 1.0 <= ended_after < 6.0, ended_after
        last = lines[-1]
        assert last.startswith("data: ") and "gateway_shutting_down" in last, lines[-3:]
        assert "[DONE]" not in "".join(lines)
        row = recorded(system, request_id)
    assert row["status"] == "completed"
