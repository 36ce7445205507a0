"""Both client APIs against models of both protocols, through every service on real Kafka
and PostgreSQL: a request reaches a deployment that speaks its API as it was sent (passed
through), and one of the other protocol translated once; JSON and streaming; the reply
arrives in the client's API, and history records the request in the API the client
called, with the API the deployment was called with.

The simulator serves `sim-small` over OpenAI's protocol and `sim-claude` over Anthropic's;
its `/_sim/stats` counts the calls per upstream route, which shows which protocol was used.
"""

from __future__ import annotations

import uuid

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from switchyard.common.db import sync_url
from switchyard.common.testing.infra import wait_until
from switchyard.simulator.testing import simulator_at

pytestmark = pytest.mark.e2e

OPENAI_MODEL, ANTHROPIC_MODEL = "sim-small", "sim-claude"
REPLY_PREFIX = "Simulated reply to: "


def openai_client(system) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=system.url("gateway") + "/v1", api_key=system.api_key, max_retries=0, timeout=60
    )


def anthropic_client(system) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=system.url("gateway"), api_key=system.api_key, max_retries=0, timeout=60
    )


def upstream_routes(system) -> dict[str, int]:
    with simulator_at(system.url("simulator")) as simulator:
        return simulator.stats()["routes"]


class UpstreamCalls:
    """The simulator's calls per route while the block runs (tests run one at a time)."""

    def __init__(self, system) -> None:
        self.system = system

    def __enter__(self) -> UpstreamCalls:
        self.before = upstream_routes(self.system)
        return self

    def __exit__(self, *exc) -> None:
        after = upstream_routes(self.system)
        self.delta = {
            route: after.get(route, 0) - self.before.get(route, 0)
            for route in set(after) | set(self.before)
            if after.get(route, 0) != self.before.get(route, 0)
        }


def recorded(system, request_id: str) -> dict:
    """The request's row in history once it is completed."""

    def row():
        engine = create_engine(sync_url(system.database_url))
        try:
            with engine.connect() as connection:
                found = (
                    connection.execute(
                        text(
                            "SELECT status, api, client_api, upstream_api, request_body, response,"
                            " input_tokens, output_tokens FROM history_requests"
                            " WHERE request_id = :id"
                        ),
                        {"id": request_id},
                    )
                    .mappings()
                    .first()
                )
        finally:
            engine.dispose()
        return dict(found) if found and found["status"] == "completed" else None

    return wait_until(row, timeout=30, message=f"request {request_id} completed in history")


def words() -> str:
    return f"hello {uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- OpenAI client


@pytest.mark.parametrize(
    ("model", "upstream_route", "upstream_api"),
    [
        (OPENAI_MODEL, "/v1/chat/completions", "openai.chat_completions"),
        (ANTHROPIC_MODEL, "/v1/messages", "anthropic.messages"),
    ],
    ids=["passed-through", "translated"],
)
def test_openai_client_json(system, model, upstream_route, upstream_api):
    prompt = words()
    with UpstreamCalls(system) as calls:
        raw = openai_client(system).chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=64
        )
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == REPLY_PREFIX + prompt
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert calls.delta == {upstream_route: 1}
    row = recorded(system, raw.headers["x-request-id"])
    assert (row["api"], row["client_api"], row["upstream_api"]) == (
        "openai.chat_completions",
        "openai.chat_completions",
        upstream_api,
    )
    assert row["request_body"]["messages"] == [{"role": "user", "content": prompt}]
    assert row["response"]["object"] == "chat.completion"


@pytest.mark.parametrize(
    ("model", "upstream_route"),
    [(OPENAI_MODEL, "/v1/chat/completions"), (ANTHROPIC_MODEL, "/v1/messages")],
    ids=["passed-through", "translated"],
)
def test_openai_client_streaming(system, model, upstream_route):
    prompt = words()
    with UpstreamCalls(system) as calls:
        stream = openai_client(system).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)

    text_parts = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(text_parts) == REPLY_PREFIX + prompt
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # The client asked for usage: it gets the upstream's own counts in the last chunk.
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    assert calls.delta == {upstream_route: 1}


# --------------------------------------------------------------------------- Anthropic client


@pytest.mark.parametrize(
    ("model", "upstream_route", "upstream_api"),
    [
        (ANTHROPIC_MODEL, "/v1/messages", "anthropic.messages"),
        (OPENAI_MODEL, "/v1/chat/completions", "openai.chat_completions"),
    ],
    ids=["passed-through", "translated"],
)
def test_anthropic_client_json(system, model, upstream_route, upstream_api):
    prompt = words()
    with UpstreamCalls(system) as calls:
        raw = anthropic_client(system).messages.with_raw_response.create(
            model=model,
            max_tokens=64,
            system="Be brief.",
            messages=[{"role": "user", "content": prompt}],
        )
    message = raw.parse()

    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].text == REPLY_PREFIX + prompt
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert calls.delta == {upstream_route: 1}
    row = recorded(system, raw.headers["x-request-id"])
    assert (row["api"], row["client_api"], row["upstream_api"]) == (
        "anthropic.messages",
        "anthropic.messages",
        upstream_api,
    )
    # Recorded as the client sent it: the system prompt is still a top-level field.
    assert row["request_body"]["system"] == "Be brief."
    assert row["response"]["type"] == "message"


@pytest.mark.parametrize(
    ("model", "upstream_route"),
    [(ANTHROPIC_MODEL, "/v1/messages"), (OPENAI_MODEL, "/v1/chat/completions")],
    ids=["passed-through", "translated"],
)
def test_anthropic_client_streaming(system, model, upstream_route):
    prompt = words()
    with UpstreamCalls(system) as calls:
        with anthropic_client(system).messages.stream(
            model=model, max_tokens=64, messages=[{"role": "user", "content": prompt}]
        ) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()

    assert streamed == REPLY_PREFIX + prompt
    assert final.stop_reason == "end_turn"
    # The upstream's own counts reach the client, not zeros.
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    assert calls.delta == {upstream_route: 1}


def test_a_claude_code_shaped_request_streams_from_an_anthropic_model(system):
    tools = [
        {
            "name": f"Tool{index}",
            "description": f"Tool number {index}. " * 40,
            "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
        }
        for index in range(24)
    ]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    system_blocks = [
        {
            "type": "text",
            "text": "You are Claude Code, Anthropic's official CLI for Claude.",
            "cache_control": {"type": "ephemeral"},
        },
        {"type": "text", "text": "Instructions. " * 2000, "cache_control": {"type": "ephemeral"}},
    ]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Fix the failing test."}]},
        # Where Anthropic takes a system message inside `messages`: right after a user
        # turn, followed by an assistant turn (or last).
        {"role": "system", "content": "The user switched to plan mode."},
        {"role": "assistant", "content": [{"type": "text", "text": "Looking."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Go ahead.", "cache_control": {"type": "ephemeral"}}
            ],
        },
    ]
    with UpstreamCalls(system) as calls:
        with anthropic_client(system).messages.stream(
            model=ANTHROPIC_MODEL,
            max_tokens=2048,
            system=system_blocks,
            messages=messages,
            tools=tools,
            thinking={"type": "enabled", "budget_tokens": 1024},
            metadata={"user_id": "user_e2e_session_1"},
            extra_headers={
                "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"
            },
        ) as stream:
            streamed = "".join(stream.text_stream)
            request_id = stream.response.headers["x-request-id"]

    assert streamed == REPLY_PREFIX + "Go ahead."
    assert calls.delta == {"/v1/messages": 1}
    row = recorded(system, request_id)
    body = row["request_body"]
    assert body["system"] == system_blocks
    assert body["messages"] == messages
    assert body["tools"] == tools
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["metadata"] == {"user_id": "user_e2e_session_1"}


def test_a_5_mb_messages_request_goes_through_kafka(system):
    # Over the old 1 MiB limit of the gateway and of Kafka's default message size.
    document = "lorem ipsum " * (5 * 1024 * 1024 // 12)
    with UpstreamCalls(system) as calls:
        message = anthropic_client(system).messages.create(
            model=ANTHROPIC_MODEL,
            max_tokens=64,
            messages=[
                {"role": "user", "content": [{"type": "text", "text": document}]},
                {"role": "assistant", "content": "Read."},
                {"role": "user", "content": "Summarise it."},
            ],
        )
    assert message.content[0].text == REPLY_PREFIX + "Summarise it."
    assert calls.delta == {"/v1/messages": 1}


# --------------------------------------------------------------------------- errors


def test_an_upstream_refusal_reaches_each_client_in_its_own_format(system):
    # The simulator refuses these as the providers do; nothing retries a 400.
    with pytest.raises(anthropic.BadRequestError) as anthropic_refusal:
        anthropic_client(system).messages.create(
            model=ANTHROPIC_MODEL, max_tokens=-1, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError) as openai_refusal:
        openai_client(system).chat.completions.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}], temperature=5
        )

    assert anthropic_refusal.value.body["type"] == "error"
    assert anthropic_refusal.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in anthropic_refusal.value.body["error"]["message"]
    assert anthropic_refusal.value.response.headers["x-request-id"]
    assert openai_refusal.value.body["type"] == "invalid_request_error"
    assert "temperature" in openai_refusal.value.body["message"]


def test_gateway_refusals_carry_a_request_id_in_each_format(system):
    headers = {"x-api-key": system.api_key, "content-type": "application/json"}
    chat = httpx.post(
        system.url("gateway") + "/v1/chat/completions", content=b"{", headers=headers, timeout=10
    )
    messages = httpx.post(
        system.url("gateway") + "/v1/messages",
        json={"model": ANTHROPIC_MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={**headers, "anthropic-version": "2023-06-01"},
        timeout=10,
    )
    unauthenticated = httpx.post(
        system.url("gateway") + "/v1/messages", json={}, headers={"x-api-key": "nope"}, timeout=10
    )

    assert chat.status_code == 400 and chat.json()["error"]["type"] == "invalid_request_error"
    assert messages.status_code == 400
    assert messages.json()["error"]["param"] == "max_tokens"
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["type"] == "authentication_error"
    for response in (chat, messages, unauthenticated):
        assert len(response.headers["x-request-id"]) == 32
