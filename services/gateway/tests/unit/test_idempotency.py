"""Idempotency-Key on the gateway's POST endpoints: retries never run twice and get the
original bytes; concurrent duplicates wait for the one execution; a reused key with
another body is refused. History's claim store is faked (history_fakes.py)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from switchyard.common.events import ChatFailed, ChatFailedData, ErrorInfo, TerminalStatus
from switchyard.common.testing.infra import async_wait_until
from switchyard.gateway.idempotency import LEASE_MARGIN_S

from .conftest import API_KEY, chunk, completed_reply
from .history_fakes import install
from .test_count_tokens import answer_counts

BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def keyed(key: str, **extra: str) -> dict[str, str]:
    return AUTH | {"Idempotency-Key": key} | extra


@pytest.fixture
def settings(settings):
    """No test here waits for a request's deadline: a longer one keeps a loaded machine's
    slow answer from turning into a 504 the test did not ask for."""
    settings.request_timeout_s = 10.0
    return settings


@pytest.fixture
async def history(harness):
    return await install(harness)


def slow_replies(harness, delay_s: float, text: str = "hi there") -> None:
    async def respond(request):
        await asyncio.sleep(delay_s)
        return [completed_reply(request, text)]

    harness.respond[0] = respond


async def test_ten_sequential_retries_run_once_and_return_identical_bytes(harness, history):
    responses = [
        await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("retry-1"))
        for _ in range(10)
    ]

    assert len(harness.requests) == 1
    assert {response.status_code for response in responses} == {200}
    assert len({response.content for response in responses}) == 1
    assert responses[0].content == history.stored_body("acme", "retry-1")
    assert "idempotent-replayed" not in responses[0].headers
    assert all(r.headers["idempotent-replayed"] == "true" for r in responses[1:])
    assert {r.headers["x-request-id"] for r in responses} == {harness.requests[0].request_id}


async def test_twenty_concurrent_requests_with_one_key_execute_once(harness, history):
    slow_replies(harness, 0.3)

    responses = await asyncio.gather(
        *(
            harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("burst"))
            for _ in range(20)
        )
    )

    assert len(harness.requests) == 1
    assert [response.status_code for response in responses] == [200] * 20
    assert len({response.content for response in responses}) == 1
    assert sum("idempotent-replayed" in r.headers for r in responses) == 19


@pytest.mark.parametrize("value", ["maybe", "", "false, true"])
@pytest.mark.parametrize(
    ("path", "body", "shape"),
    [
        ("/v1/chat/completions", BODY, "openai"),
        (
            "/v1/messages",
            {"model": "sim-small", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            "anthropic",
        ),
    ],
)
async def test_an_idempotency_wait_it_cannot_read_is_a_400_naming_it(
    harness, history, value, path, body, shape
):
    """Refused, not guessed (as waiting): in the called API's own error format, before
    anything is claimed or run."""
    answer = await harness.client.post(
        path,
        json=body,
        headers=keyed("w", **{"Idempotency-Wait": value, "anthropic-version": "2023-06-01"}),
    )

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "Idempotency-Wait" in error["message"]
    if shape == "openai":
        assert (error["param"], error["code"]) == ("Idempotency-Wait", "invalid_idempotency_wait")
    else:
        assert answer.json()["type"] == "error"
    assert harness.requests == []


async def test_same_key_with_another_body_is_422(harness, history):
    first = await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("k"))
    other = await harness.client.post(
        "/v1/chat/completions",
        json={**BODY, "temperature": 0.5},
        headers=keyed("k"),
    )
    reordered = await harness.client.post(
        "/v1/chat/completions",
        content=orjson.dumps({"messages": BODY["messages"], "model": "sim-small"}),
        headers=keyed("k") | {"content-type": "application/json"},
    )

    assert first.status_code == 200
    assert other.status_code == 422
    error = other.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert "different request body" in error["message"]
    assert reordered.status_code == 200  # the same JSON, keys in another order: a replay
    assert reordered.content == first.content
    assert len(harness.requests) == 1


async def test_a_retry_may_ask_not_to_wait_and_gets_409(harness, history):
    slow_replies(harness, 0.4)
    first = asyncio.ensure_future(
        harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("busy"))
    )
    await asyncio.sleep(0.1)
    impatient = await harness.client.post(
        "/v1/chat/completions", json=BODY, headers=keyed("busy", **{"Idempotency-Wait": "false"})
    )

    assert impatient.status_code == 409
    assert impatient.json()["error"]["code"] == "idempotency_key_in_use"
    assert "Idempotency-Wait: false" in impatient.json()["error"]["message"]
    assert impatient.headers["retry-after"] == "1"
    assert (await first).status_code == 200
    assert len(harness.requests) == 1


async def test_a_retry_that_waited_its_whole_wait_gets_409_saying_so(harness, history):
    harness.settings.idempotency_wait_s = 0.2
    slow_replies(harness, 0.8)
    first = asyncio.ensure_future(
        harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("slow"))
    )
    await async_wait_until(
        lambda: asyncio.sleep(0, len(harness.requests) == 1),
        timeout=5,
        message="the original request running",
    )
    patient = await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("slow"))

    assert patient.status_code == 409
    message = patient.json()["error"]["message"]
    assert "after waiting 0.2 s" in message and "Idempotency-Wait" not in message
    assert (await first).status_code == 200
    assert len(harness.requests) == 1


async def test_requests_that_ran_nothing_release_the_key(harness, history):
    invalid = await harness.client.post(
        "/v1/chat/completions", json={"model": "sim-small"}, headers=keyed("fix-me")
    )
    unknown_model = await harness.client.post(
        "/v1/chat/completions", json={**BODY, "model": "nope"}, headers=keyed("fix-me-too")
    )
    assert (invalid.status_code, unknown_model.status_code) == (400, 404)
    assert history.keys == {}

    fixed = await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("fix-me"))
    assert fixed.status_code == 200
    assert len(harness.requests) == 1


def failing(status: int, kind: str):
    async def respond(request):
        return [
            ChatFailed(
                source="test",
                tenant=request.tenant,
                request_id=request.request_id,
                data=ChatFailedData(
                    status=TerminalStatus.FAILED,
                    error=ErrorInfo(status=status, type=kind, message="no"),
                ),
            )
        ]

    return respond


async def test_a_failed_request_is_replayed_as_it_failed(harness, history):
    harness.respond[0] = failing(400, "invalid_request_error")  # e.g. the context is too long
    first = await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("f"))
    again = await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("f"))

    assert first.status_code == again.status_code == 400
    assert first.content == again.content
    assert again.headers["idempotent-replayed"] == "true"
    assert len(harness.requests) == 1


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, "rate_limit_error"),
        (500, "server_error"),
        (502, "upstream_error"),
        (503, "service_unavailable"),
        (504, "timeout_error"),
        (408, "timeout_error"),
    ],
)
async def test_a_failure_the_client_is_told_to_retry_lets_a_retry_with_the_key_run(
    harness, history, status, kind
):
    harness.respond[0] = failing(status, kind)
    first = await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("r"))
    harness.respond[0] = lambda request: asyncio.sleep(0, [completed_reply(request, "ok now")])
    again = await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("r"))
    replayed = await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("r"))

    assert first.status_code == status
    assert again.status_code == 200 and "idempotent-replayed" not in again.headers
    assert replayed.content == again.content and replayed.headers["idempotent-replayed"] == "true"
    assert len(harness.requests) == 2


async def test_streams_are_replayed_whole(harness, history):
    async def stream(request):
        return [chunk(request, 0, "Hel"), chunk(request, 1, "lo"), completed_reply(request)]

    harness.respond[0] = stream
    body = {**BODY, "stream": True}
    first = await harness.client.post("/v1/chat/completions", json=body, headers=keyed("s"))
    again = await harness.client.post("/v1/chat/completions", json=body, headers=keyed("s"))

    assert first.headers["content-type"].startswith("text/event-stream")
    assert again.headers["content-type"].startswith("text/event-stream")
    assert again.content == first.content
    assert first.content.endswith(b"data: [DONE]\n\n")
    assert len(harness.requests) == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**BODY, "stream": True}),
        ("/v1/messages", {**BODY, "max_tokens": 16, "stream": True}),
        ("/v1/responses", {"model": "sim-small", "input": "Hello", "stream": True}),
    ],
)
async def test_a_stream_failing_midway_with_a_retryable_error_lets_a_retry_run(
    harness, history, path, body
):
    """A stream is answered 200 before it runs: one that failed midway (an upstream error
    event) was kept under its key and replayed as that failure for a day."""

    async def fails_midway(request):
        [failed] = await failing(500, "server_error")(request)
        return [chunk(request, 0, "Hel"), failed]

    harness.respond[0] = fails_midway
    first = await harness.client.post(path, json=body, headers=keyed(f"mid{path}"))
    harness.respond[0] = lambda request: asyncio.sleep(0, [completed_reply(request, "ok now")])
    again = await harness.client.post(path, json=body, headers=keyed(f"mid{path}"))

    assert first.status_code == 200 and b"server_error" in first.content
    assert "idempotent-replayed" not in again.headers
    assert b"server_error" not in again.content
    assert len(harness.requests) == 2


async def test_a_stream_failing_midway_with_a_final_error_is_replayed_as_it_failed(
    harness, history
):
    async def refused_midway(request):
        [failed] = await failing(400, "invalid_request_error")(request)
        return [chunk(request, 0, "Hel"), failed]

    harness.respond[0] = refused_midway
    body = {**BODY, "stream": True}
    first = await harness.client.post("/v1/chat/completions", json=body, headers=keyed("m4"))
    again = await harness.client.post("/v1/chat/completions", json=body, headers=keyed("m4"))

    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert len(harness.requests) == 1


async def test_messages_endpoint_is_idempotent_with_anthropic_errors(harness, history):
    body = {
        "model": "sim-small",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    headers = {"x-api-key": API_KEY, "Idempotency-Key": "m1"}
    first = await harness.client.post("/v1/messages", json=body, headers=headers)
    again = await harness.client.post("/v1/messages", json=body, headers=headers)
    other = await harness.client.post(
        "/v1/messages", json={**body, "max_tokens": 5}, headers=headers
    )

    assert first.status_code == 200, first.text
    assert again.content == first.content
    assert len(harness.requests) == 1
    assert other.status_code == 422
    assert other.json()["type"] == "error"  # Anthropic's error shape on /v1/messages
    assert other.json()["error"]["type"] == "invalid_request_error"


async def test_a_credential_without_history_read_replays_only_what_it_made(harness, history):
    """A credential made only to generate reads back nothing its user's other credentials
    made: the same key and body from it runs, and its own retry replays its own answer."""
    await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("mine"))
    narrowed = {
        "Authorization": f"Bearer {harness.auth.token(sub='user-1', scopes=['chat'])}",
        "Idempotency-Key": "mine",
    }

    ran = await harness.client.post("/v1/chat/completions", json=BODY, headers=narrowed)
    again = await harness.client.post("/v1/chat/completions", json=BODY, headers=narrowed)

    assert ran.status_code == 200 and "idempotent-replayed" not in ran.headers
    assert again.headers["idempotent-replayed"] == "true" and again.content == ran.content
    assert len(harness.requests) == 2


async def test_keys_are_scoped_per_tenant(harness, history):
    await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("shared"))
    token = harness.auth.token(tenant="globex", scopes=["chat"])
    other_tenant = await harness.client.post(
        "/v1/chat/completions",
        json=BODY,
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "shared"},
    )

    assert other_tenant.status_code == 200
    assert "idempotent-replayed" not in other_tenant.headers
    assert len(harness.requests) == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "bad\tkey", "ключ"])
async def test_invalid_keys_are_400(harness, history, key):
    response = await harness.client.post(
        "/v1/chat/completions",
        json=BODY,
        headers=AUTH | {"Idempotency-Key": key.encode()},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"
    assert not harness.requests


async def test_store_unavailable_is_503_and_requests_without_a_key_are_unaffected(harness, history):
    history.down = True
    keyed_response = await harness.client.post(
        "/v1/chat/completions", json=BODY, headers=keyed("k")
    )
    plain = await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)

    assert keyed_response.status_code == 503
    assert keyed_response.json()["error"]["code"] == "idempotency_unavailable"
    assert plain.status_code == 200
    assert len(harness.requests) == 1


async def test_bad_credentials_with_a_key_get_the_usual_401(harness, history):
    response = await harness.client.post(
        "/v1/chat/completions",
        json=BODY,
        headers={"Authorization": "Bearer sk-sy-nope", "Idempotency-Key": "k"},
    )
    assert response.status_code == 401
    assert history.claims == 0


async def test_jobs_are_idempotent_too(harness, history):
    created = [
        await harness.client.post("/v1/jobs", json=BODY, headers=keyed("job-1")) for _ in range(3)
    ]

    assert [response.status_code for response in created] == [202] * 3
    assert len({response.content for response in created}) == 1
    assert len({response.json()["id"] for response in created}) == 1


async def test_a_job_given_as_a_batch_request_line_is_idempotent_too(harness, history):
    line = {"url": "/v1/chat/completions", "body": BODY}
    created = [
        await harness.client.post("/v1/jobs", json=line, headers=keyed("job-line"))
        for _ in range(3)
    ]

    assert [response.status_code for response in created] == [202] * 3
    assert len({response.json()["id"] for response in created}) == 1
    assert [r.headers.get("idempotent-replayed") for r in created] == [None, "true", "true"]
    other = {"url": "/v1/chat/completions", "body": {**BODY, "max_tokens": 3}}
    reused = await harness.client.post("/v1/jobs", json=other, headers=keyed("job-line"))
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


REPLAY = {"since": "1h", "to_model": "sim-large"}


def replay_posts(history) -> list:
    return [c for c in history.calls if c.method == "POST" and c.url.path == "/v1/replays"]


async def test_a_retried_replay_is_created_once(harness, history):
    history.answers["/v1/replays"] = (
        201,
        b'{"object": "replay", "id": "rp_1", "status": "running"}',
        "application/json",
    )
    created = [
        await harness.client.post("/v1/replays", json=REPLAY, headers=keyed("replay-1"))
        for _ in range(3)
    ]

    assert [response.status_code for response in created] == [201] * 3
    assert len(replay_posts(history)) == 1  # every recorded request is sent once, not thrice
    assert len({response.content for response in created}) == 1
    assert [r.headers.get("idempotent-replayed") for r in created] == [None, "true", "true"]


async def test_a_retried_replay_of_a_metadata_only_tenant_gets_the_replay_back(harness, history):
    # The replay object is Switchyard's (id, state), not content the tenant keeps private.
    history.metadata_only.add("acme")
    history.answers["/v1/replays"] = (
        201,
        b'{"object": "replay", "id": "rp_2", "status": "running"}',
        "application/json",
    )
    first = await harness.client.post("/v1/replays", json=REPLAY, headers=keyed("replay-m"))
    retry = await harness.client.post("/v1/replays", json=REPLAY, headers=keyed("replay-m"))

    assert first.status_code == retry.status_code == 201, retry.text
    assert retry.json()["id"] == "rp_2" and retry.headers["idempotent-replayed"] == "true"
    assert len(replay_posts(history)) == 1


async def test_a_refused_replay_is_not_kept_and_a_retry_runs(harness, history):
    history.answers["/v1/replays"] = (
        400,
        b'{"error": {"message": "No recorded requests match.", "type": "invalid_request_error",'
        b' "param": "since", "code": "invalid_selection"}}',
        "application/json",
    )
    first = await harness.client.post("/v1/replays", json=REPLAY, headers=keyed("replay-2"))
    second = await harness.client.post("/v1/replays", json=REPLAY, headers=keyed("replay-2"))

    assert first.status_code == second.status_code == 400
    assert len(replay_posts(history)) == 2
    assert "idempotent-replayed" not in second.headers


async def test_a_replay_key_of_a_caller_who_may_not_replay_claims_nothing(harness, history):
    token = harness.auth.token(scopes=["chat"])
    response = await harness.client.post(
        "/v1/replays",
        json=REPLAY,
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "replay-3"},
    )

    assert response.status_code == 403
    assert history.claims == 0
    assert replay_posts(history) == []


async def test_an_oversized_body_with_a_key_is_still_413(harness, history):
    body = {**BODY, "messages": [{"role": "user", "content": "x" * 60_000}]}
    response = await harness.client.post("/v1/chat/completions", json=body, headers=keyed("big"))

    assert response.status_code == 413
    assert history.claims == 0
    assert not harness.requests


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"model": "sim-small", "input": "Hello"}),
        (
            "/v1/messages/count_tokens",
            {"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]},
        ),
    ],
)
async def test_every_model_request_honours_the_key(harness, history, path, body):
    first = await harness.client.post(path, json=body, headers=keyed(f"k-{path}"))
    again = await harness.client.post(path, json=body, headers=keyed(f"k-{path}"))
    other = await harness.client.post(
        path, json={**body, "model": "sim-large"}, headers=keyed(f"k-{path}")
    )

    assert first.status_code == again.status_code == 200
    assert len(harness.requests) == 1  # the retry ran nothing
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert other.status_code == 422


@pytest.mark.parametrize(
    ("metadata_only", "estimated"), [(False, True), (False, False), (True, False)]
)
async def test_a_retried_token_count_is_replayed_saying_whether_it_is_an_estimate(
    harness, history, metadata_only, estimated
):
    # A count holds no content of the tenant's: kept even for a metadata-only tenant,
    # with the header that says what kind of count it is.
    if metadata_only:
        history.metadata_only.add("acme")
    answer_counts(harness, 12, estimated=estimated)
    headers = {**keyed("count-1"), "anthropic-version": "2023-06-01"}
    body = {"model": "sim-claude", "messages": [{"role": "user", "content": "Hello"}]}
    first = await harness.client.post("/v1/messages/count_tokens", json=body, headers=headers)
    retry = await harness.client.post("/v1/messages/count_tokens", json=body, headers=headers)

    assert first.status_code == retry.status_code == 200, retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == {"input_tokens": 12} and retry.content == first.content
    assert retry.headers["x-switchyard-token-count"] == ("estimate" if estimated else "exact")
    assert len(harness.requests) == 1


async def test_a_claim_lasts_as_long_as_its_request_may_run(harness, history):
    settings = harness.app.state.gateway.settings
    await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("plain"))
    await harness.client.post(
        "/v1/chat/completions", json={**BODY, "stream": True}, headers=keyed("streamed")
    )
    leases = [
        orjson.loads(call.content)["lease_s"]
        for call in history.calls
        if call.url.path.endswith("/idempotency/claim")
    ]
    # A stream's deadline is longer than a JSON answer's; neither holds a key beyond it.
    assert leases == [
        settings.request_timeout_s + LEASE_MARGIN_S,
        settings.timeout_for(True) + LEASE_MARGIN_S,
    ]


@pytest.mark.parametrize(
    ("outcome", "retry_status", "runs"),
    [("pending", 409, 1), ("completed", 409, 1), ("failed", 200, 2), ("expired", 200, 2)],
)
async def test_a_request_whose_reply_missed_its_deadline_holds_its_key_for_its_outcome(
    harness, history, outcome, retry_status, runs
):
    # The reply was held up (the broker down while inference published it): the client
    # got 504, yet the request ran. Released, the key let a retry run it again.
    harness.settings.request_timeout_s = 0.3
    harness.respond[0] = lambda request: asyncio.sleep(0, [])  # no reply by the deadline
    first = await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("late"))
    assert first.status_code == 504
    request_id = first.headers["x-request-id"]
    assert history.keys[("acme", "late")]["state"] == "awaiting"

    history.request_statuses[request_id] = outcome
    harness.respond[0] = lambda request: asyncio.sleep(0, [completed_reply(request, "ok")])
    retry = await harness.client.post(
        "/v1/chat/completions", json=BODY, headers=keyed("late", **{"Idempotency-Wait": "false"})
    )

    assert retry.status_code == retry_status
    assert len(harness.requests) == runs
    if outcome == "completed":
        error = retry.json()["error"]
        assert error["code"] == "idempotency_answered_late"
        assert retry.headers["x-request-id"] == request_id
    elif outcome == "pending":
        assert retry.json()["error"]["code"] == "idempotency_key_in_use"


async def test_a_key_awaiting_an_outcome_that_never_comes_is_freed_by_its_lease(harness, history):
    harness.settings.request_timeout_s = 0.3
    harness.respond[0] = lambda request: asyncio.sleep(0, [])
    first = await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("gone"))
    assert first.status_code == 504
    history.keys[("acme", "gone")]["lease_until"] = 0.0  # the lease ran out
    harness.respond[0] = lambda request: asyncio.sleep(0, [completed_reply(request, "ok")])

    retry = await harness.client.post("/v1/chat/completions", json=BODY, headers=keyed("gone"))

    assert retry.status_code == 200
    assert len(harness.requests) == 2
