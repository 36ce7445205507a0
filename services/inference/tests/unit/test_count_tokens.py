"""Anthropic's count_tokens in inference: passed through to an Anthropic-protocol
deployment (its own count), estimated with a tokenizer for any other (no upstream call,
`upstream_api` left empty so the gateway can say so), never billed."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.common.events import ChatCompleted, ChatFailed, ClientAPI
from switchyard.common.routing import Deployment
from switchyard.common.tokenizer import count_text
from switchyard.inference import tokens
from switchyard.inference.testing import Scripted, chat_request

COUNT = ClientAPI.ANTHROPIC_COUNT_TOKENS
BODY = {
    "model": "m",
    "system": "You are terse.",
    "messages": [{"role": "user", "content": "How many tokens is this sentence?"}],
}


def claude(recorder) -> Deployment:
    return Deployment(
        name="claude",
        provider="anthropic",
        model="claude-up",
        base_url=recorder.root,
        max_retries=0,
    )


def gpt(recorder) -> Deployment:
    return Deployment(
        name="gpt",
        provider="openai",
        model="gpt-up",
        base_url=f"{recorder.root}/v1",
        max_retries=0,
    )


def count(body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
    return chat_request("m", api=COUNT, body=body or BODY, headers=headers)


async def test_anthropic_deployment_counts_the_tokens_itself(recorder, serve):
    recorder.script(Scripted(json={"input_tokens": 14}))
    harness = await serve(claude(recorder))
    request = count(headers={"anthropic-version": "2023-06-01", "anthropic-beta": "x-1"})
    reply = await harness.handle(request)
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response == {"input_tokens": 14}
    assert reply.data.upstream_api is COUNT
    sent = recorder.last
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.body == {**BODY, "model": "claude-up"}
    assert sent.headers["anthropic-beta"] == "x-1"
    usage = await harness.usage_of(request.request_id)
    assert usage.data.usage.total_tokens == 0 and usage.data.cost_usd == 0  # nothing billed


async def test_openai_protocol_deployment_gets_an_estimate_without_being_called(recorder, serve):
    recorder.script(Scripted(json={"unexpected": True}))
    harness = await serve(gpt(recorder))
    request = count()
    reply = await harness.handle(request)
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.upstream_api is None  # estimated here
    expected = (
        count_text("You are terse.")
        + count_text("How many tokens is this sentence?")
        + 2 * tokens.TOKENS_PER_MESSAGE
        + tokens.REPLY_PRIMING_TOKENS
    )
    assert reply.data.response == {"input_tokens": expected}
    assert recorder.requests == []
    usage = await harness.usage_of(request.request_id)
    assert usage.data.upstream_calls == 0 and usage.data.usage.total_tokens == 0


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "bot", "content": "hi"}], "messages.0.role"),
        ([{"role": "user", "content": 5}], "messages.0.content"),
    ],
)
async def test_an_estimate_refuses_what_a_message_to_the_deployment_would_refuse(
    recorder, serve, messages, param
):
    harness = await serve(gpt(recorder))
    reply = await harness.handle(count({**BODY, "messages": messages}))

    assert isinstance(reply, ChatFailed), reply
    assert reply.data.error.status == 400 and param in reply.data.error.message
    assert recorder.requests == []


async def test_a_failing_anthropic_count_falls_back_to_an_estimate(recorder, serve):
    recorder.script(
        Scripted(
            status=529,
            json={"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
        )
    )
    harness = await serve(claude(recorder), gpt(recorder))
    reply = await harness.handle(count())
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.upstream_api is None and reply.data.deployment == "gpt"
    assert reply.data.response["input_tokens"] > 0


async def test_an_anthropic_count_error_reaches_the_client_as_anthropic_wrote_it(recorder, serve):
    recorder.script(
        Scripted(
            status=400,
            json={
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "messages: roles must alternate",
                },
            },
        )
    )
    harness = await serve(claude(recorder))
    reply = await harness.handle(count())
    assert isinstance(reply, ChatFailed)
    assert reply.data.error.status == 400
    assert reply.data.error.type == "invalid_request_error"
    assert "roles must alternate" in reply.data.error.message


async def test_an_upstream_count_without_input_tokens_is_an_invalid_reply(recorder, serve):
    recorder.script(Scripted(json={"tokens": 3}))
    harness = await serve(claude(recorder))
    reply = await harness.handle(count())
    assert isinstance(reply, ChatFailed)
    assert reply.data.error.code == "upstream_invalid_reply"


# --------------------------------------------------------------------------- the estimate


def test_estimate_counts_text_with_the_o200k_vocabulary():
    # "Hello, world!" is 4 tokens in o200k_base ([13225, 11, 2375, 0]).
    assert count_text("Hello, world!") == 4
    assert count_text("<|endoftext|>") > 1  # a marker in text is text, not special


def test_estimate_counts_tools_tool_use_results_and_images():
    plain = {"messages": [{"role": "user", "content": "hi"}]}
    base = tokens.estimate_input_tokens(plain)
    tool = {
        "name": "get_weather",
        "description": "Weather for a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    with_tool = tokens.estimate_input_tokens({**plain, "tools": [tool]})
    assert with_tool > base + 10
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    with_image = tokens.estimate_input_tokens(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]}
    )
    assert with_image == base + tokens.IMAGE_TOKENS
    conversation = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "t1",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "Sunny, 21 degrees"}
                ],
            },
        ]
    }
    counted = tokens.estimate_input_tokens(conversation)
    assert counted >= (
        count_text("weather?")
        + count_text("get_weather")
        + count_text('{"city":"Oslo"}')
        + count_text("Sunny, 21 degrees")
        + 3 * tokens.TOKENS_PER_MESSAGE
    )


def test_estimate_counts_pdf_pages():
    import base64

    pdf = b"%PDF-1.4 /Type /Pages /Kids [1 0 R 2 0 R] /Type /Page /Type /Page %%EOF"
    block = {
        "type": "document",
        "source": {
            "type": "base64",
            "media_type": "application/pdf",
            "data": base64.b64encode(pdf).decode(),
        },
    }
    body = {"messages": [{"role": "user", "content": [block]}]}
    assert tokens.estimate_input_tokens(body) == (
        2 * tokens.PDF_PAGE_TOKENS + tokens.TOKENS_PER_MESSAGE + tokens.REPLY_PRIMING_TOKENS
    )


def test_estimate_tolerates_odd_shapes_without_failing():
    odd = {
        "system": [{"type": "text", "text": "s"}, "raw"],
        "messages": [
            "not a message",
            {"role": "user", "content": None},
            {"role": "user", "content": [{"type": "mystery", "x": [1, 2]}, 7]},
        ],
    }
    assert tokens.estimate_input_tokens(odd) > 0


# A schema of property names and types (as most are), with a number no 64-bit integer
# holds (a client's JSON may: it is passed through exactly).
SCHEMA = {
    "type": "object",
    "properties": {f"field_{n}": {"type": "string"} for n in range(200)},
    "maximum": 10**30,
}


@pytest.mark.parametrize(
    ("estimator", "body"),
    [
        (
            tokens.estimate_input_tokens,
            {"output_format": {"type": "json_schema", "schema": SCHEMA}},
        ),
        (
            tokens.estimate_input_tokens,
            {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
        ),
        (tokens.estimate_input_tokens, {"tools": [{"name": "f", "input_schema": SCHEMA}]}),
        (
            tokens.estimate_chat_input_tokens,
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "r", "schema": SCHEMA},
                }
            },
        ),
        (
            tokens.estimate_chat_input_tokens,
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]},
        ),
        (
            tokens.estimate_responses_input_tokens,
            {"text": {"format": {"type": "json_schema", "name": "r", "schema": SCHEMA}}},
        ),
    ],
    ids=[
        "anthropic-output-format",
        "anthropic-output-config",
        "anthropic-tool",
        "chat-response-format",
        "chat-tool",
        "responses-text-format",
    ],
)
def test_estimates_count_schemas_whole_and_any_number_in_them(estimator, body):
    """Tools and structured outputs are read as JSON: their schema counts with its property
    names, and an integer wider than 64 bits is counted, not a failure."""
    messages = {"messages": [{"role": "user", "content": "hi"}]}
    if estimator is tokens.estimate_responses_input_tokens:
        messages = {"input": "hi"}
    alone = estimator(messages)
    assert estimator({**messages, **body}) - alone > count_text("field_0") * 200


def test_a_prompt_past_the_tokenizers_one_call_limits_is_estimated() -> None:
    # One text over 200,000 tokens, another over a million characters: the tokenizer
    # library refuses either in one call, which answered count_tokens with a 500.
    from switchyard.inference.tokens import estimate_input_tokens

    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "word " * 210_000},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "x" * 1_200_000}]},
        ],
    }
    assert estimate_input_tokens(body) > 210_000 + 1_200_000 // 8


@pytest.mark.parametrize("budget", [1024, 2000, 60_000])
async def test_an_estimate_counts_a_request_with_thinking(recorder, serve, budget):
    """count_tokens takes no max_tokens: a thinking budget is never checked against one."""
    harness = await serve(gpt(recorder))
    body = {**BODY, "thinking": {"type": "enabled", "budget_tokens": budget}}
    reply = await harness.handle(count(body))

    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response["input_tokens"] > 0


async def test_an_estimate_still_refuses_a_thinking_budget_below_the_floor(recorder, serve):
    harness = await serve(gpt(recorder))
    body = {**BODY, "thinking": {"type": "enabled", "budget_tokens": 100}}
    reply = await harness.handle(count(body))

    assert isinstance(reply, ChatFailed), reply
    assert "greater than or equal to 1024" in reply.data.error.message
