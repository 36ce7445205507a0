"""Errors the gateway answers itself, on every model API: in the called API's own error
format, with `x-request-id` on every one of them (and on every other response), and
`Retry-After` where the client may retry."""

from __future__ import annotations

import pytest

from switchyard.common.bus import BusUnavailableError, EventTooLargeError

from .conftest import API_KEY, asgi_scope

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {**CHAT, "max_tokens": 8}
EMBED = {"model": "sim-small", "input": "hi"}
APIS = [
    ("/v1/chat/completions", CHAT, "openai"),
    ("/v1/messages", MESSAGE, "anthropic"),
    ("/v1/embeddings", EMBED, "openai"),
]
AUTH = {"x-api-key": API_KEY}


def error_of(response, vendor: str) -> dict:
    """The error object, checked to be in `vendor`'s format."""
    body = response.json()
    if vendor == "anthropic":
        assert body["type"] == "error"
        assert {"type", "message"} <= set(body["error"])
    else:
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def bus_down(harness) -> None:
    async def refuse(*_args, **_kwargs):
        raise BusUnavailableError("down")

    harness.bus.publish = refuse  # type: ignore[method-assign]


CASES = {
    "malformed": (400, {"openai": "invalid_request_error", "anthropic": "invalid_request_error"}),
    "credentials": (401, {"openai": "invalid_request_error", "anthropic": "authentication_error"}),
    "model": (404, {"openai": "invalid_request_error", "anthropic": "not_found_error"}),
    "too_large": (413, {"openai": "invalid_request_error", "anthropic": "request_too_large"}),
    "busy": (429, {"openai": "rate_limit_error", "anthropic": "rate_limit_error"}),
    "bus_down": (503, {"openai": "service_unavailable", "anthropic": "overloaded_error"}),
}


async def send(harness, case: str, path: str, body: dict):
    headers = dict(AUTH)
    if case == "malformed":
        return await harness.client.post(
            path, content=b'{"model": ', headers={**headers, "content-type": "application/json"}
        )
    if case == "credentials":
        headers = {"x-api-key": "sk-sy-" + "0" * 43}
    elif case == "model":
        body = {**body, "model": "no-such-model"}
    elif case == "too_large":
        body = {**body, "padding": "x" * 300_000}
    elif case == "busy":
        harness.settings.max_in_flight = 0
    elif case == "bus_down":
        bus_down(harness)
    return await harness.client.post(path, json=body, headers=headers)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("path", "body", "vendor"), APIS, ids=["chat", "messages", "embeddings"])
async def test_gateway_errors_are_in_the_apis_format_with_a_request_id(
    harness, case, path, body, vendor
):
    status, types = CASES[case]

    response = await send(harness, case, path, body)

    assert response.status_code == status, response.text
    error = error_of(response, vendor)
    assert error["type"] == types[vendor]
    assert len(response.headers["x-request-id"]) == 32
    if status in (429, 503):
        assert int(response.headers["retry-after"]) >= 1
    assert not harness.requests


async def test_every_error_has_its_own_request_id(harness):
    ids = {
        (await harness.client.post("/v1/chat/completions", json={}, headers=AUTH)).headers[
            "x-request-id"
        ]
        for _ in range(5)
    }
    assert len(ids) == 5
    made = harness.app.state.gateway.request_ids
    for request_id in ids:  # 32 lowercase hex digits, each one the gateways recognise
        assert len(request_id) == 32 and int(request_id, 16) >= 0 and request_id.islower()
        assert made.made_here(request_id)


def test_request_ids_are_recognised_by_every_replica_sharing_the_internal_token():
    from switchyard.gateway.config import Settings
    from switchyard.gateway.request_id import RequestIds

    ours = RequestIds(Settings(internal_token="t" * 40).request_id_key())
    replica = RequestIds(Settings(internal_token="t" * 40).request_id_key())
    other = RequestIds(Settings(internal_token="u" * 40).request_id_key())
    made = ours.new()
    assert replica.made_here(made)
    assert not other.made_here(made)
    assert not ours.made_here(made[:-1])
    assert not ours.made_here(made[:-1] + format((int(made[-1], 16) + 1) % 16, "x"))
    assert not ours.made_here("Z" * 32)
    assert not ours.made_here(made[:22] + "é" * 10)


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/v1/models", AUTH),
        ("GET", "/v1/nothing-here", AUTH),
        ("GET", "/livez", {}),
        ("GET", "/openapi.json", {}),
        (
            "OPTIONS",
            "/v1/messages",
            {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        ),
    ],
)
async def test_every_other_response_carries_a_request_id(harness, method, path, headers):
    response = await harness.client.request(method, path, headers=headers)
    assert response.headers["x-request-id"]


async def test_model_not_found_names_the_parameter_in_both_formats(harness):
    chat = await harness.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=AUTH
    )
    messages = await harness.client.post(
        "/v1/messages", json={**MESSAGE, "model": "nope"}, headers=AUTH
    )
    assert error_of(chat, "openai")["param"] == "model"
    assert error_of(chat, "openai")["code"] == "model_not_found"
    assert error_of(messages, "anthropic")["param"] == "model"
    assert error_of(messages, "anthropic")["code"] == "model_not_found"


async def test_an_invalid_idempotency_key_is_refused_with_a_request_id(harness):
    response = await harness.client.post(
        "/v1/messages", json=MESSAGE, headers={**AUTH, "Idempotency-Key": "x" * 300}
    )
    assert response.status_code == 400
    assert error_of(response, "anthropic")["param"] == "Idempotency-Key"
    assert response.headers["x-request-id"]


@pytest.mark.parametrize(("path", "body", "vendor"), APIS, ids=["chat", "messages", "embeddings"])
async def test_a_request_too_large_for_the_bus_is_413_not_an_outage(harness, path, body, vendor):
    async def refuse(*_args, **_kwargs):
        raise EventTooLargeError("larger than the topic accepts")

    harness.bus.publish = refuse  # type: ignore[method-assign]
    response = await harness.client.post(path, json=body, headers=AUTH)

    assert response.status_code == 413
    error = error_of(response, vendor)
    assert error["code"] == "request_too_large"
    assert "retry-after" not in response.headers
    assert harness.app.state.gateway.in_flight == 0


async def test_a_wrong_base_url_gets_a_404_that_says_which_base_url_each_sdk_takes(harness):
    doubled = await harness.client.post(
        "/v1/v1/messages", json={}, headers={"anthropic-version": "2023-06-01"}
    )
    assert doubled.status_code == 404
    body = doubled.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert "/v1 twice" in body["error"]["message"]

    no_prefix = await harness.client.post("/chat/completions", json={})
    assert no_prefix.status_code == 404
    error = no_prefix.json()["error"]
    assert error["code"] == "unknown_url" and "ends in /v1" in error["message"]

    legacy = await harness.client.post("/v1/completions", json={})
    assert legacy.status_code == 404 and "/docs" in legacy.json()["error"]["message"]


@pytest.mark.parametrize(("path", "body", "vendor"), APIS, ids=["chat", "messages", "embeddings"])
async def test_a_trailing_slash_is_not_found_never_redirected(harness, path, body, vendor):
    # A redirect would name whatever Host header came, and a cache could keep it.
    response = await harness.client.post(
        path + "/", json=body, headers={**AUTH, "host": "evil.example"}
    )
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.headers["x-request-id"]
    error = error_of(response, vendor)
    assert error["type"] == (
        "not_found_error" if vendor == "anthropic" else "invalid_request_error"
    )


async def test_a_method_a_route_does_not_take_is_an_invalid_request_in_openais_format(harness):
    response = await harness.client.get("/v1/chat/completions", headers=AUTH)
    assert response.status_code == 405
    assert error_of(response, "openai")["type"] == "invalid_request_error"


@pytest.mark.parametrize(("path", "body", "vendor"), APIS, ids=["chat", "messages", "embeddings"])
async def test_a_compressed_body_is_415_in_the_apis_format(harness, path, body, vendor):
    import gzip

    import orjson

    response = await harness.client.post(
        path,
        content=gzip.compress(orjson.dumps(body)),
        headers={**AUTH, "content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 415
    assert response.headers["accept-encoding"] == "identity"
    assert response.headers["x-request-id"]
    error = error_of(response, vendor)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "header",
    [("authorization", "Bearer "), ("x-api-key", "")],
    ids=["authorization", "x-api-key"],
)
@pytest.mark.parametrize(("path", "body", "vendor"), APIS, ids=["chat", "messages", "embeddings"])
async def test_credentials_sent_twice_are_refused_whichever_comes_first(
    harness, path, body, vendor, header
):
    name, prefix = header
    wrong = prefix + "sk-sy-" + "0" * 43
    for pair in ([prefix + API_KEY, wrong], [wrong, prefix + API_KEY]):
        response = await harness.client.post(
            path, json=body, headers=[(name, value) for value in pair]
        )
        assert response.status_code == 400, response.text
        error = error_of(response, vendor)
        assert "more than once" in error["message"]
    assert harness.requests == []


async def test_an_idempotency_key_sent_twice_is_refused(harness):
    response = await harness.client.post(
        "/v1/chat/completions",
        json=CHAT,
        headers=[("x-api-key", API_KEY), ("idempotency-key", "a1"), ("idempotency-key", "a2")],
    )
    assert response.status_code == 400
    error = error_of(response, "openai")
    assert (error["param"], error["code"]) == ("Idempotency-Key", "invalid_idempotency_key")
    assert harness.requests == []


async def test_answers_in_anthropics_format_carry_its_request_id_header_too(harness):
    # Anthropic's SDKs read `request-id` (message._request_id, APIStatusError.request_id).
    answered = await harness.client.post("/v1/messages", json=MESSAGE, headers=AUTH)
    refused = await harness.client.post(
        "/v1/messages", json={**MESSAGE, "model": "no-such-model"}, headers=AUTH
    )
    models = await harness.client.get(
        "/v1/models", headers={**AUTH, "anthropic-version": "2023-06-01"}
    )
    wrong_base_url = await harness.client.post(
        "/v1/v1/messages", json=MESSAGE, headers={**AUTH, "anthropic-version": "2023-06-01"}
    )
    for response in (answered, refused, models, wrong_base_url):
        assert response.headers["request-id"] == response.headers["x-request-id"]
    chat = await harness.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert chat.headers["x-request-id"] and "request-id" not in chat.headers


async def test_anthropic_error_objects_carry_the_request_id_as_its_api_does(harness):
    # Anthropic's API: `{"type": "error", "error": {...}, "request_id": "..."}`.
    unknown_model = await harness.client.post(
        "/v1/messages", json={**MESSAGE, "model": "no-such-model"}, headers=AUTH
    )
    no_key = await harness.client.post("/v1/messages", json=MESSAGE)
    too_large = await harness.client.post(
        "/v1/messages",
        content=b'{"pad": "' + b"x" * (33 * 1024 * 1024) + b'"}',
        headers={**AUTH, "content-type": "application/json"},
    )
    models = await harness.client.get(
        "/v1/models/no-such-model", headers={**AUTH, "anthropic-version": "2023-06-01"}
    )
    for response, status in ((unknown_model, 404), (no_key, 401), (too_large, 413), (models, 404)):
        assert response.status_code == status, response.text
        error_of(response, "anthropic")
        assert response.json()["request_id"] == response.headers["request-id"]
    chat = await harness.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "no-such-model"}, headers=AUTH
    )
    assert chat.status_code == 404
    assert "request_id" not in chat.json()  # OpenAI's error object has no such field


@pytest.mark.parametrize("path", ["/v1/api-keys", "/v1/me", "/v1/admin/users"])
async def test_credentials_sent_twice_are_refused_on_the_routes_forwarded_to_auth(harness, path):
    response = await harness.client.get(
        path, headers=[("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")]
    )
    assert response.status_code == 400, response.text
    assert error_of(response, "openai")["code"] == "duplicate_credentials"


async def test_the_console_without_its_slash_leads_to_it(harness):
    response = await harness.client.get("/ui", headers={"host": "evil.example"})
    assert response.status_code == 307
    assert response.headers["location"] == "/ui/"


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        (
            "/v1/chat/completions",
            {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]},
            {"Authorization": f"Bearer {API_KEY}"},
        ),
        (
            "/v1/messages",
            {"model": "sim-small", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
            AUTH,
        ),
    ],
)
async def test_an_unexpected_fault_is_a_500_in_the_apis_format_with_the_request_id(
    harness, monkeypatch, path, body, headers
):
    from switchyard.gateway import dispatch

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(dispatch.Dispatch, "start", broken)

    response = await harness.client.post(path, json=body, headers=headers)

    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    request_id = response.headers["x-request-id"]
    answer = response.json()
    if path == "/v1/messages":
        assert answer["type"] == "error" and answer["error"]["type"] == "api_error"
        assert answer["request_id"] == response.headers["request-id"] == request_id
    else:
        assert answer["error"]["type"] == "server_error"
    assert "a bug" not in response.text  # the fault's details stay in the log


async def test_a_client_gone_mid_upload_is_not_a_fault(harness, capsys):
    # The body never ends: the client went away. Nothing is answered, nothing is logged
    # as an error (ClientDisconnectGuard's one INFO line is all).
    messages = [
        {"type": "http.request", "body": b'{"model": "sim-small", "mess', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    await harness.app(asgi_scope("POST", "/v1/chat/completions"), receive, send)

    assert not [m for m in sent if m["type"] == "http.response.start"]
    logged = capsys.readouterr()
    assert "unexpected error" not in logged.out + logged.err
    assert harness.requests == []


@pytest.mark.parametrize("path", ["/livez", "/v1/models"])
async def test_head_on_a_get_route_is_answered_like_get_without_a_body(harness, path):
    response = await harness.client.head(path, headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["x-request-id"]


async def test_a_405_names_every_method_the_path_serves(harness):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    put = await harness.client.put("/v1/responses/resp_123", headers=headers)
    messages = await harness.client.get("/v1/messages", headers=headers)
    assert put.status_code == 405
    assert put.headers["allow"] == "DELETE, GET, HEAD"
    assert put.json()["error"] == {
        "message": "Method not allowed: PUT /v1/responses/resp_123; this address takes "
        "DELETE, GET, HEAD.",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }
    assert messages.status_code == 405
    assert messages.headers["allow"] == "POST"
    assert messages.json()["type"] == "error"  # Anthropic's format on its own path
    assert messages.json()["error"]["message"] == (
        "Method not allowed: GET /v1/messages; this address takes POST."
    )


@pytest.mark.parametrize(
    ("status", "seconds", "header"),
    [
        (429, 2.4, "3"),  # rounded up: never before the wait is over
        (429, 0.0, "1"),
        (429, 1e300, "86400"),  # a wait no client would keep: a day
        (429, float("inf"), "1"),  # from a producer on the topics: no 500, a retryable 429
        (503, float("nan"), "1"),
        (400, float("inf"), None),
    ],
)
def test_a_retry_after_header_is_whole_seconds_from_1_to_a_day(status, seconds, header):
    from switchyard.gateway.errors import retry_after

    assert retry_after(status, seconds) == header
