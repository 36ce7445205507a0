"""The gateway refusing what it must: over-deep JSON bodies, scope escalation by method,
webhook targets inside the operator's network, replays before authorisation, tokens
missing claims or outliving their user, and a job cancelled the moment it is created."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from switchyard.common.egress import TargetPolicy
from switchyard.common.jsonbody import MAX_JSON_DEPTH, MAX_JSON_VALUES
from switchyard.gateway.config import Settings

from .conftest import API_KEY
from .history_fakes import install

BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def deep_body(depth: int = 300) -> bytes:
    # The nesting the history consumer could never serialise, inside an ordinary field.
    return orjson.dumps({**BODY, "metadata": {"k": "v"}}).replace(
        b'"v"', b"[" * depth + b'"v"' + b"]" * depth
    )


@pytest.fixture
async def history(harness):
    return await install(harness)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/jobs", "/v1/embeddings"])
async def test_a_body_nested_too_deep_is_400_and_never_published(harness, history, path):
    response = await harness.client.post(
        path, content=deep_body(), headers=AUTH | {"content-type": "application/json"}
    )

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "json_too_deep" and str(MAX_JSON_DEPTH) in error["message"]
    assert harness.requests == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/v1/jobs",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
    ],
)
async def test_a_body_beyond_the_parsers_own_nesting_bound_is_too_deep_not_invalid(
    harness, history, path
):
    """Beyond 1,024 levels the parser itself stops: still the nesting message, in the
    called API's format, never "not valid JSON"."""
    response = await harness.client.post(
        path, content=deep_body(1100), headers=AUTH | {"content-type": "application/json"}
    )

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert str(MAX_JSON_DEPTH) in error["message"] and "nests" in error["message"]
    if path.startswith("/v1/messages"):
        assert response.json()["type"] == "error"
        assert error["type"] == "invalid_request_error"
    else:
        assert error["code"] == "json_too_deep"
    assert harness.requests == []


MODEL_ROUTES = [
    "/v1/chat/completions",
    "/v1/jobs",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/responses/input_tokens",
    "/v1/messages",
    "/v1/messages/count_tokens",
]


@pytest.mark.parametrize("path", MODEL_ROUTES)
@pytest.mark.parametrize(
    ("body", "reason", "position"),
    [
        # A lone UTF-16 surrogate escape: JSON's grammar allows it, Unicode does not.
        (b'{"model": "sim-small", "input": "\\ud800 x"}', "surrogate", 33),
        (b'{"model": "sim-small", "max_tokens": 5,}', "trailing comma", 38),
        (b'{"model": "sim-small", "stream": tru}', "true", 33),
        ('{"model": "sim-small", "input": "café"}'.encode("latin-1"), "not UTF-8 text", None),
    ],
    ids=["lone-surrogate", "trailing-comma", "bad-literal", "latin-1"],
)
async def test_a_body_that_is_not_json_is_told_what_and_where(
    harness, history, path, body, reason, position
):
    """A client is told what the parser refused and at which character, in the called
    API's format, and nothing is published."""
    response = await harness.client.post(
        path, content=body, headers=AUTH | {"content-type": "application/json"}
    )

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"].startswith("The request body is not valid JSON: "), error
    assert reason in error["message"], error
    if position is not None:
        assert f"at character {position}." in error["message"]
    if path.startswith("/v1/messages"):
        assert response.json()["type"] == "error"
        assert error["type"] == "invalid_request_error"
    else:
        assert error["code"] == "invalid_json"
    assert harness.requests == []


def crowded_body(values: int = MAX_JSON_VALUES) -> bytes:
    # More values than the bound: a few bytes each, a walk of millions once parsed.
    return orjson.dumps(BODY)[:-1] + b', "x": [' + b",".join([b"{}"] * values) + b"]}"


class TestLargeBodies:
    """Bodies within the size limits whose parsing and checks would cost seconds of the
    event loop: too many values refused before parsing, the rest read off the loop."""

    @pytest.fixture
    def settings(self) -> Settings:
        large = 16 << 20
        return Settings(
            request_timeout_s=2.0,
            max_body_bytes=large,
            chat_completions_max_body_bytes=large,
            messages_max_body_bytes=large,
            embeddings_max_body_bytes=large,
            topic_prefix="unit",
            governance_store="memory",
        )

    @pytest.mark.parametrize(
        "path",
        ["/v1/chat/completions", "/v1/jobs", "/v1/embeddings", "/v1/responses", "/v1/replays"],
    )
    async def test_a_body_of_too_many_values_is_400_and_never_published(
        self, harness, history, path
    ):
        for extra in ({}, {"Idempotency-Key": "crowded-1"}):
            response = await harness.client.post(
                path,
                content=crowded_body(),
                headers=AUTH | {"content-type": "application/json"} | extra,
            )
            assert response.status_code == 400, (path, extra, response.text)
            error = response.json()["error"]
            assert error["code"] == "json_too_many_values", error
            assert "1,000,000 JSON values" in error["message"]
        assert harness.requests == []

    async def test_too_many_values_are_refused_in_anthropic_format(self, harness, history):
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            response = await harness.client.post(
                path,
                content=crowded_body(),
                headers=AUTH
                | {"content-type": "application/json", "anthropic-version": "2023-06-01"},
            )
            assert response.status_code == 400, (path, response.text)
            assert response.json()["type"] == "error"
            assert response.json()["error"]["type"] == "invalid_request_error"
            assert "1,000,000 JSON values" in response.json()["error"]["message"]

    async def test_a_huge_float_alone_is_not_read_twice(self, harness, history, monkeypatch):
        """A float beyond 64-bit integers, without a run of 19 digits anywhere, cannot be
        an integer orjson read inexactly: the body is not read a second time (which walked
        every value building its path, a minute for a large body)."""
        from switchyard.gateway.api import body as body_module

        def never(_: bytes) -> None:
            raise AssertionError("read twice")

        monkeypatch.setattr(body_module, "_out_of_range_number", never)
        raw = orjson.dumps({**BODY, "x": [{}] * 1000 + [1e30], "seed": 12345})
        response = await harness.client.post(
            "/v1/chat/completions",
            content=raw,
            headers=AUTH | {"content-type": "application/json"},
        )
        assert response.status_code == 200, response.text

    async def test_a_large_request_is_read_off_the_event_loop(self, harness, history, monkeypatch):
        import threading

        from switchyard.gateway.api import body as body_module

        threads: list[str] = []
        real = body_module.read_request

        def recorded(api, raw):
            threads.append(threading.current_thread().name)
            return real(api, raw)

        monkeypatch.setattr(body_module, "read_request", recorded)
        large = {**BODY, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
        for body in (large, BODY):
            response = await harness.client.post(
                "/v1/chat/completions",
                content=orjson.dumps(body),
                headers=AUTH | {"content-type": "application/json"},
            )
            assert response.status_code == 200, response.text
        assert threads[0] != threading.main_thread().name
        assert threads[1] == threading.main_thread().name


async def test_an_over_deep_messages_body_is_refused_in_anthropic_format(harness, history):
    response = await harness.client.post(
        "/v1/messages", content=deep_body(), headers=AUTH | {"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_a_body_at_the_bound_is_accepted(harness, history):
    # The whole document nests MAX_JSON_DEPTH levels: {} -> "x_custom" -> arrays.
    body = orjson.dumps({**BODY, "x_custom": {"k": nested(MAX_JSON_DEPTH - 2)}})
    response = await harness.client.post(
        "/v1/chat/completions", content=body, headers=AUTH | {"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text


async def test_an_over_deep_body_with_an_idempotency_key_is_400_not_500(harness, history):
    for path in ("/v1/chat/completions", "/v1/jobs"):
        response = await harness.client.post(
            path,
            content=deep_body(),
            headers=AUTH | {"Idempotency-Key": "deep-1", "content-type": "application/json"},
        )
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] == "json_too_deep"
    assert history.claims == 0  # refused before any key was claimed


async def test_a_replay_is_refused_to_a_credential_not_allowed_the_model(harness, history):
    first = await harness.client.post(
        "/v1/chat/completions", json=BODY, headers=AUTH | {"Idempotency-Key": "k-model"}
    )
    # The same user, with a token limited to another model, retries the same request.
    limited = harness.auth.token(sub="user-1", scopes=["chat"], allowed_models=["other-model"])
    replay = await harness.client.post(
        "/v1/chat/completions",
        json=BODY,
        headers=bearer(limited) | {"Idempotency-Key": "k-model"},
    )

    assert first.status_code == 200
    assert replay.status_code == 404, replay.text
    assert replay.json()["error"]["code"] == "model_not_found"
    assert "hi there" not in replay.text
    assert "idempotent-replayed" not in replay.headers


async def test_a_replay_is_refused_to_a_credential_without_the_scope(harness, history):
    await harness.client.post(
        "/v1/chat/completions", json=BODY, headers=AUTH | {"Idempotency-Key": "k-scope"}
    )
    reader = harness.auth.token(sub="user-1", scopes=["history:read"])
    replay = await harness.client.post(
        "/v1/chat/completions", json=BODY, headers=bearer(reader) | {"Idempotency-Key": "k-scope"}
    )
    assert replay.status_code == 403
    assert "hi there" not in replay.text


async def test_a_metadata_only_tenant_gets_no_content_back_from_the_idempotency_store(
    harness, history
):
    history.metadata_only.add("acme")
    first = await harness.client.post(
        "/v1/chat/completions", json=BODY, headers=AUTH | {"Idempotency-Key": "private-1"}
    )
    retry = await harness.client.post(
        "/v1/chat/completions", json=BODY, headers=AUTH | {"Idempotency-Key": "private-1"}
    )

    assert first.status_code == 200 and "hi there" in first.text
    assert history.keys[("acme", "private-1")]["body_b64"] is None
    assert retry.status_code == 409, retry.text
    assert retry.json()["error"]["code"] == "idempotency_response_not_stored"
    assert retry.headers["x-request-id"] == first.headers["x-request-id"]
    assert len(harness.requests) == 1  # it still never ran twice


async def test_an_anthropic_client_refused_a_replay_gets_the_original_request_id_throughout(
    harness, history
):
    history.metadata_only.add("acme")
    message = {
        "model": "sim-small",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
    }
    headers = {"x-api-key": API_KEY, "Idempotency-Key": "private-2"}
    first = await harness.client.post("/v1/messages", json=message, headers=headers)
    retry = await harness.client.post("/v1/messages", json=message, headers=headers)

    assert first.status_code == 200, first.text
    assert retry.status_code == 409, retry.text
    original = first.headers["request-id"]
    assert retry.headers["x-request-id"] == retry.headers["request-id"] == original
    assert retry.json()["request_id"] == original  # the body names the same request


SETTINGS = b'{"object":"history.settings","store_content":true,"webhook_secret":"whsec_s3cret"}'


async def test_history_settings_writes_need_history_write_and_secrets_need_admin(harness, history):
    history.answers["/v1/history/settings"] = (200, SETTINGS, "application/json")
    reader = bearer(harness.auth.token(role="admin", scopes=["history:read"]))
    writer = bearer(harness.auth.token(role="admin", scopes=["history:read", "history:write"]))
    admin = bearer(
        harness.auth.token(role="admin", scopes=["history:read", "history:write", "admin"])
    )

    put_by_reader = await harness.client.put(
        "/v1/history/settings", json={"store_content": False}, headers=reader
    )
    read_by_reader = await harness.client.get("/v1/history/settings", headers=reader)
    put_by_writer = await harness.client.put(
        "/v1/history/settings", json={"retention_days": 7}, headers=writer
    )
    rotate_by_writer = await harness.client.put(
        "/v1/history/settings", json={"rotate_webhook_secret": True}, headers=writer
    )
    read_by_admin = await harness.client.get("/v1/history/settings", headers=admin)
    rotate_by_admin = await harness.client.put(
        "/v1/history/settings", json={"rotate_webhook_secret": True}, headers=admin
    )

    assert put_by_reader.status_code == 403
    assert "'history:write'" in put_by_reader.json()["error"]["message"]
    assert read_by_reader.status_code == 200 and "whsec_" not in read_by_reader.text
    assert put_by_writer.status_code == 200 and "whsec_" not in put_by_writer.text
    assert rotate_by_writer.status_code == 403
    assert "'admin'" in rotate_by_writer.json()["error"]["message"]
    assert read_by_admin.json()["webhook_secret"] == "whsec_s3cret"
    assert rotate_by_admin.status_code == 200
    puts = [call for call in history.calls if call.method == "PUT"]
    assert len(puts) == 2  # only the writer's change and the admin's rotation reached history


@pytest.mark.parametrize(
    "url",
    [
        "http://host:1:2/",
        "http://[x/",
        "http://example.com/\r\nX-Injected: 1",
        "http://example.com/a\nb",
        "http://example.com:99999/",
        "http://127.0.0.1:8001/internal/v1/revocations",
        "http://localhost.:8002/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://0.0.0.0:8000/",
        "http://2130706433/",  # 127.0.0.1 as a number
        "http://internal.example/",  # resolves to a private address
    ],
)
async def test_webhook_urls_into_private_networks_or_malformed_are_400(harness, history, url):
    async def resolver(host: str, port: int) -> list[str]:
        return {"internal.example": ["10.1.2.3"], "localhost.": ["127.0.0.1"]}.get(
            host, ["93.184.216.34"]
        )

    harness.app.state.gateway.webhook_policy = TargetPolicy(resolver=resolver)
    response = await harness.client.post(
        "/v1/jobs", json={**BODY, "webhook_url": url}, headers=AUTH
    )

    assert response.status_code == 400, (url, response.text)
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("webhook_url", "invalid_webhook_url")


async def test_allowed_networks_let_local_webhooks_through(harness, history):
    from switchyard.common.egress import parse_networks

    harness.app.state.gateway.webhook_policy = TargetPolicy(parse_networks("127.0.0.0/8"))
    response = await harness.client.post(
        "/v1/jobs", json={**BODY, "webhook_url": "http://127.0.0.1:9999/hook"}, headers=AUTH
    )
    assert response.status_code == 202, response.text


async def test_a_job_cancelled_right_after_it_is_created_is_cancelled(harness, history):
    created = await harness.client.post(
        "/v1/jobs", json={**BODY, "webhook_url": "https://hooks.example.com/x"}, headers=AUTH
    )
    job_id = created.json()["id"]
    # History has not recorded the job yet: it knows it only once the gateway vouches.
    history.answers[f"/v1/jobs/{job_id}/cancel"] = (
        404,
        b'{"error": {"message": "No job found", "code": "job_not_found"}}',
        "application/json",
    )
    history.answers[f"/v1/jobs/{job_id}/cancel?accepted=true"] = (
        200,
        orjson.dumps({"id": job_id, "object": "job", "status": "cancelled", "model": None}),
        "application/json",
    )

    cancelled = await harness.client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH)

    assert cancelled.status_code == 200, cancelled.text
    job = cancelled.json()
    assert (job["id"], job["status"], job["model"]) == (job_id, "cancelled", "sim-small")
    assert job["webhook"]["url"] == "https://hooks.example.com/x"
    vouched = [c for c in history.calls if c.url.params.get("accepted") == "true"]
    assert len(vouched) == 1


async def test_only_the_accepting_tenant_can_cancel_a_job_history_has_not_seen(harness, history):
    created = await harness.client.post("/v1/jobs", json=BODY, headers=AUTH)
    job_id = created.json()["id"]
    history.answers[f"/v1/jobs/{job_id}/cancel"] = (404, b'{"error": {}}', "application/json")
    readers = ["chat", "history:read"]
    other_tenant = bearer(harness.auth.token(sub="user-1", tenant="globex", scopes=readers))
    colleague = bearer(harness.auth.token(sub="user-2", scopes=readers))

    assert (
        await harness.client.post(f"/v1/jobs/{job_id}/cancel", headers=other_tenant)
    ).status_code == 404
    assert (
        await harness.client.post(f"/v1/jobs/{job_id}/cancel", headers=colleague)
    ).status_code == 404
    assert not [c for c in history.calls if c.url.params.get("accepted")]


async def test_a_token_without_a_scopes_claim_is_refused(harness):
    token = harness.auth.token(scopes=None)
    response = await harness.client.get("/v1/models", headers=bearer(token))
    assert response.status_code == 401


@pytest.mark.parametrize("exp", ["9999999999", 10**20, True])
async def test_a_token_with_a_non_numeric_or_huge_exp_is_refused(harness, exp):
    token = harness.auth.token(exp=exp)
    response = await harness.client.get("/v1/models", headers=bearer(token))
    assert response.status_code == 401, response.text


async def test_a_token_of_a_user_auth_no_longer_knows_is_refused(harness):
    harness.auth.missing_users.add("user-gone")
    gone = await harness.client.get(
        "/v1/models", headers=bearer(harness.auth.token(sub="user-gone"))
    )
    known = [
        await harness.client.get("/v1/models", headers=bearer(harness.auth.token(sub="user-ok")))
        for _ in range(3)
    ]
    assert gone.status_code == 401
    assert {response.status_code for response in known} == {200}


async def test_request_bodies_over_the_limit_are_413_even_without_content_length(harness):
    async def chunks():
        for _ in range(60):  # over the harness's 50 kB limit of chat completions
            yield b"x" * 1000
            await asyncio.sleep(0)

    response = await harness.client.post(
        "/v1/chat/completions",
        content=chunks(),
        headers=AUTH | {"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
