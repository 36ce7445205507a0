"""History refusing what it must: instants and cursors that overflow (or whose time has
no UTC equivalent), oversized and over-deep bodies, webhooks into private networks or to
malformed URLs, receivers whose answers must not leak, slow receivers holding up other
tenants, a job cancelled before its request is recorded, and content kept by the
idempotency store of a metadata-only tenant."""

from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from switchyard.common.events import Priority
from switchyard.common.testing.infra import async_wait_until
from switchyard.history.config import Settings

TOKEN = "test-internal-token"
LOCAL = ["127.0.0.0/8"]


class Receiver:
    """A webhook receiver on 127.0.0.1 answering `status` with `body`; while `hold` is set,
    each request waits until it is released."""

    def __init__(self, status: int = 204, body: bytes = b"", hold: bool = False) -> None:
        self.deliveries: list[bytes] = []
        self.release = threading.Event()
        if not hold:
            self.release.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                receiver.deliveries.append(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.release.wait(20)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(**options) -> Receiver:
        made.append(Receiver(**options))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def hook_settings(database_url: str, allowed: list[str], **overrides) -> Settings:
    return Settings(
        database_url=database_url,
        internal_token=TOKEN,
        topic_prefix="t1",
        webhook_poll_interval_s=0.05,
        webhook_initial_backoff_s=0.05,
        webhook_max_backoff_s=0.2,
        webhook_max_attempts=3,
        webhook_timeout_s=5,
        sweep_interval_s=3600,
        webhook_allowed_networks=allowed,
        **overrides,
    )


async def webhook_of(service, job_id: str, status: str, **identity) -> dict:
    async def current():
        response = await service.client.get(
            f"/v1/jobs/{job_id}", headers=service.headers(**identity)
        )
        hook = response.json().get("webhook") if response.status_code == 200 else None
        return hook if hook and hook["status"] == status else None

    return await async_wait_until(current, timeout=15, message=f"webhook {status}")


@pytest.mark.parametrize(
    "params",
    [
        {"since": "99999999999d"},
        {"since": "999999999w"},
        {"since": "0001-01-01T00:00:00+01:00"},
        {"until": "9999-12-31T23:59:59-05:00"},
        {"until": "9999-12-31"},
        {"since": "1e308d"},
    ],
)
async def test_overflowing_times_are_400_on_history_and_usage(service, params):
    for path in ("/v1/history", "/v1/usage"):
        response = await service.client.get(path, params=params, headers=service.headers())
        assert response.status_code == 400, (path, params, response.text)
        assert response.json()["error"]["code"] == "invalid_time"


@pytest.mark.parametrize("path", ["/v1/history", "/v1/jobs"])
async def test_a_deeply_nested_cursor_is_400(service, path):
    cursor = base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode().rstrip("=")
    response = await service.client.get(path, params={"cursor": cursor}, headers=service.headers())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "cursor"


@pytest.mark.parametrize("path", ["/v1/history", "/v1/jobs", "/v1/replays"])
@pytest.mark.parametrize("instant", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
async def test_a_cursor_whose_time_has_no_utc_equivalent_is_400(service, path, instant):
    raw = f'["{instant}","x"]'.encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    response = await service.client.get(path, params={"cursor": cursor}, headers=service.headers())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("cursor", "invalid_cursor")


async def test_bodies_over_the_limit_are_413_and_over_deep_ones_400(database_url, start_service):
    settings = hook_settings(
        database_url, [], max_body_bytes=100_000, idempotency_max_body_bytes=70_000
    )
    async with start_service(settings) as running:
        admin = running.headers(role="admin")
        big = await running.client.put(
            "/v1/history/settings",
            content=b'{"x": "' + b"a" * 200_000 + b'"}',
            headers=admin | {"content-type": "application/json"},
        )
        deep = await running.client.put(
            "/v1/history/settings",
            content=b'{"x": ' + b"[" * 300 + b"]" * 300 + b"}",
            headers=admin | {"content-type": "application/json"},
        )
    assert big.status_code == 413
    assert deep.status_code == 400 and deep.json()["error"]["code"] == "json_too_deep"


def test_the_body_limit_must_hold_stored_idempotency_responses(database_url):
    with pytest.raises(ValueError, match="MAX_BODY_BYTES"):
        Settings(database_url=database_url, max_body_bytes=1_000_000)


async def test_webhooks_to_private_addresses_are_refused_by_default(
    database_url, start_service, recorder, events, receivers
):
    hook = receivers()
    async with start_service(hook_settings(database_url, [])) as running:
        job = events.requested(priority=Priority.BATCH, timeout_s=3600, webhook_url=hook.url)
        await recorder.record([job, events.completed(job)])
        state = await webhook_of(running, job.request_id, "failed")

    assert hook.deliveries == []
    assert state["attempts"] == 1  # refused once, not retried
    assert state["last_error"] == "refused destination: not a public address"


async def test_what_a_receiver_answers_is_never_reported(
    database_url, start_service, recorder, events, receivers
):
    hook = receivers(status=500, body=b"root:x:0:0 internal admin page")
    async with start_service(hook_settings(database_url, LOCAL)) as running:
        job = events.requested(priority=Priority.BATCH, timeout_s=3600, webhook_url=hook.url)
        closed = events.requested(
            priority=Priority.BATCH, timeout_s=3600, webhook_url="http://127.0.0.1:9/closed"
        )
        await recorder.record([job, events.completed(job), closed, events.completed(closed)])
        answered = await webhook_of(running, job.request_id, "failed")
        refused = await webhook_of(running, closed.request_id, "failed")

    assert answered["last_error"] == "receiver answered 500"
    assert refused["last_error"] == "could not connect"  # no errno, no OS message


@pytest.mark.parametrize("url", ["http://host:1:2/", "http://[x/", "http://ok.example/\r\nX: 1"])
async def test_a_malformed_stored_url_settles_at_once_and_blocks_nobody(
    database_url, start_service, recorder, events, receivers, url
):
    hook = receivers()
    async with start_service(hook_settings(database_url, LOCAL)) as running:
        bad = events.requested(priority=Priority.BATCH, timeout_s=3600, webhook_url=url)
        good = events.requested(priority=Priority.BATCH, timeout_s=3600, webhook_url=hook.url)
        await recorder.record([bad, events.completed(bad), good, events.completed(good)])
        failed = await webhook_of(running, bad.request_id, "failed")
        await webhook_of(running, good.request_id, "delivered")

    assert failed["attempts"] == 1
    assert failed["last_error"].startswith("invalid webhook_url")
    assert len(hook.deliveries) == 1


async def test_a_stalled_receiver_does_not_hold_up_another_tenants_webhooks(
    database_url, start_service, recorder, events, receivers
):
    stalled = receivers(hold=True)
    prompt = receivers()
    async with start_service(hook_settings(database_url, LOCAL)) as running:
        slow_jobs = [
            events.requested(
                priority=Priority.BATCH, timeout_s=3600, webhook_url=stalled.url, tenant="slow"
            )
            for _ in range(6)
        ]
        for job in slow_jobs:
            await recorder.record([job, events.completed(job)])
        await async_wait_until(
            lambda: _now(len(stalled.deliveries) >= 1), timeout=10, message="a stalled delivery"
        )
        other = events.requested(
            priority=Priority.BATCH, timeout_s=3600, webhook_url=prompt.url, tenant="other"
        )
        await recorder.record([other, events.completed(other)])
        await webhook_of(running, other.request_id, "delivered", tenant="other")
        still_stalled = not stalled.release.is_set()
        in_flight = len(stalled.deliveries)
        stalled.release.set()

    assert still_stalled  # delivered while the other tenant's receiver was still stuck
    assert in_flight <= 4  # one tenant holds at most its share of delivery slots


async def test_a_job_cancelled_before_its_request_is_recorded_stays_cancelled(
    service, recorder, events
):
    job = events.requested(priority=Priority.BATCH, timeout_s=3600)
    unknown = await service.client.post(
        f"/v1/jobs/{job.request_id}/cancel", headers=service.headers()
    )
    vouched = await service.client.post(
        f"/v1/jobs/{job.request_id}/cancel?accepted=true", headers=service.headers()
    )
    await recorder.record([job])  # the request arrives afterwards
    now = await service.client.get(f"/v1/jobs/{job.request_id}", headers=service.headers())

    assert unknown.status_code == 404
    assert vouched.status_code == 200 and vouched.json()["status"] == "cancelled"
    assert now.json()["status"] == "cancelled"
    assert now.json()["error"]["code"] == "job_cancelled"
    assert "by its owner" in now.json()["error"]["message"]


async def test_an_administrators_cancel_before_the_job_is_recorded_says_so(
    service, recorder, events
):
    # The job's owner is not known yet: its owner read "by its owner" although an
    # administrator had cancelled it.
    job = events.requested(priority=Priority.BATCH, timeout_s=3600)
    admin = service.headers(user_id="root", role="admin")
    vouched = await service.client.post(
        f"/v1/jobs/{job.request_id}/cancel?accepted=true", headers=admin
    )
    await recorder.record([job])
    now = await service.client.get(f"/v1/jobs/{job.request_id}", headers=service.headers())
    assert vouched.status_code == 200
    message = now.json()["error"]["message"]
    assert message == "The job was cancelled by an administrator before it finished."


async def test_a_metadata_only_tenant_keeps_no_content_in_the_idempotency_store(service):
    admin = service.headers(user_id="root", role="admin")
    await service.client.put("/v1/history/settings", json={"store_content": False}, headers=admin)
    headers = service.headers()
    claim = {
        "key": "k1",
        "endpoint": "/v1/chat/completions",
        "fingerprint": "f" * 64,
        "lease_s": 60,
    }
    claimed = (
        await service.client.post("/internal/v1/idempotency/claim", json=claim, headers=headers)
    ).json()
    completed = await service.client.post(
        "/internal/v1/idempotency/complete",
        json={
            "key": "k1",
            "claim_token": claimed["claim_token"],
            "request_id": "req-1",
            "status_code": 200,
            "content_type": "application/json",
            "body_b64": base64.b64encode(b'{"answer": "hunter2"}').decode(),
        },
        headers=headers,
    )
    replay = (
        await service.client.post("/internal/v1/idempotency/claim", json=claim, headers=headers)
    ).json()

    assert completed.json() == {"stored": True}
    assert (replay["outcome"], replay["request_id"], replay["body_b64"]) == (
        "completed",
        "req-1",
        None,
    )


async def test_a_completed_key_keeps_the_headers_describing_its_body(service):
    headers = service.headers()
    claim = {"key": "k3", "endpoint": "/v1/messages/count_tokens", "fingerprint": "d" * 64}
    claim["lease_s"] = 60
    claimed = (
        await service.client.post("/internal/v1/idempotency/claim", json=claim, headers=headers)
    ).json()
    complete = {
        "key": "k3",
        "claim_token": claimed["claim_token"],
        "request_id": "req-3",
        "status_code": 200,
        "content_type": "application/json",
        "body_b64": base64.b64encode(b'{"input_tokens": 3}').decode(),
    }
    refused = [
        await service.client.post(
            "/internal/v1/idempotency/complete",
            json={**complete, "headers": bad},
            headers=headers,
        )
        for bad in (
            {"X-Upper": "v"},
            {"x-ok": "line\r\nbreak"},
            {f"x-{n}": "v" for n in range(9)},
        )
    ]
    stored = await service.client.post(
        "/internal/v1/idempotency/complete",
        json={**complete, "headers": {"x-switchyard-token-count": "estimate"}},
        headers=headers,
    )
    replay = (
        await service.client.post("/internal/v1/idempotency/claim", json=claim, headers=headers)
    ).json()

    assert [answer.status_code for answer in refused] == [400, 400, 400]
    assert stored.json() == {"stored": True}
    assert replay["headers"] == {"x-switchyard-token-count": "estimate"}


async def test_a_metadata_only_tenant_keeps_a_response_holding_no_content(service):
    # A created replay's answer (its id and state): kept, so a retry gets it back.
    admin = service.headers(user_id="root", role="admin")
    await service.client.put("/v1/history/settings", json={"store_content": False}, headers=admin)
    headers = service.headers()
    claim = {"key": "k2", "endpoint": "/v1/replays", "fingerprint": "e" * 64, "lease_s": 60}
    claimed = (
        await service.client.post("/internal/v1/idempotency/claim", json=claim, headers=headers)
    ).json()
    answer = base64.b64encode(b'{"object": "replay", "id": "rp_1"}').decode()
    await service.client.post(
        "/internal/v1/idempotency/complete",
        json={
            "key": "k2",
            "claim_token": claimed["claim_token"],
            "request_id": None,
            "status_code": 201,
            "content_type": "application/json",
            "body_b64": answer,
            "holds_content": False,
        },
        headers=headers,
    )
    replay = (
        await service.client.post("/internal/v1/idempotency/claim", json=claim, headers=headers)
    ).json()

    assert (replay["outcome"], replay["body_b64"]) == ("completed", answer)


async def _now(value):
    return value


async def test_a_key_awaiting_an_outcome_through_the_internal_api(service):
    headers = service.headers()
    claim = {"key": "k4", "endpoint": "/v1/chat/completions", "fingerprint": "9" * 64}
    claim["lease_s"] = 60
    claimed = (
        await service.client.post("/internal/v1/idempotency/claim", json=claim, headers=headers)
    ).json()
    body = {"key": "k4", "claim_token": claimed["claim_token"], "request_id": "req-4"}
    refused = [
        await service.client.post(
            "/internal/v1/idempotency/await-outcome", json=bad, headers=headers
        )
        for bad in (
            body,  # no lease
            {**body, "lease_s": 0},
            {**body, "lease_s": 1e9},
            {**body, "lease_s": 60, "request_id": ""},
            {**body, "lease_s": 60, "request_id": "r" * 65},
            {**body, "lease_s": "soon"},
        )
    ]
    unauthorised = await service.client.post(
        "/internal/v1/idempotency/await-outcome", json={**body, "lease_s": 60}
    )
    stale = await service.client.post(
        "/internal/v1/idempotency/await-outcome",
        json={**body, "claim_token": "not-it", "lease_s": 60},
        headers=headers,
    )
    held = await service.client.post(
        "/internal/v1/idempotency/await-outcome", json={**body, "lease_s": 60}, headers=headers
    )
    retry = (
        await service.client.post("/internal/v1/idempotency/claim", json=claim, headers=headers)
    ).json()

    assert all(answer.status_code in (400, 422) for answer in refused), [
        answer.status_code for answer in refused
    ]
    assert unauthorised.status_code == 401
    assert stale.json() == {"held": False}
    assert held.json() == {"held": True}
    assert (retry["outcome"], retry["request_id"]) == ("in_progress", "req-4")
