"""History, usage, async jobs and Idempotency-Key through the whole system: every service
its own process on real Kafka and PostgreSQL, upstream calls counted by the simulator."""

from __future__ import annotations

import asyncio
import collections
import csv
import hashlib
import hmac
import io
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from switchyard.common.events import ChatRequestData, ChatRequested, ClientAPI
from switchyard.common.testing.infra import wait_until
from switchyard.history.bootstrap import history_engine
from switchyard.history.handlers import EventRecorder
from switchyard.simulator.testing import simulator_at

pytestmark = pytest.mark.e2e


def gateway(system) -> httpx.Client:
    return httpx.Client(
        base_url=system.url("gateway"),
        headers={"Authorization": f"Bearer {system.api_key}"},
        timeout=30,
    )


def upstream_calls(system) -> int:
    with simulator_at(system.url("simulator")) as simulator:
        return simulator.calls()


def set_latency(system, latency_ms: int) -> None:
    with simulator_at(system.url("simulator")) as simulator:
        simulator.latency(latency_ms)


def chat_body(text: str) -> dict:
    return {"model": "sim-small", "messages": [{"role": "user", "content": text}]}


def test_ten_sequential_retries_reach_the_provider_once(system):
    body = chat_body(f"once {uuid.uuid4().hex}")
    key = str(uuid.uuid4())
    before = upstream_calls(system)
    with gateway(system) as client:
        responses = [
            client.post("/v1/chat/completions", json=body, headers={"Idempotency-Key": key})
            for _ in range(10)
        ]

    assert [response.status_code for response in responses] == [200] * 10
    assert len({response.content for response in responses}) == 1
    assert len({response.headers["x-request-id"] for response in responses}) == 1
    assert upstream_calls(system) - before == 1


def test_twenty_concurrent_requests_with_one_key_execute_once(system):
    body = chat_body(f"together {uuid.uuid4().hex}")
    key = str(uuid.uuid4())
    set_latency(system, 700)
    before = upstream_calls(system)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=system.url("gateway"),
            headers={"Authorization": f"Bearer {system.api_key}", "Idempotency-Key": key},
            timeout=30,
        ) as client:
            return await asyncio.gather(
                *(client.post("/v1/chat/completions", json=body) for _ in range(20))
            )

    try:
        responses = asyncio.run(burst())
    finally:
        set_latency(system, 0)

    assert [response.status_code for response in responses] == [200] * 20
    assert len({response.content for response in responses}) == 1
    assert upstream_calls(system) - before == 1
    with gateway(system) as client:
        different = client.post(
            "/v1/chat/completions",
            json=chat_body("something else"),
            headers={"Idempotency-Key": key},
        )
    assert different.status_code == 422
    assert different.json()["error"]["code"] == "idempotency_key_reused"


class Receiver:
    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        deliveries = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                deliveries.append((dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_job_runs_in_the_batch_lane_and_its_webhook_is_signed(system):
    receiver = Receiver()
    text = f"job {uuid.uuid4().hex}"
    try:
        with gateway(system) as client:
            created = client.post("/v1/jobs", json={**chat_body(text), "webhook_url": receiver.url})
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            assert created.json()["status"] == "queued"

            def finished():
                response = client.get(f"/v1/jobs/{job_id}")
                return (
                    response.status_code == 200
                    and response.json()["status"] == "completed"
                    and (response.json())
                )

            job = wait_until(finished, timeout=30, message="the job to complete")
            listed = client.get("/v1/jobs", params={"status": "completed"}).json()["data"]
        wait_until(lambda: receiver.deliveries, timeout=30, message="the webhook")
    finally:
        receiver.close()

    assert job["result"]["choices"][0]["message"]["content"] == f"Simulated reply to: {text}"
    assert job["api"] == "openai.chat_completions"
    assert job["usage"]["total_tokens"] > 0
    assert job_id in [item["id"] for item in listed]
    headers, body = receiver.deliveries[0]
    secret = json.loads(system.cli("tenant-settings", "show", "--tenant", "e2e"))["webhook_secret"]
    timestamp = headers["Switchyard-Timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    assert hmac.compare_digest(headers["Switchyard-Signature"], "v1=" + expected.hexdigest())
    assert abs(time.time() - int(timestamp)) < 120
    payload = json.loads(body)
    assert (payload["type"], payload["data"]["id"]) == ("job.completed", job_id)
    assert payload["data"]["result"] == job["result"]


def test_a_job_cancelled_before_it_finishes_ends_cancelled(system):
    set_latency(system, 4000)
    try:
        with gateway(system) as client:
            job_id = client.post("/v1/jobs", json=chat_body("slow job")).json()["id"]
            wait_until(
                lambda: client.get(f"/v1/jobs/{job_id}").status_code == 200,
                timeout=20,
                message="history to record the job",
            )
            cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
            time.sleep(5)  # inference's own reply (cancelled or late) has arrived by now
            final = client.get(f"/v1/jobs/{job_id}").json()
            again = client.post(f"/v1/jobs/{job_id}/cancel")
            unknown = client.post(f"/v1/jobs/{uuid.uuid4().hex}/cancel")
    finally:
        set_latency(system, 0)

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert final["status"] == "cancelled"
    assert final["result"] is None
    assert again.json()["status"] == "cancelled"
    assert unknown.status_code == 404


@pytest.fixture(scope="module")
def other_tenant_key(system) -> str:
    email = f"other-{uuid.uuid4().hex[:8]}@example.com"
    system.cli("users", "create", "--email", email, "--tenant", "other", "--no-password")
    return json.loads(system.cli("keys", "create", "--email", email, "--json"))["key"]


def test_a_messages_job_is_answered_in_anthropics_api(system):
    text = f"job {uuid.uuid4().hex}"
    body = {
        "model": "sim-claude",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
    }
    with gateway(system) as client:
        created = client.post("/v1/jobs", json={"url": "/v1/messages", "body": body})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]

        def finished():
            response = client.get(f"/v1/jobs/{job_id}")
            done = response.status_code == 200 and response.json()["status"] == "completed"
            return done and response.json()

        job = wait_until(finished, timeout=30, message="the job to complete")

    assert job["api"] == "anthropic.messages"
    assert job["result"]["type"] == "message"
    assert job["result"]["content"][0]["text"] == f"Simulated reply to: {text}"


def test_history_filters_and_usage_as_json_and_csv(system):
    with gateway(system) as client:
        raw = client.post("/v1/chat/completions", json=chat_body(f"usage {uuid.uuid4().hex}"))
        request_id = raw.headers["x-request-id"]

        def listed():
            response = client.get(
                "/v1/history",
                params={"status": "completed", "model": "sim-small", "since": "1h", "limit": 100},
            )
            return request_id in [item["id"] for item in response.json()["data"]]

        wait_until(listed, timeout=30, message="the request in the filtered history")
        item = client.get(f"/v1/history/{request_id}").json()
        usage = client.get("/v1/usage", params={"since": "1d", "group_by": "day,model"}).json()
        as_csv = client.get("/v1/usage", params={"since": "1d"}, headers={"Accept": "text/csv"})
        bad = client.get("/v1/history", params={"since": "tomorrow-ish"})

    assert item["deployment"] and item["latency_ms"] is not None and item["usage"]["total_tokens"]
    assert (item["api"], item["client_api"]) == ("openai.chat_completions",) * 2
    assert {"cache_read_input_tokens", "reasoning_tokens"} <= set(item["usage"])
    sim_small = [row for row in usage["data"] if row["model"] == "sim-small"]
    assert sim_small and sum(row["requests"] for row in sim_small) >= 1
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert int(rows[-1]["requests"]) >= 1
    assert int(rows[-1]["cache_creation_input_tokens"]) >= 0
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
    report = system.cli(
        "usage", "report", "--since", "1d", "--group-by", "model", "--format", "csv"
    )
    assert "sim-small" in report


def test_a_thousand_ids_of_another_tenant_read_nothing(system, other_tenant_key):
    # A thousand requests of tenant e2e, written straight into its history.
    now = datetime.now(UTC)
    theirs = [
        ChatRequested(
            source="gateway",
            tenant="e2e",
            request_id=uuid.uuid4().hex,
            data=ChatRequestData(
                api=ClientAPI.OPENAI_CHAT_COMPLETIONS,
                model="sim-small",
                body=chat_body("private"),
                user_id="someone",
                deadline=now + timedelta(hours=1),
            ),
        )
        for _ in range(1000)
    ]

    async def record() -> None:
        engine = history_engine(system.database_url)
        try:
            await EventRecorder(engine).record(theirs)
        finally:
            await engine.dispose()

    asyncio.run(record())

    async def probe() -> list[int]:
        async with httpx.AsyncClient(
            base_url=system.url("gateway"),
            headers={"Authorization": f"Bearer {other_tenant_key}"},
            timeout=30,
            limits=httpx.Limits(max_connections=32),
        ) as client:
            semaphore = asyncio.Semaphore(32)

            async def get(path: str) -> int:
                async with semaphore:
                    for attempt in range(5):  # transient refusals (429/503) say nothing yet
                        status = (await client.get(path)).status_code
                        if status not in (429, 503):
                            return status
                        await asyncio.sleep(0.2 * (attempt + 1))
                    return status

            paths = [f"/v1/history/{r.request_id}" for r in theirs]
            paths += [f"/v1/jobs/{r.request_id}" for r in theirs[:100]]
            return await asyncio.gather(*(get(path) for path in paths))

    statuses = asyncio.run(probe())
    with httpx.Client(
        base_url=system.url("gateway"), headers={"Authorization": f"Bearer {other_tenant_key}"}
    ) as client:
        listed = client.get("/v1/history", params={"limit": 100}).json()["data"]
        usage = client.get("/v1/usage", params={"since": "1d"}).json()

    assert statuses.count(404) == len(statuses) == 1100, collections.Counter(statuses)
    assert listed == []
    assert usage["totals"]["requests"] == 0
