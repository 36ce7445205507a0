"""A credential bound to a list of models cannot reach another through a tool the upstream
runs itself (a Responses `image_generation` tool, an Anthropic server tool naming its own
`model`), on every path: each model API, the token counts and jobs."""

from __future__ import annotations

import pytest

from .conftest import API_KEY

TOOL = {"type": "image_generation", "model": "gpt-image-1"}
BODY = {"model": "sim-small", "input": "Draw a cat", "tools": [{"type": "web_search"}, TOOL]}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


ADVISOR = {"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-7"}
MESSAGES = {
    "model": "sim-small",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [ADVISOR],
}
COUNT = {name: value for name, value in MESSAGES.items() if name != "max_tokens"}
CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "tools": [TOOL]}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/responses", BODY, "tools[1].model"),
        ("/v1/responses/input_tokens", BODY, "tools[1].model"),
        # An Anthropic server tool naming its own model (the advisor's).
        ("/v1/messages", MESSAGES, "tools.0.model"),
        ("/v1/messages/count_tokens", COUNT, "tools.0.model"),
        ("/v1/chat/completions", CHAT, "tools[0].model"),
        ("/v1/jobs", {"url": "/v1/messages", "body": MESSAGES}, "body.tools.0.model"),
        ("/v1/jobs", CHAT, "tools[0].model"),
    ],
)
async def test_a_bound_credential_is_refused_a_model_named_in_a_tool(harness, path, body, param):
    token = harness.auth.token(allowed_models=["sim-small"])

    refused = await harness.client.post(
        path, json=body, headers={**bearer(token), "anthropic-version": "2023-06-01"}
    )

    assert refused.status_code == 404, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", param)
    assert body.get("body", body)["tools"][-1]["model"] in error["message"]
    assert harness.requests == []  # nothing was published


async def test_a_tools_model_the_credential_allows_or_an_unbound_one_is_sent(harness):
    allowed = harness.auth.token(allowed_models=["sim-small", "gpt-image-1"])
    for credential in (allowed, API_KEY):
        response = await harness.client.post("/v1/responses", json=BODY, headers=bearer(credential))
        assert response.status_code == 200, response.text
    assert [request.data.body["tools"][1] for request in harness.requests] == [TOOL, TOOL]
