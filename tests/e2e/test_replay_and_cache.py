"""Recorded traffic as a product, on real Kafka and PostgreSQL: traffic recorded on two
models is replayed to a third with `switchyard replay` (paired, counted, each request sent
once, originals untouched); the response cache answers a repeated request on another
gateway replica, and a repeated stream, without calling the model again."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from switchyard.common.testing.processes import free_port
from switchyard.simulator.testing import simulator_at

# Services start slowly on a loaded machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def second_gateway(system) -> str:
    port = free_port()
    system.start_service("gateway-cache-2", "gateway", port=port)
    return f"http://127.0.0.1:{port}"


def headers(system, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {system.api_key}", **extra}


def sim_count(system, model: str) -> int:
    with simulator_at(system.url("simulator")) as simulator:
        return simulator.calls(model)


def wait_for(check, timeout: float = 30.0, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {message}")


def stored_answers(gateway_url: str) -> float:
    """How many answers this gateway stored in the shared cache (its metric)."""
    for line in httpx.get(f"{gateway_url}/metrics", timeout=5).text.splitlines():
        if line.startswith('switchyard_gateway_cache_stores_total{outcome="stored"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def history_item(system, request_id: str) -> dict | None:
    response = httpx.get(
        f"{system.url('gateway')}/v1/history/{request_id}", headers=headers(system), timeout=10
    )
    return response.json() if response.status_code == 200 else None


def test_traffic_on_two_models_replays_to_a_third_paired_once_and_originals_untouched(system):
    # From this moment: the system is shared with other tests, whose requests of the
    # moments before must not be selected.
    since = datetime.now(UTC).isoformat()
    tag = uuid.uuid4().hex[:8]
    gateway = system.url("gateway")
    originals: dict[str, str] = {}
    with httpx.Client(timeout=30) as client:
        for i in range(3):
            response = client.post(
                f"{gateway}/v1/chat/completions",
                json={
                    "model": "sim-small",
                    "messages": [{"role": "user", "content": f"{tag} {i}"}],
                },
                headers=headers(system),
            )
            assert response.status_code == 200
            originals[response.headers["x-request-id"]] = "sim-small"
        for i in range(2):
            response = client.post(
                f"{gateway}/v1/messages",
                json={
                    "model": "sim-claude",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": f"{tag} claude {i}"}],
                },
                headers=headers(system, **{"anthropic-version": "2023-06-01"}),
            )
            assert response.status_code == 200
            originals[response.headers["x-request-id"]] = "sim-claude"
    for request_id in originals:
        wait_for(
            lambda rid=request_id: (history_item(system, rid) or {}).get("status") == "completed",
            message=f"{request_id} recorded",
        )
    before = {rid: history_item(system, rid) for rid in originals}
    large_before = sim_count(system, "sim-large")
    env = {"SWITCHYARD_API_KEY": system.api_key, "SWITCHYARD_GATEWAY_URL": gateway}

    # Bad input first: an unknown target and a rate of 0 are clear errors, nothing runs.
    for args, expected in (
        (["--to-model", "no-such-model"], "does not exist"),
        (["--to-model", "sim-large", "--rate", "0"], "rate"),
    ):
        failed = _cli_failure(system, ["replay", "--since", since, *args], env)
        assert expected in failed
    empty = _cli_failure(
        system,
        ["replay", "--since", since, "--model", "nobody-used-this", "--to-model", "sim-large"],
        env,
    )
    assert "No recorded request matches" in empty

    out = system.cli(
        "replay",
        "--since",
        since,
        "--to-model",
        "sim-large",
        "--rate",
        "20/s",
        "--wait",
        "--format",
        "json",
        env=env,
    )
    report = json.loads(out)
    pairs = [pair for pair in report["data"] if pair["original"]["request_id"] in originals]

    assert report["status"] == "completed"
    assert len(pairs) == 5
    for pair in pairs:
        assert pair["original"]["model"] == originals[pair["original"]["request_id"]]
        assert pair["replay"]["model"] == "sim-large"
        assert pair["replay"]["status"] == "completed"
        assert pair["replay"]["request_id"] not in originals
        # The simulator answers from the prompt alone: every model says the same.
        assert pair["exact_match"] is True and pair["similarity"] == 1.0
    assert report["totals"]["replay"]["completed"] == report["total"]
    # Each selected request was sent exactly once to the third model.
    assert sim_count(system, "sim-large") - large_before == report["total"]
    for request_id, was in before.items():
        now = history_item(system, request_id)
        assert now == was  # the originals are untouched
    replayed = history_item(system, pairs[0]["replay"]["request_id"])
    assert replayed["replay_of"] == pairs[0]["original"]["request_id"]

    # The same report as CSV, and resuming a completed replay is refused clearly.
    csv_out = system.cli("replay", "show", report["id"], "--format", "csv", env=env)
    assert csv_out.splitlines()[0].startswith("original_id,original_model")
    assert len(csv_out.splitlines()) == report["total"] + 1
    assert "completed" in _cli_failure(system, ["replay", "resume", report["id"]], env)


def _cli_failure(system, args: list[str], env: dict[str, str]) -> str:
    try:
        system.cli(*args, env=env)
    except AssertionError as exc:
        return str(exc)
    raise AssertionError(f"switchyard {' '.join(args)} should have failed")


def test_a_cached_answer_is_a_hit_on_another_gateway_replica(system, second_gateway):
    body = {
        "model": "sim-small",
        "temperature": 0,
        "messages": [{"role": "user", "content": f"cache me {uuid.uuid4().hex}"}],
    }
    on = headers(system, **{"X-Switchyard-Cache": "on"})
    small_before = sim_count(system, "sim-small")
    with httpx.Client(timeout=30) as client:
        first = client.post(f"{system.url('gateway')}/v1/chat/completions", json=body, headers=on)
        assert first.headers["x-switchyard-cache"] == "miss"

        def hit_on_second():
            response = client.post(f"{second_gateway}/v1/chat/completions", json=body, headers=on)
            return response if response.headers.get("x-switchyard-cache") == "hit" else None

        # Stored in the background after the first answer: a moment later it is shared.
        hit = wait_for(hit_on_second, timeout=10, message="a hit on the second replica")
    assert hit.json() == first.json()
    assert sim_count(system, "sim-small") - small_before == 1
    recorded = wait_for(
        lambda: (
            (history_item(system, hit.headers["x-request-id"]) or {}).get("status") == "completed"
            and history_item(system, hit.headers["x-request-id"])
        ),
        message="the hit in history",
    )
    assert recorded["cache_hit"] is True
    assert recorded["provider"] == "switchyard"
    usage = httpx.get(
        f"{system.url('gateway')}/v1/usage",
        params={"since": "1d", "group_by": "model"},
        headers=headers(system),
        timeout=10,
    ).json()
    assert usage["totals"]["cache_hits"] >= 1
    metrics = httpx.get(f"{second_gateway}/metrics", timeout=5).text
    assert 'switchyard_gateway_cache_lookups_total{api="openai.chat_completions",result="hit"}' in (
        metrics
    )


def test_a_repeated_stream_is_replayed_from_the_cache(system):
    body = {
        "model": "sim-small",
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": f"stream me {uuid.uuid4().hex}"}],
    }
    on = headers(system, **{"X-Switchyard-Cache": "on"})
    before = sim_count(system, "sim-small")
    gateway = system.url("gateway")
    stored = stored_answers(gateway)
    with httpx.Client(timeout=30) as client:
        first = client.post(f"{gateway}/v1/chat/completions", json=body, headers=on)
        assert first.headers["x-switchyard-cache"] == "miss"
        # Stored in the background once the stream was sent.
        wait_for(lambda: stored_answers(gateway) > stored, timeout=10, message="the store")
        hit = client.post(f"{gateway}/v1/chat/completions", json=body, headers=on)
    assert hit.headers["x-switchyard-cache"] == "hit"
    assert first.headers["content-type"].startswith("text/event-stream")
    assert hit.headers["content-type"].startswith("text/event-stream")
    assert hit.content == first.content
    assert hit.content.endswith(b"data: [DONE]\n\n")
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in hit.text.splitlines()
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    )
    assert text == "Simulated reply to: " + body["messages"][0]["content"]
    assert sim_count(system, "sim-small") - before == 1
