"""OpenAI's Responses input token count in inference (`openai.responses.input_tokens`):
passed through to a deployment offering the Responses API, counted by an Anthropic
deployment's count_tokens on the translated request, estimated with a tokenizer for a
Chat-Completions-only deployment (no upstream call, `upstream_api` left empty); the
previous conversation's items are counted too; never billed."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.common.events import ChatCompleted, ChatFailed, ChatRequested, ClientAPI
from switchyard.common.routing import Deployment
from switchyard.common.tokenizer import count_text
from switchyard.inference import tokens
from switchyard.inference.testing import Scripted, chat_request

COUNT = ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS
BODY = {"model": "m", "instructions": "Be terse.", "input": "How many tokens is this?"}
PREVIOUS = [
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
    {
        "type": "message",
        "role": "assistant",
        "id": "msg_1",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
    },
]


def responses_deployment(recorder) -> Deployment:
    return Deployment(
        name="gpt-responses",
        provider="openai",
        model="gpt-up",
        base_url=f"{recorder.root}/v1",
        responses_api=True,
        responses_input_tokens=True,
        max_retries=0,
    )


def responses_without_count(recorder) -> Deployment:
    # Azure OpenAI, vLLM, Ollama: the Responses API, but no count endpoint.
    return Deployment(
        name="responses-no-count",
        provider="openai",
        model="gpt-up",
        base_url=f"{recorder.root}/v1",
        responses_api=True,
        max_retries=0,
    )


def chat_deployment(recorder) -> Deployment:
    return Deployment(
        name="gpt-chat",
        provider="openai",
        model="gpt-up",
        base_url=f"{recorder.root}/v1",
        max_retries=0,
    )


def claude(recorder) -> Deployment:
    return Deployment(
        name="claude",
        provider="anthropic",
        model="claude-up",
        base_url=recorder.root,
        max_retries=0,
    )


def count(
    body: dict[str, Any] | None = None, previous: list[dict[str, Any]] | None = None
) -> ChatRequested:
    request = chat_request("m", api=COUNT, body=body or BODY, headers={"openai-beta": "b-1"})
    if previous is None:
        return request
    data = request.data.model_copy(update={"previous_items": previous})
    return request.model_copy(update={"data": data})


async def test_a_responses_deployment_counts_the_tokens_itself(recorder, serve):
    recorder.script(Scripted(json={"object": "response.input_tokens", "input_tokens": 21}))
    harness = await serve(responses_deployment(recorder))
    request = count(previous=PREVIOUS)
    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response == {"object": "response.input_tokens", "input_tokens": 21}
    assert reply.data.upstream_api is COUNT
    sent = recorder.last
    assert sent.path == "/v1/responses/input_tokens"
    assert sent.headers["openai-beta"] == "b-1"
    # The previous conversation's items before the client's input, as /v1/responses sends.
    assert sent.body["model"] == "gpt-up"
    assert [item.get("role") for item in sent.body["input"]] == ["user", "assistant", "user"]
    assert sent.body["input"][-1]["content"] == "How many tokens is this?"
    assert "previous_response_id" not in sent.body
    usage = await harness.usage_of(request.request_id)
    assert usage.data.usage.total_tokens == 0 and usage.data.cost_usd == 0  # nothing billed


async def test_an_anthropic_deployment_counts_the_translated_request(recorder, serve):
    recorder.script(Scripted(json={"input_tokens": 17}))
    harness = await serve(claude(recorder))
    request = count({**BODY, "max_output_tokens": 300, "temperature": 0.2}, previous=PREVIOUS)
    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response == {"object": "response.input_tokens", "input_tokens": 17}
    assert reply.data.upstream_api is ClientAPI.ANTHROPIC_COUNT_TOKENS
    sent = recorder.last
    assert sent.path == "/v1/messages/count_tokens"
    # Only what count_tokens takes: a Messages body's max_tokens and sampling it refuses.
    assert set(sent.body) == {"model", "messages", "system"}
    assert sent.body["model"] == "claude-up" and sent.body["system"] == "Be terse."
    assert [turn["role"] for turn in sent.body["messages"]] == ["user", "assistant", "user"]


async def test_a_chat_only_deployment_gets_an_estimate_without_being_called(recorder, serve):
    recorder.script(Scripted(json={"unexpected": True}))
    harness = await serve(chat_deployment(recorder))
    request = count()
    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.upstream_api is None  # estimated here
    expected = (
        count_text("Be terse.")
        + count_text("How many tokens is this?")
        + 2 * tokens.TOKENS_PER_MESSAGE
        + tokens.REPLY_PRIMING_TOKENS
    )
    assert reply.data.response == {"object": "response.input_tokens", "input_tokens": expected}
    assert recorder.requests == []


async def test_a_responses_deployment_without_a_count_gets_an_estimate_of_what_it_gets(
    recorder, serve
):
    recorder.script(Scripted(json={"unexpected": True}))
    harness = await serve(responses_without_count(recorder))
    # A built-in tool reaches such a deployment as sent: counted, not refused.
    body = {**BODY, "tools": [{"type": "web_search"}]}
    reply = await harness.handle(count(body, previous=PREVIOUS))

    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.upstream_api is None  # estimated here
    assert recorder.requests == []
    tool_tokens = count_text('{"type":"web_search"}')
    expected = (
        count_text("Be terse.")
        + count_text("Hi")
        + count_text("Hello!")
        + count_text("How many tokens is this?")
        + 4 * tokens.TOKENS_PER_MESSAGE
        + tokens.REPLY_PRIMING_TOKENS
        + tool_tokens
    )
    assert reply.data.response == {"object": "response.input_tokens", "input_tokens": expected}


async def test_a_count_without_input_is_estimated_from_the_instructions(recorder, serve):
    # OpenAI's count takes no `input` (the `openai` SDK has it optional).
    harness = await serve(chat_deployment(recorder))
    reply = await harness.handle(count({"model": "m", "instructions": "Be terse."}))

    assert isinstance(reply, ChatCompleted), reply
    expected = count_text("Be terse.") + tokens.TOKENS_PER_MESSAGE + tokens.REPLY_PRIMING_TOKENS
    assert reply.data.response == {"object": "response.input_tokens", "input_tokens": expected}


async def test_an_anthropic_count_without_input_says_its_deployment_needs_one(recorder, serve):
    harness = await serve(claude(recorder))
    reply = await harness.handle(count({"model": "m", "instructions": "Be terse."}))

    assert isinstance(reply, ChatFailed), reply
    error = reply.data.error
    assert (error.status, error.param, error.code) == (400, "input", "unsupported_parameter")
    assert "Missing required" not in error.message and "messages:" not in error.message
    assert recorder.requests == []


@pytest.mark.parametrize("which", ["anthropic", "chat"])
async def test_a_translated_count_refuses_what_the_response_would_refuse(recorder, serve, which):
    deployment = claude(recorder) if which == "anthropic" else chat_deployment(recorder)
    harness = await serve(deployment)
    reply = await harness.handle(count({**BODY, "truncation": "auto"}))

    assert isinstance(reply, ChatFailed), reply
    assert reply.data.error.status == 400 and reply.data.error.param == "truncation"
    assert recorder.requests == []


async def test_an_upstream_count_without_input_tokens_is_an_invalid_reply(recorder, serve):
    recorder.script(Scripted(json={"object": "response.input_tokens"}))
    harness = await serve(responses_deployment(recorder))
    reply = await harness.handle(count())
    assert isinstance(reply, ChatFailed)
    assert reply.data.error.code == "upstream_invalid_reply"


async def test_an_upstream_count_error_reaches_the_client_as_openai_wrote_it(recorder, serve):
    recorder.script(
        Scripted(
            status=400,
            json={
                "error": {
                    "message": "Unknown parameter: 'personality'.",
                    "type": "invalid_request_error",
                    "param": "personality",
                    "code": "unknown_parameter",
                }
            },
        )
    )
    harness = await serve(responses_deployment(recorder))
    reply = await harness.handle(count({**BODY, "personality": "friendly"}))
    assert isinstance(reply, ChatFailed)
    assert reply.data.error.status == 400 and reply.data.error.param == "personality"


def test_the_chat_estimate_counts_tool_calls_tools_and_images():
    plain = {"messages": [{"role": "user", "content": "hi"}]}
    base = tokens.estimate_chat_input_tokens(plain)
    assert base == count_text("hi") + tokens.TOKENS_PER_MESSAGE + tokens.REPLY_PRIMING_TOKENS
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    assert tokens.estimate_chat_input_tokens({**plain, "tools": [tool]}) > base + 5
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    parts = [{"type": "text", "text": "hi"}, image]
    with_image = tokens.estimate_chat_input_tokens(
        {"messages": [{"role": "user", "content": parts}]}
    )
    assert with_image == base + tokens.IMAGE_TOKENS
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
        ],
    }
    with_call = tokens.estimate_chat_input_tokens({"messages": [*plain["messages"], call]})
    assert with_call == (base + tokens.TOKENS_PER_MESSAGE + count_text("f") + count_text('{"a":1}'))
