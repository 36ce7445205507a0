"""The gateway's own refusals tell clients whether retrying could help, as the providers'
APIs do with `x-should-retry`: a bad body, an unknown model or route never gets past on a
retry (`false`). A 401 leaves the retry to the client (Claude Code then asks its
`apiKeyHelper` for a fresh credential), as do a rate limit within its window and a
gateway short of capacity (no `false`)."""

from __future__ import annotations

import orjson
import pytest

from .conftest import API_KEY, failed_reply
from .test_governance import CHAT, limited_auth

OPENAI = {"Authorization": f"Bearer {API_KEY}"}
ANTHROPIC = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
MESSAGE = {"model": "sim-small", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"),
    [
        ("/v1/messages", {**MESSAGE, "max_tokens": "many"}, ANTHROPIC, 400),
        ("/v1/chat/completions", b'{"model": "sim-small", "messages": [', OPENAI, 400),
        ("/v1/chat/completions", {**CHAT, "model": "no-such-model"}, OPENAI, 404),
        ("/v1/messages", {**MESSAGE, "model": "no-such-model"}, ANTHROPIC, 404),
        ("/v1/no-such-route", CHAT, OPENAI, 404),
    ],
    ids=[
        "messages-400",
        "chat-400",
        "chat-unknown-model",
        "messages-unknown-model",
        "unknown-route",
    ],
)
async def test_a_refusal_no_retry_can_pass_says_so(harness, path, body, headers, status):
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    answer = await harness.client.post(
        path, content=content, headers={**headers, "content-type": "application/json"}
    )

    assert answer.status_code == status, answer.text
    assert answer.headers["x-should-retry"] == "false"
    assert "retry-after" not in answer.headers
    assert harness.requests == []


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/messages", {"x-api-key": "sk-sy-not-a-key"}),
        ("/v1/chat/completions", {"Authorization": "Bearer sk-sy-not-a-key"}),
        ("/v1/chat/completions", {"Authorization": "Bearer not.a.jwt"}),
    ],
)
async def test_a_401_leaves_the_retry_to_the_client(harness, path, headers):
    """A client with a credential helper retries a 401 with a fresh credential."""
    body = MESSAGE if path == "/v1/messages" else CHAT
    answer = await harness.client.post(path, json=body, headers=headers)

    assert answer.status_code == 401, answer.text
    assert "x-should-retry" not in answer.headers


async def test_a_rate_limit_within_its_window_leaves_the_retry_to_the_client(harness):
    limited_auth(harness, rpm_limit=1)
    assert (await harness.client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)).is_success

    refused = await harness.client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)

    assert refused.status_code == 429
    assert refused.headers.get("x-should-retry") != "false"
    assert int(refused.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("status", "should_retry", "header"),
    [(400, None, "false"), (404, None, "false"), (400, True, "true"), (500, None, None)],
)
async def test_a_failed_request_says_so_unless_its_upstream_said_otherwise(
    harness, status, should_retry, header
):
    """A translation's or an upstream's refusal of the request itself will be refused
    again; an upstream's own `x-should-retry` wins; a server error is left to the client."""

    async def refuse(request):
        return [
            failed_reply(
                request, status, "invalid_request_error", "refused", should_retry=should_retry
            )
        ]

    harness.respond[0] = refuse
    answer = await harness.client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)

    assert answer.status_code == status, answer.text
    assert answer.headers.get("x-should-retry") == header
