"""What reaches the provider, and what reaches the client, checked on the wire with a
recording upstream: a request in the deployment's own protocol arrives as the client sent
it (only `model` replaced, the allowed headers forwarded) and its reply or stream comes
back as the upstream sent it; a request in the other protocol arrives translated once,
faithfully, or is refused naming the parameter."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from switchyard.common.events import (
    ChatCompleted,
    ChatFailed,
    TokenUsage,
    decode_event,
    encode_event,
)
from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.common.topics import Topics
from switchyard.inference.providers import ProviderPool
from switchyard.inference.reliability import Backoff, BreakerPolicy, DeploymentStates
from switchyard.inference.testing import Harness, RecordingUpstream, Scripted, chat_request

from .conftest import anthropic_message

TOPICS = Topics("fidelity")
MESSAGES = "anthropic.messages"
CHAT = "openai.chat_completions"
SEPARATORS = "line\u2028sep\u2029para\u0085next\rcr"
CLAUDE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
}


def routing(
    recorder: RecordingUpstream, claude_options: dict[str, Any] | None = None, **options: Any
) -> RoutingTable:
    """`claude` on an Anthropic deployment and `gpt` on an OpenAI one, both answered by
    `recorder`, with deployment `options`, and `claude_options` for the first alone."""
    options = {"max_retries": 0, "timeout_s": 5, **options}
    claude = Deployment(
        name="anthropic",
        provider="anthropic",
        model="upstream-claude",
        base_url=recorder.root,
        api_key_env="FIDELITY_ANTHROPIC_KEY",
        **options,
        **(claude_options or {}),
    )
    gpt = Deployment(
        name="openai",
        provider="openai",
        model="upstream-gpt",
        base_url=f"{recorder.root}/v1",
        api_key_env="FIDELITY_OPENAI_KEY",
        **options,
    )
    return RoutingTable(
        models={
            "claude": ModelRoute(name="claude", deployments=[claude]),
            "gpt": ModelRoute(name="gpt", deployments=[gpt]),
        }
    )


@pytest.fixture
def breaker_threshold() -> int:
    """Failures that open a deployment's breaker: one, so a failing upstream is not
    retried (a test overrides it by parametrizing `breaker_threshold`)."""
    return 1


@pytest.fixture
async def harness(recorder, monkeypatch, breaker_threshold) -> AsyncIterator[Harness]:
    monkeypatch.setenv("FIDELITY_ANTHROPIC_KEY", "sk-ant-api03-SECRETSECRETSECRET")
    monkeypatch.setenv("FIDELITY_OPENAI_KEY", "sk-proj-OPENAISECRETKEY123")
    providers = ProviderPool()
    result = await Harness.start(
        TOPICS,
        routing=routing(recorder),
        providers=providers,
        backoff=Backoff(0.01, 0.02),
        deployments=DeploymentStates(
            BreakerPolicy(failure_threshold=breaker_threshold, cooldown_s=60)
        ),
    )
    yield result
    await result.stop()
    await providers.aclose()


# --------------------------------------------------------------------------- fixtures


def claude_code_request(model: str = "claude", stream: bool = True) -> dict[str, Any]:
    """A request shaped like Claude Code's: system blocks with cache_control, 20+ tools,
    thinking, metadata.user_id, a system message in the middle of the conversation, a
    tool result with an image, cache_control in every position; about 100 KB."""
    schema = {
        "type": "object",
        "properties": {
            f"arg_{n}": {"type": "string", "description": "An argument. " * 8} for n in range(12)
        },
        "required": ["arg_0"],
    }
    tools = [
        {
            "name": f"Tool{i}",
            "description": f"Tool number {i}. " + "Use it well. " * 60,
            "input_schema": schema,
        }
        for i in range(24)
    ]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    file_text = "def main():\n    return 42  # the answer\n" * 700
    return {
        "model": model,
        "max_tokens": 32000,
        "temperature": 1,
        "stream": stream,
        "system": [
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": {"type": "ephemeral"},
            },
            {
                "type": "text",
                "text": "Follow the instructions. " * 600,
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            },
        ],
        "tools": tools,
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 10000},
        "metadata": {"user_id": "user_0123_account_4567_session_89ab"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>Be careful.</system-reminder>"},
                    {
                        "type": "text",
                        "text": "Fix the bug in app.py",
                        "cache_control": {"type": "ephemeral"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should read it.", "signature": "EqQBsig"},
                    {"type": "text", "text": "Reading the file."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "Tool1",
                        "input": {"arg_0": "app.py"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": [
                            {"type": "text", "text": file_text},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "iVBORw0KGgo=",
                                },
                            },
                        ],
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            },
            {"role": "system", "content": "The user switched to plan mode."},
            {"role": "user", "content": f"Go on.{SEPARATORS}"},
        ],
    }


def anthropic_stream(model: str = "upstream-claude") -> list[tuple[str, dict[str, Any]]]:
    usage = {
        "input_tokens": 12,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 20000,
        "output_tokens": 1,
        "service_tier": "standard",
    }
    return [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": usage,
                    "a_future_field": {"kept": True},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Hmm."},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "EqQBxyz"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": SEPARATORS},
            },
        ),
        ("a_future_event", {"type": "a_future_event", "detail": "kept"}),
        # An event of another type with an `error` member is no failure.
        ("a_future_status", {"type": "a_future_status", "error": None, "state": "ok"}),
        ("a_future_check", {"type": "a_future_check", "error": {"count": 0}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
                "usage": {
                    **usage,
                    "output_tokens": 40,
                    "output_tokens_details": {"thinking_tokens": 10},
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def openai_chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any):
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-gpt",
        "system_fingerprint": "fp_1",
        "obfuscation": "x1",
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }
    return {**chunk, **extra}


OPENAI_USAGE = {
    "prompt_tokens": 120,
    "completion_tokens": 30,
    "total_tokens": 150,
    "prompt_tokens_details": {"cached_tokens": 100},
    "completion_tokens_details": {"reasoning_tokens": 7},
}
OPENAI_STREAM = [
    (None, openai_chunk({"role": "assistant", "content": ""})),
    (None, openai_chunk({"content": SEPARATORS})),
    (None, openai_chunk({}, "stop")),
    (None, openai_chunk(None, usage=OPENAI_USAGE)),
    (None, "[DONE]"),
]
OPENAI_COMPLETION = {
    "id": "chatcmpl-2",
    "object": "chat.completion",
    "created": 1,
    "model": "upstream-gpt",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": SEPARATORS,
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": OPENAI_USAGE,
    "service_tier": "default",
    "a_future_field": 1,
}


def without_model(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "model"}


# --------------------------------------------------------------------------- pass-through


async def test_claude_code_request_reaches_an_anthropic_upstream_as_sent(harness, recorder) -> None:
    recorder.script(Scripted(events=anthropic_stream()))
    body = claude_code_request()
    assert len(orjson.dumps(body)) > 90_000

    request = chat_request(
        model="claude", api=MESSAGES, body=copy.deepcopy(body), stream=True, headers=CLAUDE_HEADERS
    )
    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted)
    sent = recorder.last
    assert sent.path == "/v1/messages"
    assert without_model(sent.body) == without_model(body)  # JSON-equal, model aside
    assert sent.body["model"] == "upstream-claude"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"] == CLAUDE_HEADERS["anthropic-beta"]
    key = "sk-ant-api03-SECRETSECRETSECRET"  # the deployment's own, never the client's
    assert key in (sent.headers.get("x-api-key"), sent.headers.get("authorization", "")[7:])
    assert reply.data.upstream_api == "anthropic.messages"


async def test_anthropic_stream_events_are_relayed_exactly_unknown_ones_included(
    harness, recorder
) -> None:
    recorder.script(Scripted(events=anthropic_stream()))
    request = chat_request(model="claude", api=MESSAGES, stream=True)

    reply = await harness.handle(request)

    relayed = [(event.event, event.data) for event in harness.stream_of(request.request_id)]
    expected = anthropic_stream(model="claude")  # only the model name is the public one
    assert relayed == expected
    assert relayed[7][1]["delta"]["text"] == SEPARATORS  # U+2028, U+2029, U+0085, CR survive
    message = reply.data.response
    assert message["content"][0] == {"type": "thinking", "thinking": "Hmm.", "signature": "EqQBxyz"}
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    # Cache tokens are part of the input, counted once although both events report them.
    assert reply.data.usage == TokenUsage(
        input_tokens=23012,
        output_tokens=40,
        cache_read_input_tokens=20000,
        cache_creation_input_tokens=3000,
        reasoning_tokens=10,
    )


async def test_anthropic_json_reply_is_relayed_as_sent_with_the_public_model(
    harness, recorder
) -> None:
    message = {
        "id": "msg_2",
        "type": "message",
        "role": "assistant",
        "model": "upstream-claude",
        "content": [
            {"type": "thinking", "thinking": "t", "signature": "sig"},
            {"type": "text", "text": SEPARATORS, "citations": None},
        ],
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
        "usage": {
            "input_tokens": 5,
            "cache_creation_input_tokens": 7,
            "cache_read_input_tokens": 11,
            "output_tokens": 3,
        },
        "container": None,
        "a_future_field": [1],
    }
    recorder.script(Scripted(json=message))

    reply = await harness.handle(chat_request(model="claude", api=MESSAGES))

    assert reply.data.response == {**message, "model": "claude"}
    assert reply.data.usage == TokenUsage(
        input_tokens=23,
        output_tokens=3,
        cache_read_input_tokens=11,
        cache_creation_input_tokens=7,
    )


@pytest.mark.parametrize(
    "document",
    [
        {"type": "url", "url": "https://example.com/paper.pdf"},
        {"type": "text", "media_type": "text/plain", "data": "Plain text."},
        {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"},
    ],
)
async def test_documents_of_every_source_reach_an_anthropic_upstream(
    harness, recorder, document
) -> None:
    recorder.script(Scripted(json={"type": "message", "content": [], "usage": {}}))
    body = {
        "model": "claude",
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": document,
                        "title": "Doc",
                        "citations": {"enabled": True},
                        "cache_control": {"type": "ephemeral"},
                    },
                    {"type": "text", "text": "Summarise."},
                ],
            }
        ],
    }

    reply = await harness.handle(chat_request(model="claude", api=MESSAGES, body=body))

    assert isinstance(reply, ChatCompleted)
    assert recorder.last.body["messages"] == body["messages"]


async def test_openai_request_reaches_an_openai_upstream_as_sent_with_stream_options_merged(
    harness, recorder
) -> None:
    recorder.script(Scripted(events=OPENAI_STREAM))
    body = {
        "model": "gpt",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 7,
        "a_vendor_extension": {"x": 1},
        "stream": True,
        "stream_options": {"include_obfuscation": False},
    }

    request = chat_request(
        model="gpt",
        body=copy.deepcopy(body),
        stream=True,
        headers={"openai-beta": "assistants=v2", "anthropic-beta": "x"},
    )
    await harness.handle(request)

    sent = recorder.last
    assert sent.path == "/v1/chat/completions"
    assert without_model(sent.body) == {
        **without_model(body),
        "stream_options": {"include_obfuscation": False, "include_usage": True},
    }
    assert sent.headers["openai-beta"] == "assistants=v2"
    assert "anthropic-beta" not in sent.headers  # never another vendor's headers
    assert sent.headers["authorization"] == "Bearer sk-proj-OPENAISECRETKEY123"


@pytest.mark.parametrize("include_usage", [True, False])
async def test_openai_stream_is_relayed_as_sent_and_usage_only_when_asked(
    harness, recorder, include_usage
) -> None:
    recorder.script(Scripted(events=OPENAI_STREAM))
    request = chat_request(model="gpt", stream=True, include_usage=include_usage)

    reply = await harness.handle(request)

    relayed = [event.data for event in harness.stream_of(request.request_id)]
    expected = [{**chunk, "model": "gpt"} for _, chunk in OPENAI_STREAM[:-1]]
    if not include_usage:
        expected = [{k: v for k, v in c.items() if k != "usage"} for c in expected[:-1]]
    assert relayed == expected
    assert relayed[1]["choices"][0]["delta"]["content"] == SEPARATORS
    assert reply.data.usage == TokenUsage(
        input_tokens=120, output_tokens=30, cache_read_input_tokens=100, reasoning_tokens=7
    )


async def test_an_openai_stream_that_ends_with_its_usage_chunk_but_no_done_is_whole(
    harness, recorder
) -> None:
    # Some OpenAI-compatible servers end the stream after the usage chunk (OpenAI's last
    # before [DONE]), without [DONE] and without a finish_reason.
    recorder.script(Scripted(events=[OPENAI_STREAM[0], OPENAI_STREAM[1], OPENAI_STREAM[3]]))
    request = chat_request(model="gpt", stream=True, include_usage=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.usage.input_tokens == 120 and reply.data.usage.output_tokens == 30


async def test_a_whole_openai_stream_without_its_usage_is_billed_by_estimate(
    harness, recorder
) -> None:
    # Every choice finished, then the stream ended: the answer is whole, its usage chunk
    # is missing. The tokens are estimated, as for a stream that failed, never zero.
    recorder.script(Scripted(events=OPENAI_STREAM[:3]))
    request = chat_request(model="gpt", stream=True, include_usage=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    usage = (await harness.usage_of(request.request_id)).data.usage
    assert reply.data.usage == usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0


async def test_an_openai_stream_that_ends_before_its_answer_did_fails_after_what_it_sent(
    harness, recorder
) -> None:
    # Content, then the end of the body: no finish_reason, no usage chunk, no [DONE].
    recorder.script(Scripted(events=OPENAI_STREAM[:2]))
    request = chat_request(model="gpt", stream=True, include_usage=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatFailed), reply
    assert (reply.data.error.status, reply.data.error.code) == (502, "upstream_unreachable")
    relayed = [event.data for event in harness.stream_of(request.request_id)]
    assert [chunk["choices"][0]["delta"] for chunk in relayed] == [
        {"role": "assistant", "content": ""},
        {"content": SEPARATORS},
    ]
    assert len(recorder.requests) == 1  # part of the answer is out: not run again


async def test_openai_json_reply_is_relayed_as_sent_with_the_public_model(
    harness, recorder
) -> None:
    recorder.script(Scripted(json=OPENAI_COMPLETION))

    reply = await harness.handle(chat_request(model="gpt"))

    assert reply.data.response == {**OPENAI_COMPLETION, "model": "gpt"}


# --------------------------------------------------------------------------- translated


async def test_claude_code_request_is_translated_once_for_an_openai_upstream(
    harness, recorder
) -> None:
    recorder.script(Scripted(events=OPENAI_STREAM))
    body = claude_code_request(model="gpt")

    request = chat_request(
        model="gpt", api=MESSAGES, body=body, stream=True, headers=CLAUDE_HEADERS
    )
    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    sent = recorder.last
    assert sent.path == "/v1/chat/completions"
    assert "anthropic-beta" not in sent.headers and "anthropic-version" not in sent.headers
    upstream = sent.body
    assert upstream["model"] == "upstream-gpt"
    assert upstream["stream"] is True and upstream["stream_options"] == {"include_usage": True}
    assert upstream["max_completion_tokens"] == 32000
    assert upstream["reasoning_effort"] == "medium"  # thinking budget 10000
    assert upstream["user"] == "user_0123_account_4567_session_89ab"
    assert len(upstream["tools"]) == 24
    assert upstream["tools"][3]["function"]["parameters"] == body["tools"][3]["input_schema"]
    roles = [message["role"] for message in upstream["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user", "system", "user"]
    system = upstream["messages"][0]["content"]
    assert system.startswith("You are Claude Code") and "Follow the instructions." in system
    assistant = upstream["messages"][2]
    assert assistant["content"] == "Reading the file."  # the signed thinking stays behind
    assert assistant["tool_calls"][0]["function"] == {
        "name": "Tool1",
        "arguments": '{"arg_0":"app.py"}',
    }
    tool = upstream["messages"][3]
    assert tool["tool_call_id"] == "toolu_01" and tool["content"].startswith("def main()")
    # The tool's image follows in a user message: Chat Completions tool messages are text.
    assert upstream["messages"][4]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    ]
    assert upstream["messages"][5] == {
        "role": "system",
        "content": "The user switched to plan mode.",
    }
    assert upstream["messages"][6]["content"] == f"Go on.{SEPARATORS}"
    # And the client gets Anthropic's events, translated once.
    events = harness.stream_of(request.request_id)
    assert [event.event for event in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[2].data["delta"]["text"] == SEPARATORS
    assert events[4].data["usage"] == {
        "input_tokens": 20,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 100,
        "output_tokens": 30,
        "output_tokens_details": {"thinking_tokens": 7},
    }


async def test_openai_request_is_translated_once_for_an_anthropic_upstream(
    harness, recorder
) -> None:
    recorder.script(Scripted(events=anthropic_stream()))
    body = {
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Rules."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "developer", "content": "Now in French."},
            {"role": "user", "content": [{"type": "text", "text": "again"}]},
        ],
        "max_completion_tokens": 50,
        "stop": "END",
        "user": "u-1",
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    request = chat_request(model="claude", body=body, stream=True, headers={"openai-beta": "x"})
    reply = await harness.handle(request)

    sent = recorder.last
    assert sent.path == "/v1/messages" and "openai-beta" not in sent.headers
    assert sent.body == {
        "model": "upstream-claude",
        # The later developer message too: a `role: "system"` message there is refused.
        "system": [
            {"type": "text", "text": "Rules."},
            {"type": "text", "text": "Now in French."},
        ],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
        "max_tokens": 50,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "stream": True,
    }
    chunks = [event.data for event in harness.stream_of(request.request_id)]
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == SEPARATORS
    )
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 23012,
        "completion_tokens": 40,
        "total_tokens": 23052,
        "prompt_tokens_details": {
            "cached_tokens": 20000,
            "cache_write_tokens": 3000,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": 10,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    assert reply.data.usage.cache_creation_input_tokens == 3000


@pytest.mark.parametrize(
    ("model", "api", "extra", "param"),
    [
        ("claude", CHAT, {"logprobs": True}, "logprobs"),
        ("claude", CHAT, {"top_logprobs": 3}, "top_logprobs"),
        ("claude", CHAT, {"n": 2}, "n"),
        ("gpt", MESSAGES, {"top_k": 5}, "top_k"),
        ("gpt", MESSAGES, {"context_management": {"edits": []}}, "context_management"),
        (
            "gpt",
            MESSAGES,
            {"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}},
            "context_management",
        ),
        (
            "gpt",
            MESSAGES,
            {
                "context_management": {
                    "edits": [
                        {"type": "clear_thinking_20251015", "keep": "all"},
                        {"type": "clear_tool_uses_20250919"},
                    ]
                }
            },
            "context_management",
        ),
        *(
            ("gpt", MESSAGES, {"context_management": {"edits": [edit]}}, "context_management")
            for edit in (
                {"type": "clear_thinking_bogus"},
                {
                    "type": "clear_thinking_20251015",
                    "keep": {"type": "thinking_turns", "value": -5},
                },
                {
                    "type": "clear_thinking_20251015",
                    "keep": {"type": "thinking_turns", "value": True},
                },
                {"type": "clear_thinking_20251015", "keep": "some"},
                {"type": "clear_thinking_20251015", "keep": "all", "extra": 1},
            )
        ),
        (
            "gpt",
            MESSAGES,
            {"mcp_servers": [{"type": "url", "url": "https://mcp.example/sse", "name": "x"}]},
            "mcp_servers",
        ),
        ("gpt", MESSAGES, {"metadata": {"tenant": "x"}}, "metadata.tenant"),
    ],
)
async def test_parameters_the_other_protocol_cannot_express_are_refused_by_name(
    harness, recorder, model, api, extra, param
) -> None:
    request = chat_request(model=model, api=api)
    request = request.model_copy(
        update={"data": request.data.model_copy(update={"body": {**request.data.body, **extra}})}
    )

    reply = await harness.handle(request)

    assert isinstance(reply, ChatFailed)
    error = reply.data.error
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", param)
    assert param.split(".")[0] in error.message
    assert recorder.requests == []  # refused before any upstream call


@pytest.mark.parametrize(
    "edits",
    [
        [{"type": "clear_thinking_20251015", "keep": "all"}],
        [{"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 1}}],
        [{"type": "clear_thinking_20251015"}],
    ],
)
async def test_clearing_thinking_reaches_an_openai_upstream_as_nothing(
    harness, recorder, edits
) -> None:
    """Claude Code sends `context_management` clearing thinking whenever thinking is on;
    earlier thinking never reaches an OpenAI-protocol upstream, so the edit changes
    nothing sent and is accepted."""
    recorder.script(Scripted(json=OPENAI_COMPLETION))
    request = chat_request(model="gpt", api=MESSAGES)
    body = {
        **request.data.body,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "max_tokens": 4096,
        "context_management": {"edits": edits},
    }
    request = request.model_copy(update={"data": request.data.model_copy(update={"body": body})})

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    sent = recorder.last.body
    assert "context_management" not in sent
    assert sent["reasoning_effort"] == "low"


async def test_url_documents_cannot_reach_an_openai_upstream_and_are_refused_by_name(
    harness, recorder
) -> None:
    body = {
        "model": "gpt",
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "url", "url": "https://x/p.pdf"}}
                ],
            }
        ],
    }
    reply = await harness.handle(chat_request(model="gpt", api=MESSAGES, body=body))
    assert reply.data.error.param == "messages.0.content.0.source.type"
    assert recorder.requests == []


async def test_cache_control_in_every_position_is_accepted_for_an_openai_upstream(
    harness, recorder
) -> None:
    recorder.script(Scripted(json=OPENAI_COMPLETION))
    marker = {"type": "ephemeral"}
    body = {
        "model": "gpt",
        "max_tokens": 10,
        "cache_control": marker,
        "system": [{"type": "text", "text": "s", "cache_control": marker}],
        "tools": [{"name": "t", "input_schema": {"type": "object"}, "cache_control": marker}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "x", "cache_control": marker},
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://x/i.png"},
                        "cache_control": marker,
                    },
                ],
            }
        ],
    }

    reply = await harness.handle(chat_request(model="gpt", api=MESSAGES, body=body))

    assert isinstance(reply, ChatCompleted)
    assert b"cache_control" not in recorder.last.raw  # OpenAI caches prefixes by itself
    assert reply.data.response["content"] == [{"type": "text", "text": SEPARATORS}]


# --------------------------------------------------------------------------- errors


async def test_upstream_error_status_type_and_param_reach_a_client_of_the_same_api(
    harness, recorder
) -> None:
    recorder.script(
        Scripted(
            status=400,
            json={
                "error": {
                    "message": "Invalid value for 'temperature'.",
                    "type": "invalid_request_error",
                    "param": "temperature",
                    "code": "invalid_value",
                }
            },
        )
    )

    reply = await harness.handle(chat_request(model="gpt"))

    error = reply.data.error
    assert (error.status, error.type, error.param, error.code) == (
        400,
        "invalid_request_error",
        "temperature",
        "invalid_value",
    )


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_an_upstream_error_without_a_code_reaches_the_client_without_one(
    harness, recorder, status
) -> None:
    # OpenAI's own server errors carry `"code": null`; a code Switchyard made up in its
    # place would read as the provider's word.
    error = {"message": "The server had an error.", "type": "server_error", "param": None}
    recorder.script(Scripted(status=status, json={"error": {**error, "code": None}}))

    reply = await harness.handle(chat_request(model="gpt"))

    assert isinstance(reply, ChatFailed)
    assert (reply.data.error.status, reply.data.error.code) == (status, None)
    assert reply.data.error.message == "The server had an error."


# The breaker stays closed after the first overloaded answer, so the second request
# reaches the upstream too.
@pytest.mark.parametrize("breaker_threshold", [5])
async def test_overloaded_anthropic_upstream_is_529_for_anthropic_and_503_for_openai_clients(
    harness, recorder
) -> None:
    overloaded = Scripted(
        status=529,
        json={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    recorder.script(overloaded)
    anthropic_reply = await harness.handle(chat_request(model="claude", api=MESSAGES))
    openai_reply = await harness.handle(chat_request(model="claude"))

    assert (anthropic_reply.data.error.status, anthropic_reply.data.error.type) == (
        529,
        "overloaded_error",
    )
    assert (openai_reply.data.error.status, openai_reply.data.error.type) == (
        503,
        "service_unavailable",
    )


async def test_an_error_inside_a_stream_keeps_its_type_and_status(harness, recorder) -> None:
    events = anthropic_stream()[:8] + [
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Busy"}})
    ]
    recorder.script(Scripted(events=events))
    request = chat_request(model="claude", api=MESSAGES, stream=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatFailed)
    assert (reply.data.error.status, reply.data.error.type) == (529, "overloaded_error")
    assert reply.data.error.message == "Busy"
    assert len(harness.stream_of(request.request_id)) == 8  # what arrived was relayed
    assert all(event.event != "error" for event in harness.stream_of(request.request_id))


async def test_rate_limited_openai_upstream_is_rate_limit_error_for_an_anthropic_client(
    harness, recorder
) -> None:
    recorder.script(
        Scripted(
            status=429,
            headers={"retry-after": "7"},
            json={
                "error": {"message": "Slow down", "type": "requests", "code": "rate_limit_exceeded"}
            },
        )
    )

    reply = await harness.handle(chat_request(model="gpt", api=MESSAGES))

    error = reply.data.error
    assert (error.status, error.type, error.retry_after_s) == (429, "rate_limit_error", 7)


async def test_credentials_in_an_upstream_error_message_are_redacted(harness, recorder) -> None:
    echo = (
        "Bad request. Headers were: authorization: Bearer sk-proj-OPENAISECRETKEY123, "
        "x-api-key=abcd1234efgh, body api_key: 'qwerty987654'"
    )
    recorder.script(Scripted(status=400, json={"error": {"message": echo, "type": "x"}}))

    reply = await harness.handle(chat_request(model="gpt"))

    message = reply.data.error.message
    assert message.startswith("Bad request.")
    for secret in ("OPENAISECRETKEY123", "abcd1234efgh", "qwerty987654"):
        assert secret not in message
    assert "[redacted]" in message


async def test_upstream_redirects_are_never_followed(harness, recorder) -> None:
    recorder.script(
        Scripted(status=307, headers={"location": f"{recorder.root}/elsewhere"}, json={})
    )

    reply = await harness.handle(chat_request(model="gpt"))

    assert isinstance(reply, ChatFailed)
    assert (reply.data.error.status, reply.data.error.code) == (502, "upstream_redirect")
    assert [r.path for r in recorder.requests] == ["/v1/chat/completions"]  # not /elsewhere


async def test_rate_limits_never_open_the_circuit_breaker(harness, recorder) -> None:
    # The harness's breaker opens after a single failure; three 429s must not open it.
    limited = Scripted(status=429, json={"error": {"message": "slow", "type": "requests"}})
    recorder.script(limited, limited, limited, Scripted(json=OPENAI_COMPLETION))

    for _ in range(3):
        assert (await harness.handle(chat_request(model="gpt"))).data.error.status == 429
    reply = await harness.handle(chat_request(model="gpt"))

    assert isinstance(reply, ChatCompleted)
    assert len(recorder.requests) == 4


async def test_upstream_5xx_opens_the_breaker_and_its_503_carries_retry_after(
    harness, recorder
) -> None:
    recorder.script(
        Scripted(status=500, json={"error": {"message": "boom", "type": "server_error"}})
    )
    assert (await harness.handle(chat_request(model="gpt"))).data.error.status == 500

    reply = await harness.handle(chat_request(model="gpt"))

    error = reply.data.error
    assert (error.status, error.code) == (503, "upstream_unavailable")
    assert 1 <= error.retry_after_s <= 60
    assert len(recorder.requests) == 1


async def test_the_handler_keeps_no_reply_waiting_on_an_upstream_that_never_ends(
    harness, recorder
) -> None:
    # A stream whose [DONE] never comes still ends when the upstream closes it.
    recorder.script(Scripted(events=OPENAI_STREAM[:-1]))
    request = chat_request(model="gpt", stream=True)
    reply = await asyncio.wait_for(harness.handle(request), 5)
    assert isinstance(reply, ChatCompleted)


@pytest.mark.parametrize(
    "extra",
    [
        {"top_k": 5},
        {"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}},
        {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
        {"metadata": {"user_id": "u-1"}},
        {"service_tier": "auto", "container": None, "a_future_parameter": {"x": [1]}},
    ],
)
async def test_anthropic_only_parameters_reach_an_anthropic_upstream_unchanged(
    harness, recorder, extra
) -> None:
    recorder.script(Scripted(json={"type": "message", "content": [], "usage": {}}))
    request = chat_request(model="claude", api=MESSAGES)
    body = {**request.data.body, **extra}
    request = request.model_copy(update={"data": request.data.model_copy(update={"body": body})})

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted)
    assert without_model(recorder.last.body) == without_model(body)


BIG = 123456789012345678901234567890


def _tool_use_message(model: str) -> dict[str, Any]:
    return {
        "id": "msg_big",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"account": BIG}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 9},
        "a_future_field": -(2**70),
    }


async def test_integers_beyond_64_bits_in_a_reply_keep_their_digits(harness, recorder) -> None:
    """A reply is the upstream's to write: a model's tool input holding an integer orjson
    cannot carry comes back with its digits, relayed, translated, and through the event."""
    recorder.script(Scripted(json=_tool_use_message("upstream-claude")))
    relayed = await harness.handle(chat_request(model="claude", api=MESSAGES))
    recorder.script(Scripted(json=_tool_use_message("upstream-claude")))
    translated = await harness.handle(chat_request(model="claude", api=CHAT))

    assert relayed.data.response == _tool_use_message("claude")
    decoded = decode_event(encode_event(relayed))
    assert decoded.data.response["content"][0]["input"]["account"] == BIG
    call = translated.data.response["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["arguments"] == f'{{"account":{BIG}}}'


async def test_integers_beyond_64_bits_in_openai_arguments_keep_their_digits(
    harness, recorder
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": f'{{"account": {BIG}}}'},
    }
    [choice] = OPENAI_COMPLETION["choices"]
    message = {**choice["message"], "content": None, "tool_calls": [call]}
    completion = {
        **OPENAI_COMPLETION,
        "choices": [{**choice, "message": message, "finish_reason": "tool_calls"}],
    }
    recorder.script(Scripted(json=completion))

    reply = await harness.handle(chat_request(model="gpt", api=MESSAGES))

    assert reply.data.response["content"][0]["input"] == {"account": BIG}


async def test_integers_beyond_64_bits_in_a_stream_keep_their_digits(harness, recorder) -> None:
    start = {**_tool_use_message("upstream-claude"), "content": [], "stop_reason": None}
    events = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "lookup",
                    "input": {},
                },
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": f'{{"account": {BIG}}}'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 9},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    recorder.script(Scripted(events=events))
    request = chat_request(model="claude", api=MESSAGES, stream=True)

    reply = await harness.handle(request)

    relayed = harness.stream_of(request.request_id)
    assert relayed[0].data["message"]["a_future_field"] == -(2**70)
    assert reply.data.response["content"][0]["input"] == {"account": BIG}


@pytest.mark.parametrize(
    ("default_max_tokens", "sent"), [(64000, 64000), (None, 4096)], ids=["set", "unset"]
)
@pytest.mark.parametrize("api", ["openai.chat_completions", "openai.responses"])
async def test_a_request_without_an_output_limit_gets_the_deployments_default(
    recorder, monkeypatch, default_max_tokens, sent, api
) -> None:
    """The Messages API requires `max_tokens`, OpenAI's do not: a translated request that
    set none gets the deployment's `default_max_tokens` (the model's own output limit),
    else the service's default; one that set a limit keeps it."""
    monkeypatch.setenv("FIDELITY_ANTHROPIC_KEY", "sk-ant-api03-SECRETSECRETSECRET")
    table = routing(recorder, claude_options={"default_max_tokens": default_max_tokens})
    providers = ProviderPool()
    harness = await Harness.start(TOPICS, routing=table, providers=providers)
    try:
        body: dict[str, Any] = {"model": "claude"}
        if api == "openai.responses":
            body["input"] = "hi"
            limited = {**body, "max_output_tokens": 20}
        else:
            body["messages"] = [{"role": "user", "content": "hi"}]
            limited = {**body, "max_completion_tokens": 20}
        for request_body, expected in ((body, sent), (limited, 20)):
            recorder.script(Scripted(json=anthropic_message(model="upstream-claude")))
            reply = await harness.handle(chat_request(model="claude", api=api, body=request_body))
            assert isinstance(reply, ChatCompleted), reply
            assert recorder.last.body["max_tokens"] == expected
    finally:
        await harness.stop()
        await providers.aclose()


@pytest.mark.parametrize("placed", [True, False], ids=["set", "unset"])
@pytest.mark.parametrize(
    "api", ["openai.chat_completions", "openai.responses", "openai.responses.input_tokens"]
)
async def test_a_later_system_message_is_sent_as_the_deployment_says(
    recorder, monkeypatch, placed, api
) -> None:
    """A system message after the conversation started goes to the top-level `system`,
    which every model takes, unless the deployment sets `mid_conversation_system_messages`
    (its model takes `role: "system"` messages): then it stays one where Anthropic's
    placement rules allow, as here, last after a user message. A count of a Responses
    request's tokens counts what the response would send."""
    monkeypatch.setenv("FIDELITY_ANTHROPIC_KEY", "sk-ant-api03-SECRETSECRETSECRET")
    options = {"mid_conversation_system_messages": True} if placed else None
    table = routing(recorder, claude_options=options)
    providers = ProviderPool()
    harness = await Harness.start(TOPICS, routing=table, providers=providers)
    try:
        body: dict[str, Any] = {"model": "claude"}
        later = {"role": "developer", "content": "Be brief."}
        if api == "openai.chat_completions":
            body["messages"] = [{"role": "user", "content": "hi"}, later]
        else:
            body["input"] = [{"role": "user", "content": "hi"}, later]
        if api == "openai.responses.input_tokens":
            recorder.script(Scripted(json={"input_tokens": 9}))
        else:
            recorder.script(Scripted(json=anthropic_message(model="upstream-claude")))
        reply = await harness.handle(chat_request(model="claude", api=api, body=body))
        assert isinstance(reply, ChatCompleted), reply
        sent = recorder.last.body
        if placed:
            assert "system" not in sent
            assert sent["messages"][-1] == {"role": "system", "content": "Be brief."}
        else:
            assert sent["system"] == "Be brief."
            assert [message["role"] for message in sent["messages"]] == ["user"]
    finally:
        await harness.stop()
        await providers.aclose()


@pytest.mark.parametrize("thinking_type", ["adaptive", "enabled", None])
@pytest.mark.parametrize("api", ["openai.chat_completions", "openai.responses"])
async def test_a_reasoning_effort_turns_thinking_on_as_the_deployment_says(
    recorder, monkeypatch, thinking_type, api
) -> None:
    """Claude Opus 4.7 and later refuse `thinking.type: "enabled"`: a deployment setting
    `thinking_type: adaptive` gets `{"type": "adaptive"}` and the effort as
    `output_config.effort`, beside a structured output's format, its `max_tokens` the
    client's; unset, the effort is a `budget_tokens`, as before."""
    monkeypatch.setenv("FIDELITY_ANTHROPIC_KEY", "sk-ant-api03-SECRETSECRETSECRET")
    options = {"thinking_type": thinking_type} if thinking_type else None
    table = routing(recorder, claude_options=options)
    providers = ProviderPool()
    harness = await Harness.start(TOPICS, routing=table, providers=providers)
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    try:
        body: dict[str, Any] = {"model": "claude"}
        if api == "openai.chat_completions":
            body |= {
                "messages": [{"role": "user", "content": "hi"}],
                "reasoning_effort": "high",
                "max_completion_tokens": 20_000,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "r", "schema": schema, "strict": True},
                },
            }
        else:
            body |= {
                "input": "hi",
                "reasoning": {"effort": "high"},
                "max_output_tokens": 20_000,
                "text": {"format": {"type": "json_schema", "name": "r", "schema": schema}},
            }
        recorder.script(Scripted(json=anthropic_message(model="upstream-claude")))
        reply = await harness.handle(chat_request(model="claude", api=api, body=body))
        assert isinstance(reply, ChatCompleted), reply
        sent = recorder.last.body
        assert sent["max_tokens"] == 20_000
        assert sent["output_config"]["format"]["type"] == "json_schema"
        if thinking_type == "adaptive":
            assert sent["thinking"] == {"type": "adaptive"}
            assert sent["output_config"]["effort"] == "high"
        else:
            assert sent["thinking"] == {"type": "enabled", "budget_tokens": 16384}
            assert "effort" not in sent["output_config"]
    finally:
        await harness.stop()
        await providers.aclose()


def test_thinking_type_belongs_to_anthropic_protocol_deployments() -> None:
    with pytest.raises(ValueError, match="'thinking_type' applies only to"):
        Deployment(name="g", provider="openai", model="m", thinking_type="adaptive")
    with pytest.raises(ValueError):
        Deployment(name="c", provider="anthropic", model="m", thinking_type="disabled")
    for provider, extra in (
        ("anthropic", {}),
        ("bedrock", {"region": "us-east-1"}),
        ("vertex", {"region": "us-east5", "project_id": "p"}),
    ):
        deployment = Deployment(
            name="c", provider=provider, model="m", thinking_type="adaptive", **extra
        )
        assert deployment.thinking_type == "adaptive"


def test_mid_conversation_system_messages_belongs_to_anthropics_own_api() -> None:
    """Only Anthropic's API takes system messages inside `messages`: every other kind,
    Bedrock and Vertex AI among them, refuses the setting (even `false`)."""
    for provider, extra in (
        ("openai", {"api_key_env": "K"}),
        ("bedrock", {"region": "us-east-1"}),
        ("vertex", {"region": "us-east5", "project_id": "p"}),
    ):
        for value in (True, False):
            with pytest.raises(ValueError, match="'mid_conversation_system_messages' applies"):
                Deployment(
                    name="d",
                    provider=provider,
                    model="m",
                    mid_conversation_system_messages=value,
                    **extra,
                )
        assert Deployment(name="d", provider=provider, model="m", **extra)
    assert (
        Deployment(name="c", provider="anthropic", model="claude").mid_conversation_system_messages
        is False
    )
    assert Deployment(
        name="c", provider="anthropic", model="claude", mid_conversation_system_messages=True
    ).mid_conversation_system_messages


def test_default_max_tokens_belongs_to_anthropic_protocol_deployments() -> None:
    with pytest.raises(ValueError, match="'default_max_tokens' applies only to"):
        Deployment(
            name="gpt", provider="openai", model="gpt-4o", api_key_env="K", default_max_tokens=8
        )
    for provider, extra in (
        ("anthropic", {}),
        ("bedrock", {"region": "us-east-1"}),
        ("vertex", {"region": "us-east5", "project_id": "p"}),
    ):
        assert (
            Deployment(
                name="c", provider=provider, model="claude", default_max_tokens=8, **extra
            ).default_max_tokens
            == 8
        )
