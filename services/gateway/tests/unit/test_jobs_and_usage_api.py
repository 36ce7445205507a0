"""`/v1/jobs` (published to the batch lane, served by history), `/v1/usage` and the history
settings through the gateway: authentication, validation and what history is sent."""

from __future__ import annotations

import asyncio
import json

import pytest

from switchyard.common.bus import BusUnavailableError
from switchyard.common.events import ChatCancelRequested, ChatRequested, new_id, utcnow
from switchyard.common.responses import response_id
from switchyard.common.testing.infra import async_wait_until

from .conftest import API_KEY, TEST_KEY_IDENTITY
from .history_fakes import install

BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "Summarise this"}]}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
async def history(harness):
    return await install(harness)


@pytest.fixture
async def lanes(harness):
    """What reaches the batch topic and the control topic."""
    seen: dict[str, list] = {"batch": [], "control": []}
    topics = harness.app.state.gateway.topics

    async def on_batch(event):
        seen["batch"].append(event)

    async def on_control(event):
        seen["control"].append(event)

    await harness.bus.subscribe([topics.requests_batch], "test-batch", on_batch)
    await harness.bus.subscribe([topics.control], "test-control", on_control)
    return seen


async def test_a_job_is_accepted_and_published_to_the_batch_lane(harness, history, lanes):
    response = await harness.client.post(
        "/v1/jobs", json={**BODY, "webhook_url": "https://hooks.example.com/sy"}, headers=AUTH
    )

    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["object"], job["status"], job["model"]) == ("job", "queued", "sim-small")
    assert job["webhook"] == {
        "url": "https://hooks.example.com/sy",
        "status": "pending",
        "attempts": 0,
        "delivered_at": None,
        "last_error": None,
    }
    # The shape GET /v1/jobs/{id} shows (history's `job_object`), field for field.
    from datetime import UTC, datetime

    from switchyard.history.jobs import job_object

    shown = job_object(
        {
            "request_id": job["id"],
            "status": "pending",
            "created_at": datetime.now(UTC),
            "webhook_url": "https://hooks.example.com/sy",
        }
    )
    assert set(job) == set(shown) and set(job["webhook"]) == set(shown["webhook"])
    assert set(job["usage"]) == set(shown["usage"])
    assert job["usage"]["total_tokens"] == 0 and job["cost_usd"] is None
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    [event] = await async_wait_until(
        lambda: _async(lanes["batch"]), timeout=5, message="the job on the batch topic"
    )
    assert isinstance(event, ChatRequested)
    assert event.request_id == job["id"]
    assert event.data.priority == "batch"
    assert event.data.reply_to is None
    assert event.data.webhook_url == "https://hooks.example.com/sy"
    assert "webhook_url" not in event.data.body  # not sent to the provider
    assert event.data.body["messages"] == BODY["messages"]
    assert (event.data.deadline - event.time).total_seconds() == pytest.approx(86_400)
    assert not harness.requests  # nothing on the interactive lane


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({**BODY, "stream": True}, 400, "stream"),
        ({**BODY, "webhook_url": "ftp://example.com"}, 400, "webhook_url"),
        ({**BODY, "webhook_url": "https://user:pw@example.com/"}, 400, "webhook_url"),
        ({**BODY, "webhook_url": 42}, 400, "webhook_url"),
        ({"model": "sim-small"}, 400, "messages"),
        ({**BODY, "model": "no-such-model"}, 404, "model"),
    ],
)
async def test_bad_jobs_are_refused(harness, history, lanes, body, status, param):
    response = await harness.client.post("/v1/jobs", json=body, headers=AUTH)

    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    await asyncio.sleep(0.05)
    assert lanes["batch"] == []


async def test_a_job_carries_any_apis_body_unchanged_with_its_api(harness, history, lanes):
    message = {
        "model": "sim-claude",
        "max_tokens": 256,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Summarise this"}],
        "a_new_parameter": [1, 2],
    }
    response = await harness.client.post(
        "/v1/jobs",
        json={"url": "/v1/messages", "body": message, "webhook_url": "https://hooks.example.com/"},
        headers={**AUTH, "anthropic-version": "2023-06-01", "anthropic-beta": "b1"},
    )

    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["api"], job["model"]) == ("anthropic.messages", "sim-claude")
    [event] = await async_wait_until(
        lambda: _async(lanes["batch"]), timeout=5, message="the job on the batch topic"
    )
    assert event.data.api == "anthropic.messages"
    assert event.data.body == message
    assert event.data.headers == {"anthropic-version": "2023-06-01", "anthropic-beta": "b1"}
    assert event.data.webhook_url == "https://hooks.example.com/"
    assert response.headers["x-request-id"] == job["id"] == event.request_id


async def test_a_batch_api_request_line_is_taken_as_it_is(harness, history, lanes):
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": BODY}
    response = await harness.client.post("/v1/jobs", json=line, headers=AUTH)
    assert response.status_code == 202, response.text


async def test_a_plain_chat_completions_job_is_an_openai_chat_completions_request(
    harness, history, lanes
):
    response = await harness.client.post("/v1/jobs", json=BODY, headers=AUTH)
    assert response.status_code == 202
    [event] = await async_wait_until(
        lambda: _async(lanes["batch"]), timeout=5, message="the job on the batch topic"
    )
    assert event.data.api == "openai.chat_completions"
    assert event.data.body == BODY


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"url": "/v1/completions", "body": BODY}, 400, "url"),
        ({"url": 7, "body": BODY}, 400, "url"),
        ({"url": "/v1/messages"}, 400, "body"),
        ({"url": "/v1/messages", "body": "text"}, 400, "body"),
        ({"url": "/v1/messages", "body": BODY}, 400, "body.max_tokens"),
        ({"url": "/v1/embeddings", "body": {"model": "sim-small"}}, 400, "body.input"),
        # Named where the caller wrote them: inside the request line's `body`.
        ({"url": "/v1/chat/completions", "body": {**BODY, "stream": True}}, 400, "body.stream"),
        ({"url": "/v1/chat/completions", "body": {**BODY, "model": "nope"}}, 404, "body.model"),
        # A request line without its `url` is not taken for a Chat Completions body.
        ({"body": BODY}, 400, "url"),
        ({"custom_id": "a", "body": BODY}, 400, "url"),
        (
            {"url": "/v1/chat/completions", "body": BODY, "webhook": {"url": "https://a.b"}},
            400,
            "webhook",
        ),
        ({"url": "/v1/chat/completions", "body": BODY, "method": "GET"}, 400, "method"),
        # OpenAI's batch lines take a string.
        ({"url": "/v1/chat/completions", "body": BODY, "custom_id": 123}, 400, "custom_id"),
        ({"url": "/v1/chat/completions", "body": BODY, "custom_id": ["r1"]}, 400, "custom_id"),
    ],
)
async def test_bad_jobs_of_any_api_are_refused(harness, history, lanes, body, status, param):
    response = await harness.client.post("/v1/jobs", json=body, headers=AUTH)

    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    await asyncio.sleep(0.05)
    assert lanes["batch"] == []


async def test_a_job_gets_the_body_limit_of_its_own_api(harness, history, lanes):
    # Under the Messages limit of this test's settings, over the Embeddings one.
    big = {"model": "sim-small", "input": "x" * 30_000}
    response = await harness.client.post(
        "/v1/jobs", json={"url": "/v1/embeddings", "body": big}, headers=AUTH
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_a_job_is_held_to_its_requests_limit_not_to_its_envelopes(harness, history, lanes):
    """A Chat Completions body just under its route's limit (50,000 bytes here) was refused
    as a job once the job's own fields around it passed the limit."""

    def chat(size: int) -> dict:
        body = {"model": "sim-small", "messages": [{"role": "user", "content": ""}]}
        body["messages"][0]["content"] = "x" * (size - len(json.dumps(body)))
        return body

    envelope = {
        "url": "/v1/chat/completions",
        "custom_id": "c" * 500,
        "webhook_url": "https://hooks.example.com/" + "p" * 1500,
    }
    fits = await harness.client.post(
        "/v1/jobs", json={**envelope, "body": chat(49_900)}, headers=AUTH
    )
    assert fits.status_code == 202, fits.text
    over = await harness.client.post(
        "/v1/jobs", json={**envelope, "body": chat(50_100)}, headers=AUTH
    )
    assert over.status_code == 413
    assert over.json()["error"]["code"] == "request_too_large"


async def test_jobs_need_credentials_and_the_bus(harness, history, monkeypatch):
    assert (await harness.client.post("/v1/jobs", json=BODY)).status_code == 401

    async def down(*args, **kwargs):
        raise BusUnavailableError("down")

    monkeypatch.setattr(harness.bus, "publish", down)
    response = await harness.client.post("/v1/jobs", json=BODY, headers=AUTH)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"


async def test_job_reads_go_to_history_as_the_caller(harness, history):
    history.answers["/v1/jobs/abc123"] = (
        200,
        b'{"id": "abc123", "object": "job"}',
        "application/json",
    )

    one = await harness.client.get("/v1/jobs/abc123", headers=AUTH)
    listed = await harness.client.get(
        "/v1/jobs", params={"status": "queued", "limit": 5}, headers=AUTH
    )

    assert one.json() == {"id": "abc123", "object": "job"}
    assert listed.status_code == 200
    first, second = history.calls[-2:]
    assert first.url.path == "/v1/jobs/abc123"
    assert (first.headers["x-switchyard-tenant"], first.headers["x-switchyard-user-id"]) == (
        "acme",
        "user-1",
    )
    assert first.headers["x-switchyard-role"] == "member"
    assert dict(second.url.params) == {"status": "queued", "limit": "5"}


@pytest.mark.parametrize("job_id", ["..%2Fadmin", "x" * 65, "a;b"])
async def test_malformed_job_ids_are_404_without_asking_history(harness, history, job_id):
    for method, path in (("GET", f"/v1/jobs/{job_id}"), ("POST", f"/v1/jobs/{job_id}/cancel")):
        response = await harness.client.request(method, path, headers=AUTH)
        assert response.status_code == 404, (method, path, response.text)
    assert history.calls == []


async def test_cancel_is_recorded_by_history_then_sent_to_inference(harness, history, lanes):
    history.answers["/v1/jobs/j1/cancel"] = (
        200,
        b'{"id": "j1", "status": "cancelled"}',
        "application/json",
    )
    history.answers["/v1/jobs/j2/cancel"] = (
        409,
        b'{"error": {"message": "done"}}',
        "application/json",
    )

    cancelled = await harness.client.post("/v1/jobs/j1/cancel", headers=AUTH)
    finished = await harness.client.post("/v1/jobs/j2/cancel", headers=AUTH)

    assert cancelled.json()["status"] == "cancelled"
    assert finished.status_code == 409
    [event] = await async_wait_until(
        lambda: _async(lanes["control"]), timeout=5, message="the cancellation"
    )
    assert isinstance(event, ChatCancelRequested)
    assert (event.request_id, event.tenant, event.data.reason) == ("j1", "acme", "job_cancelled")
    await asyncio.sleep(0.05)
    assert len(lanes["control"]) == 1


async def test_usage_as_csv_passes_through(harness, history):
    history.answers["/v1/usage"] = (
        200,
        b"bucket,requests\n2025-03-01T00:00:00Z,3\n",
        "text/csv; charset=utf-8",
    )

    response = await harness.client.get(
        "/v1/usage", params={"group_by": "day"}, headers=AUTH | {"Accept": "text/csv"}
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.text.startswith("bucket,requests")
    call = history.calls[-1]
    assert call.headers["accept"] == "text/csv"
    assert dict(call.url.params) == {"group_by": "day"}


@pytest.mark.parametrize(
    "query",
    [
        "group_by=model&group_by=day",
        "group_by[]=model&group_by[]=day",
        "group_by=model,day",
        "group_by=model&group_by%5B%5D=day",
    ],
)
async def test_a_list_parameter_given_repeatedly_is_forwarded_as_one_list(harness, history, query):
    response = await harness.client.get(f"/v1/usage?{query}&since=7d", headers=AUTH)

    assert response.status_code == 200, response.text
    assert history.calls[-1].url.params.multi_items() == [
        ("group_by", "model,day"),
        ("since", "7d"),
    ]


@pytest.mark.parametrize(
    ("path", "query", "param"),
    [
        ("/v1/usage", "since=7d&since=1d", "since"),
        ("/v1/usage", "since=7d&since[]=1d", "since"),
        ("/v1/jobs", "limit=5&limit=500", "limit"),
        ("/v1/history", "cursor=a&cursor=b", "cursor"),
        ("/v1/models", "limit=1&limit=2", "limit"),
    ],
)
async def test_a_parameter_that_takes_one_value_given_twice_is_refused(
    harness, history, path, query, param
):
    response = await harness.client.get(f"{path}?{query}", headers=AUTH)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_request",
        param,
    )
    assert "more than once" in error["message"]
    assert not [call for call in history.calls if call.url.path == path]


async def test_a_repeated_parameter_on_an_anthropic_route_is_refused_in_its_format(harness):
    response = await harness.client.get(
        "/v1/models?limit=1&limit=2",
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
    )

    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_history_settings_and_filters_are_forwarded(harness, history):
    writer = {"Authorization": f"Bearer {harness.auth.token(scopes=['history:write'])}"}
    await harness.client.put("/v1/history/settings", json={"store_content": False}, headers=writer)
    await harness.client.get(
        "/v1/history", params={"since": "7d", "status": "failed"}, headers=AUTH
    )

    put, listed = history.calls[-2:]
    assert (put.method, put.url.path, put.content) == (
        "PUT",
        "/v1/history/settings",
        b'{"store_content":false}',
    )
    assert dict(listed.url.params) == {"since": "7d", "status": "failed"}


async def test_history_down_is_503(harness, history):
    history.down = True
    for path in ("/v1/usage", "/v1/jobs", "/v1/history"):
        response = await harness.client.get(path, headers=AUTH)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "history_unavailable"


async def test_usage_needs_the_history_scope(harness, history):
    token = harness.auth.token(scopes=["chat"])
    response = await harness.client.get("/v1/usage", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("key_scopes", "narrowed"),
    [
        (["chat"], True),  # made to generate: reads back only what it made itself
        (["history:read"], False),  # reads the user's jobs, as history
        (["chat", "history:read"], False),
    ],
    ids=["chat", "history-read", "both"],
)
async def test_a_key_without_history_read_reads_back_only_its_own_jobs_and_responses(
    harness, history, monkeypatch, key_scopes, narrowed
):
    history.answers["/v1/jobs"] = (200, b'{"object": "list", "data": []}', "application/json")
    monkeypatch.setitem(TEST_KEY_IDENTITY, "scopes", key_scopes)

    for path in ("/v1/jobs", "/v1/jobs/job-1"):
        answer = await harness.client.get(path, headers={"x-api-key": API_KEY})
        assert answer.status_code != 403, (path, answer.text)
        sent = history.calls[-1].headers
        assert sent.get("x-switchyard-api-key-only") == ("key-1" if narrowed else None)


async def test_a_token_without_history_read_cannot_read_jobs(harness, history):
    """An access token names no key history could narrow its reads to."""
    token = harness.auth.token(scopes=["chat"])
    for path in ("/v1/jobs", "/v1/jobs/job-1"):
        answer = await harness.client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "insufficient_scope"


async def _async(value):
    return value


@pytest.mark.parametrize(
    ("scopes", "role"),
    [
        (["chat", "history:read", "history:write", "admin"], "admin"),
        # An admin's credential narrowed to other scopes acts as a member: their own
        # history and jobs only, never the whole tenant's.
        (["chat", "history:read"], "member"),
    ],
)
async def test_history_sees_an_admin_only_where_the_credential_holds_the_admin_scope(
    harness, history, scopes, role
):
    history.answers["/v1/jobs"] = (200, b'{"object": "list", "data": []}', "application/json")
    token = harness.auth.token(sub="user-root", role="admin", scopes=scopes)

    listed = await harness.client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})

    assert listed.status_code == 200
    assert history.calls[-1].headers["x-switchyard-role"] == role


async def test_a_messages_job_with_a_value_that_is_not_a_version_is_refused(
    harness, history, lanes
):
    body = {
        "url": "/v1/messages",
        "body": {
            "model": "sim-small",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
        },
    }
    for value in ("garbage", "2023-06-01, 2023-06-01"):
        response = await harness.client.post(
            "/v1/jobs", json=body, headers={**AUTH, "anthropic-version": value}
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "anthropic-version"
        assert "is not a valid version" in response.json()["error"]["message"]
    accepted = await harness.client.post(
        "/v1/jobs", json=body, headers={**AUTH, "anthropic-version": "2023-06-01"}
    )
    assert accepted.status_code == 202, accepted.text


def _stored_actions() -> list[tuple[str, str, dict | None]]:
    """Every way a request acts on something stored: (method, path, JSON body)."""
    stored = response_id(new_id(), utcnow())
    chat = {"model": "sim-small", "input": "go on"}
    reference = {"type": "item_reference", "id": "msg_" + "a" * 32}
    return [
        ("POST", "/v1/responses", {**chat, "previous_response_id": stored}),
        ("POST", "/v1/responses", {**chat, "input": [reference]}),
        ("POST", "/v1/responses/input_tokens", {**chat, "previous_response_id": stored}),
        ("POST", "/v1/responses/input_tokens", {**chat, "input": [reference]}),
        ("DELETE", f"/v1/responses/{stored}", None),
        ("POST", f"/v1/responses/{stored}/cancel", None),
        ("POST", "/v1/jobs/job-1/cancel", None),
        ("POST", "/v1/replays/replay-1/stop", None),
        ("POST", "/v1/replays/replay-1/resume", None),
    ]


async def test_a_token_without_history_read_cannot_act_on_what_is_stored(harness, history):
    """Continuing, naming, deleting or cancelling a stored response, cancelling a job or
    stopping a replay reads or changes what the user's other credentials made: an access
    token made only to generate has no key history could narrow that to."""
    token = {"Authorization": f"Bearer {harness.auth.token(scopes=['chat'])}"}
    for method, path, body in _stored_actions():
        history.calls.clear()
        answer = await harness.client.request(method, path, json=body, headers=token)
        assert answer.status_code == 403, (method, path, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "insufficient_scope" and "'history:read'" in error["message"]
        assert not [call for call in history.calls if "/internal/" not in call.url.path], path


async def test_a_token_with_history_read_may_act_on_what_is_stored(harness, history):
    token = {"Authorization": f"Bearer {harness.auth.token(scopes=['chat', 'history:read'])}"}
    for method, path, body in _stored_actions():
        answer = await harness.client.request(method, path, json=body, headers=token)
        assert answer.status_code != 403, (method, path, answer.text)


async def test_a_chat_key_acts_only_on_its_own_and_never_on_replays(harness, history, monkeypatch):
    """An API key without `history:read` reaches history narrowed to what it made; a
    replay needs `history:read` to make, so such a key never made one."""
    monkeypatch.setitem(TEST_KEY_IDENTITY, "scopes", ["chat"])
    for method, path, body in _stored_actions():
        history.calls.clear()
        answer = await harness.client.request(
            method, path, json=body, headers={"x-api-key": API_KEY}
        )
        if path.startswith("/v1/replays"):
            assert answer.status_code == 403, (path, answer.text)
            continue
        assert answer.status_code != 403, (method, path, answer.text)
        forwarded = [call for call in history.calls if "/internal/" not in call.url.path]
        assert forwarded, path
        assert all(c.headers.get("x-switchyard-api-key-only") == "key-1" for c in forwarded)
