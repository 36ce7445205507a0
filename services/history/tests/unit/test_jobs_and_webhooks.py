"""Jobs as history serves them (status, result, cancellation) and their webhooks: signed
deliveries checked by a real receiver on 127.0.0.1, retried with backoff."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from switchyard.common.events import Priority
from switchyard.common.testing.infra import async_wait_until
from switchyard.history.config import Settings
from switchyard.history.webhooks import (
    SignatureError,
    WebhookPolicy,
    sign,
    verify_signature,
)

TOKEN = "test-internal-token"


class Receiver:
    """A webhook receiver on 127.0.0.1: fails the first `failures` deliveries with 500."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.deliveries.append((dict(self.headers.items()), body))
                status = 500 if receiver.failures > 0 else 204
                receiver.failures -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/switchyard"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receivers: list[Receiver] = []

    def make(failures: int = 0) -> Receiver:
        receivers.append(Receiver(failures))
        return receivers[-1]

    yield make
    for item in receivers:
        item.close()


@pytest.fixture
def service_settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        internal_token=TOKEN,
        topic_prefix="t1",
        webhook_poll_interval_s=0.05,
        webhook_initial_backoff_s=0.05,
        webhook_max_backoff_s=0.2,
        webhook_max_attempts=4,
        sweep_interval_s=3600,
        webhook_allowed_networks=["127.0.0.0/8"],
    )


def job_request(events, **options):
    return events.requested(priority=Priority.BATCH, timeout_s=3600, **options)


async def _job(service, job_id: str, **identity) -> tuple[int, dict]:
    response = await service.client.get(f"/v1/jobs/{job_id}", headers=service.headers(**identity))
    return response.status_code, response.json()


async def test_a_job_is_queued_then_completed_with_its_result(service, events):
    job = job_request(events, prompt="Summarise War and Peace")
    await service.publish(job)
    queued = await async_wait_until(
        lambda: _status(service, job.request_id, "queued"), timeout=10, message="the job"
    )
    await service.publish(events.completed(job, answer="Long."), events.usage(job))
    done = await async_wait_until(
        lambda: _status(service, job.request_id, "completed"), timeout=10, message="completion"
    )

    assert (queued["object"], queued["status"], queued["result"]) == ("job", "queued", None)
    assert done["result"]["choices"][0]["message"]["content"] == "Long."
    assert done["usage"]["total_tokens"] == 8
    assert done["completed_at"] is not None and done["error"] is None


async def _status(service, job_id: str, status: str) -> dict | None:
    code, body = await _job(service, job_id)
    return body if code == 200 and body["status"] == status else None


async def test_jobs_list_holds_only_jobs_and_filters_by_status(service, recorder, events):
    interactive = events.requested()
    first, second = job_request(events), job_request(events)
    await recorder.record([interactive, first, second, events.failed(second)])

    listed = (await service.client.get("/v1/jobs", headers=service.headers())).json()
    failed = (
        await service.client.get("/v1/jobs", params={"status": "failed"}, headers=service.headers())
    ).json()
    queued = (
        await service.client.get("/v1/jobs", params={"status": "queued"}, headers=service.headers())
    ).json()
    bad = await service.client.get(
        "/v1/jobs", params={"status": "pending"}, headers=service.headers()
    )

    assert [job["id"] for job in listed["data"]] == [second.request_id, first.request_id]
    assert [job["id"] for job in failed["data"]] == [second.request_id]
    assert failed["data"][0]["error"]["code"] == "provider_down"
    assert [job["id"] for job in queued["data"]] == [first.request_id]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"
    assert (await _job(service, interactive.request_id))[0] == 404


async def test_a_job_is_in_progress_once_inference_starts_it(service, recorder, events):
    """`queued` while it waits in the batch lane, `in_progress` (with `started_at`) once
    inference says it began (`chat.started`); `?status=` tells the two apart, and a job in
    progress can still be cancelled."""
    waiting, running, done = job_request(events), job_request(events), job_request(events)
    await recorder.record([waiting, running, done])
    await recorder.record([events.started(running), events.started(done)])
    await recorder.record([events.completed(done), events.usage(done)])

    async def listed(status: str) -> list[str]:
        response = await service.client.get(
            "/v1/jobs", params={"status": status}, headers=service.headers()
        )
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["data"]]

    _, shown = await _job(service, running.request_id)
    assert (shown["status"], shown["result"], shown["error"]) == ("in_progress", None, None)
    assert shown["started_at"] is not None and shown["completed_at"] is None
    _, still_waiting = await _job(service, waiting.request_id)
    assert (still_waiting["status"], still_waiting["started_at"]) == ("queued", None)
    _, finished = await _job(service, done.request_id)
    assert finished["status"] == "completed" and finished["started_at"] is not None
    assert await listed("queued") == [waiting.request_id]
    assert await listed("in_progress") == [running.request_id]
    assert await listed("queued,in_progress") == [running.request_id, waiting.request_id]
    assert await listed("completed") == [done.request_id]

    cancelled = await service.client.post(
        f"/v1/jobs/{running.request_id}/cancel", headers=service.headers()
    )
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    refused = await service.client.post(
        f"/v1/jobs/{done.request_id}/cancel", headers=service.headers()
    )
    assert refused.status_code == 409
    assert "queued or in progress" in refused.json()["error"]["message"]


async def test_a_query_parameter_the_api_does_not_read_is_refused(service):
    """`after` (OpenAI's way of paging) was ignored: each page was the first one again."""
    refused = await service.client.get(
        "/v1/jobs", params={"after": "job-1", "limit": 1}, headers=service.headers()
    )
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["param"], error["code"]) == ("after", "unknown_parameter")
    assert "cursor" in error["message"]
    listed = await service.client.get(
        "/v1/jobs", params={"status[]": "queued", "limit": 1}, headers=service.headers()
    )
    assert listed.status_code == 200, listed.text
    for path in ("/v1/history", "/v1/usage"):
        answer = await service.client.get(path, params={"bogus": "1"}, headers=service.headers())
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "bogus"


async def test_cancelling_a_queued_job_records_its_terminal_state_once(
    service, recorder, tables, events
):
    job = job_request(events)
    await recorder.record([job])

    cancelled = await service.client.post(
        f"/v1/jobs/{job.request_id}/cancel", headers=service.headers()
    )
    again = await service.client.post(
        f"/v1/jobs/{job.request_id}/cancel", headers=service.headers()
    )
    # Inference had already started it: its late reply does not change the outcome.
    await recorder.record([events.completed(job), events.usage(job)])

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"]["code"] == "job_cancelled"
    assert "by its owner" in cancelled.json()["error"]["message"]
    assert again.status_code == 200  # cancelling again is harmless
    assert again.json()["status"] == "cancelled"
    row = await tables.request(job.request_id)
    assert (row["status"], row["response"]) == ("cancelled", None)
    assert row["cost_usd"] == pytest.approx(0.0021)  # what was spent is still accounted
    # The request, the cancellation and the usage: the late reply is a second outcome, which
    # history does not store (a request has exactly one terminal state).
    assert await tables.event_count() == 3


async def test_a_finished_job_cannot_be_cancelled_and_others_cannot_cancel(
    service, recorder, events
):
    job = job_request(events)
    await recorder.record([job, events.completed(job)])
    finished = await service.client.post(
        f"/v1/jobs/{job.request_id}/cancel", headers=service.headers()
    )
    queued = job_request(events)
    await recorder.record([queued])
    colleague = await service.client.post(
        f"/v1/jobs/{queued.request_id}/cancel", headers=service.headers(user_id="bob")
    )
    admin = await service.client.post(
        f"/v1/jobs/{queued.request_id}/cancel",
        headers=service.headers(user_id="root", role="admin"),
    )

    assert finished.status_code == 409
    assert finished.json()["error"]["code"] == "job_not_cancellable"
    assert colleague.status_code == 404
    assert admin.status_code == 200
    # The owner (and the webhook's receiver) reads who cancelled it: a role, never the
    # administrator's user id.
    message = admin.json()["error"]["message"]
    assert message == "The job was cancelled by an administrator before it finished."
    assert "root" not in message


async def test_webhook_is_signed_and_verifiable_by_the_receiver(
    service, recorder, events, receiver
):
    hook = receiver()
    job = job_request(events, webhook_url=hook.url, tenant="acme", team_id="team-ml")
    await recorder.record([job, events.completed(job, answer="Forty-two"), events.usage(job)])
    admin = service.headers(user_id="root", role="admin")
    secret = (await service.client.get("/v1/history/settings", headers=admin)).json()[
        "webhook_secret"
    ]

    await async_wait_until(
        lambda: _async(len(hook.deliveries) == 1), timeout=10, message="the webhook"
    )
    headers, body = hook.deliveries[0]

    # What a receiver does, written out: HMAC-SHA256 over "<timestamp>.<raw body>".
    timestamp = headers["Switchyard-Timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    assert headers["Switchyard-Signature"] == "v1=" + expected.hexdigest()
    assert abs(time.time() - int(timestamp)) < 60
    payload = json.loads(body)
    assert payload["type"] == "job.completed"
    assert payload["id"] == headers["Switchyard-Webhook-Id"] == f"whd_{job.request_id}"
    assert payload["data"]["id"] == job.request_id
    # Signed with the address it was made for, which a receiver checks is its own.
    assert payload["data"]["webhook"] == {"url": hook.url}
    # Signed with who created it, which a receiver serving one team checks: the secret is
    # the tenant's, so any member could have a delivery sent to another team's receiver.
    creator = {name: payload["data"][name] for name in ("user_id", "api_key_id", "team_id")}
    assert creator == {"user_id": "alice", "api_key_id": "key-1", "team_id": "team-ml"}
    assert payload["data"]["result"]["choices"][0]["message"]["content"] == "Forty-two"
    # The helper agrees, and refuses tampering, other secrets and replays of old requests.
    verify_signature(secret, body, headers)
    with pytest.raises(SignatureError):
        verify_signature(secret, body.replace(b"Forty-two", b"Forty-one"), headers)
    with pytest.raises(SignatureError):
        verify_signature("whsec_other", body, headers)
    with pytest.raises(SignatureError):
        verify_signature(secret, body, headers, now=int(timestamp) + 301)
    job_view = (await _job(service, job.request_id))[1]
    await async_wait_until(
        lambda: _webhook_status(service, job.request_id, "delivered"), timeout=5, message="state"
    )
    assert job_view["webhook"]["url"] == hook.url


async def _webhook_status(service, job_id: str, status: str):
    _, job = await _job(service, job_id)
    return job["webhook"] and job["webhook"]["status"] == status


async def test_webhook_is_retried_with_backoff_until_it_is_accepted(
    service, recorder, events, receiver
):
    hook = receiver(failures=2)
    job = job_request(events, webhook_url=hook.url)
    await recorder.record([job, events.failed(job)])

    await async_wait_until(
        lambda: _webhook_status(service, job.request_id, "delivered"),
        timeout=10,
        message="delivery after two failures",
    )

    assert len(hook.deliveries) == 3
    ids = {headers["Switchyard-Webhook-Id"] for headers, _ in hook.deliveries}
    assert ids == {f"whd_{job.request_id}"}  # the same id each time: receivers deduplicate
    assert json.loads(hook.deliveries[-1][1])["type"] == "job.failed"
    _, view = await _job(service, job.request_id)
    assert view["webhook"]["attempts"] == 3


async def test_webhook_gives_up_after_its_attempts(service, recorder, events, receiver):
    hook = receiver(failures=100)
    job = job_request(events, webhook_url=hook.url)
    await recorder.record([job, events.completed(job)])

    await async_wait_until(
        lambda: _webhook_status(service, job.request_id, "failed"), timeout=10, message="give up"
    )
    assert len(hook.deliveries) == 4
    _, view = await _job(service, job.request_id)
    assert "500" in view["webhook"]["last_error"]


async def test_no_webhook_before_the_job_ends(service, recorder, events, receiver):
    hook = receiver()
    job = job_request(events, webhook_url=hook.url)
    await recorder.record([job])
    await service.components.webhooks.deliver_due()
    assert hook.deliveries == []


async def test_a_reply_after_history_expired_the_job_is_delivered_too(
    service, recorder, events, receiver
):
    """The receiver got `job.expired` (history's provisional expiry); the reply arriving
    afterwards replaces it, and is delivered as well, under an id of its own."""
    hook = receiver()
    job = job_request(events, webhook_url=hook.url)
    await recorder.record([job])
    assert await recorder.expire_overdue(datetime.now(UTC)) == 1
    await async_wait_until(
        lambda: _webhook_status(service, job.request_id, "delivered"), timeout=10, message="expiry"
    )

    await recorder.record([events.completed(job, answer="Late."), events.usage(job)])
    await async_wait_until(
        lambda: _async(len(hook.deliveries) == 2), timeout=10, message="the real outcome"
    )
    await async_wait_until(
        lambda: _webhook_status(service, job.request_id, "delivered"), timeout=10, message="state"
    )

    sent = [(headers, json.loads(body)) for headers, body in hook.deliveries]
    assert [(h["Switchyard-Webhook-Id"], h["Switchyard-Event"]) for h, _ in sent] == [
        (f"whd_{job.request_id}", "job.expired"),
        (f"whd_{job.request_id}.1", "job.completed"),
    ]
    assert sent[1][1]["data"]["result"]["choices"][0]["message"]["content"] == "Late."
    _, view = await _job(service, job.request_id)
    assert view["status"] == "completed"
    assert (view["webhook"]["status"], view["webhook"]["attempts"]) == ("delivered", 1)


async def test_a_job_cancelled_before_its_request_was_recorded_gets_its_webhook(
    service, events, receiver
):
    """The gateway vouches for a job history has not recorded yet (`accepted`): the
    cancellation is recorded first, and the request, arriving afterwards, still brings the
    job's webhook, which delivers `job.cancelled`."""
    hook = receiver()
    job = job_request(events, webhook_url=hook.url)
    cancelled = await service.client.post(
        f"/v1/jobs/{job.request_id}/cancel",
        params={"accepted": "true"},
        headers=service.headers(),
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"

    await service.publish(job)
    await async_wait_until(
        lambda: _async(len(hook.deliveries) == 1), timeout=10, message="the webhook"
    )
    headers, body = hook.deliveries[0]
    assert headers["Switchyard-Event"] == "job.cancelled"
    assert json.loads(body)["data"]["error"]["code"] == "job_cancelled"
    await async_wait_until(
        lambda: _webhook_status(service, job.request_id, "delivered"), timeout=5, message="state"
    )


def test_signatures_bind_the_timestamp():
    assert sign("s", 1, b"{}") != sign("s", 2, b"{}")
    with pytest.raises(SignatureError):
        verify_signature("s", b"{}", {"Switchyard-Signature": "v1=00"})


async def _async(value):
    return value


def test_webhook_retry_waits_are_full_jitter_and_capped() -> None:
    policy = WebhookPolicy(initial_backoff_s=1.0, max_backoff_s=30.0)
    random.seed(11)
    for attempts, ceiling in [(1, 1.0), (3, 4.0), (5, 16.0), (40, 30.0)]:
        waits = [policy.backoff(attempts) for _ in range(500)]
        assert 0 <= min(waits) < ceiling * 0.05
        assert ceiling * 0.95 < max(waits) <= ceiling
