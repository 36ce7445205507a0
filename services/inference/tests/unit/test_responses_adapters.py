"""OpenAI's Responses API on every kind of deployment, checked on the wire with a
recording upstream: passed through to a deployment offering the Responses API (only
`model` replaced, the previous conversation's items before `input`, Switchyard's own
parameters not sent; the reply and every stream event relayed with Switchyard's response
id), and translated once to Chat Completions and to Anthropic's Messages, both ways,
with the complete typed event stream the `openai` SDK's stream reader accepts."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai._models import construct_type
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from switchyard.common.events import ChatCompleted, ChatFailed, ClientAPI, TokenUsage, new_id
from switchyard.common.responses import (
    input_items,
    response_id,
    switchyard_item_id,
    upstream_item_id,
)
from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.common.topics import Topics
from switchyard.inference import translate_responses
from switchyard.inference.providers import ProviderPool
from switchyard.inference.reliability import Backoff, BreakerPolicy, DeploymentStates
from switchyard.inference.testing import Harness, RecordingUpstream, Scripted, chat_request
from switchyard.inference.translate import TranslationError, chat_request_to_messages
from switchyard.inference.translate_responses import (
    responses_request_to_chat,
    responses_request_to_messages,
)

from .conftest import anthropic_message

TOPICS = Topics("responses")
RESPONSES = ClientAPI.OPENAI_RESPONSES
OPENAI_KEY = "sk-proj-RESPONSESSECRETKEY1"

# The conversation a previous_response_id named, as history stores it.
PREVIOUS_ITEMS = [
    {
        "id": "msg_" + "e" * 32 + "_0",  # Switchyard's: the request's id, the position
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": "What is the weather in Paris?"}],
    },
    {
        "id": "rs_sy" + "0" * 32,  # Switchyard's, from an earlier Anthropic turn
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "Look it up."}],
        "encrypted_content": "SIGNATURE-1",
    },
    {
        "id": "fc_" + "c" * 32,  # Switchyard's, of the same translated reply
        "type": "function_call",
        "status": "completed",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"location": "Paris"}',
    },
]


# The same conversation had an OpenAI model reasoned in it (the reasoning and the call
# after it with ids of OpenAI's own).
OPENAI_PREVIOUS_ITEMS = [
    PREVIOUS_ITEMS[0],
    {**PREVIOUS_ITEMS[1], "id": "rs_" + "ab" * 25, "encrypted_content": "gAAAA-OPENAI"},
    {**PREVIOUS_ITEMS[2], "id": "fc_" + "cd" * 25},
]


def routing(recorder: RecordingUpstream) -> RoutingTable:
    common = {"max_retries": 0, "timeout_s": 5}
    return RoutingTable(
        models={
            "gpt-resp": ModelRoute(
                name="gpt-resp",
                deployments=[
                    Deployment(
                        name="openai",
                        provider="openai",
                        model="upstream-gpt",
                        base_url=f"{recorder.root}/v1",
                        api_key_env="RESPONSES_OPENAI_KEY",
                        responses_api=True,
                        **common,
                    )
                ],
            ),
            "gpt-chat": ModelRoute(
                name="gpt-chat",
                deployments=[
                    Deployment(
                        name="vllm",
                        provider="openai",
                        model="upstream-llama",
                        base_url=f"{recorder.root}/v1",
                        **common,
                    )
                ],
            ),
            "claude": ModelRoute(
                name="claude",
                deployments=[
                    Deployment(
                        name="anthropic",
                        provider="anthropic",
                        model="upstream-claude",
                        base_url=recorder.root,
                        **common,
                    )
                ],
            ),
        }
    )


@pytest.fixture
async def harness(recorder, monkeypatch) -> AsyncIterator[Harness]:
    monkeypatch.setenv("RESPONSES_OPENAI_KEY", OPENAI_KEY)
    providers = ProviderPool()
    result = await Harness.start(
        TOPICS,
        routing=routing(recorder),
        providers=providers,
        backoff=Backoff(0.01, 0.02),
        deployments=DeploymentStates(BreakerPolicy(failure_threshold=5, cooldown_s=60)),
    )
    yield result
    await result.stop()
    await providers.aclose()


def responses_request(model: str, body: dict[str, Any], *, stream: bool = False, **options):
    request = chat_request(
        model, api=RESPONSES, body={"model": model, **body}, stream=stream, **options
    )
    if options.get("previous_items") is None and "previous_items" in body:
        raise AssertionError("pass previous_items as an option")
    return request


def with_previous(request, items):
    return request.model_copy(
        update={"data": request.data.model_copy(update={"previous_items": copy.deepcopy(items)})}
    )


def sdk_final_response(events) -> Response:
    """Feed the stream to the `openai` SDK's own stream reader (it checks the order of
    the events and the identity of the items) and return the response it assembles."""
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=event.data))
    assert state._completed_response is not None, "no response.completed in the stream"
    return state._completed_response


# An output format's schema as OpenAI's strict mode takes it (closed).
STRICT_EMPTY = {"type": "object", "properties": {}, "additionalProperties": False}
# A function's parameters as OpenAI's strict mode takes them (closed, all required).
STRICT_LOCATION = {
    "type": "object",
    "properties": {"location": {"type": "string"}},
    "required": ["location"],
    "additionalProperties": False,
}


def native_response(**overrides: Any) -> dict[str, Any]:
    response = {
        "id": "resp_upstream_123",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": "completed",
        "model": "upstream-gpt-2025",
        "output": [
            {
                "id": "msg_up_1",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Sunny.", "annotations": []}],
            }
        ],
        "previous_response_id": None,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "store": True,
        "usage": {
            "input_tokens": 40,
            "input_tokens_details": {"cached_tokens": 32, "cache_write_tokens": 0},
            "output_tokens": 12,
            "output_tokens_details": {"reasoning_tokens": 7},
            "total_tokens": 52,
        },
        "a_new_field": {"kept": True},
    }
    response.update(overrides)
    return response


# --------------------------------------------------------------------------- pass-through


async def test_passthrough_sends_the_body_as_sent_with_the_conversation_before_input(
    harness, recorder
):
    recorder.script(Scripted(json=native_response()))
    body = {
        "input": [{"type": "function_call_output", "call_id": "call_1", "output": "18C"}],
        "previous_response_id": "resp_6700000000previous",
        "store": True,
        "metadata": {"team": "weather"},
        "tools": [{"type": "web_search"}, {"type": "function", "name": "get_weather"}],
        "include": ["reasoning.encrypted_content"],
        "a_brand_new_parameter": {"x": 1},
    }
    request = with_previous(
        responses_request("gpt-resp", body, headers={"openai-beta": "responses=v9"}),
        OPENAI_PREVIOUS_ITEMS,
    )

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    sent = recorder.last
    assert sent.path == "/v1/responses"
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent.headers["openai-beta"] == "responses=v9"
    expected = {k: v for k, v in body.items() if k != "previous_response_id"}
    expected["model"] = "upstream-gpt"
    expected["input"] = [
        # Switchyard's item ids are not sent (the upstream would look them up in its own
        # store); the upstream's are, which the API requires to pair a reasoning item
        # with the item after it.
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "What is the weather in Paris?"}],
        },
        OPENAI_PREVIOUS_ITEMS[1],
        OPENAI_PREVIOUS_ITEMS[2],
        body["input"][0],
    ]
    assert sent.body == expected
    response = reply.data.response
    assert response["id"] == response_id(request.request_id, request.time)
    # When the gateway accepted it, as its id says (the upstream's is when inference began).
    assert response["created_at"] == int(request.time.timestamp()) != 1_700_000_000
    assert response["model"] == "gpt-resp"
    assert response["previous_response_id"] == "resp_6700000000previous"
    assert response["a_new_field"] == {"kept": True}
    assert response["output"] == native_response()["output"]
    assert reply.data.upstream_api == RESPONSES
    assert reply.data.usage == TokenUsage(
        input_tokens=40, output_tokens=12, cache_read_input_tokens=32, reasoning_tokens=7
    )
    Response.model_validate(response)


async def test_background_is_served_by_switchyard_not_the_upstream(harness, recorder):
    recorder.script(Scripted(json=native_response()))
    request = responses_request("gpt-resp", {"input": "hi", "background": True})

    reply = await harness.handle(request)

    assert "background" not in recorder.last.body
    assert reply.data.response["background"] is True


def passthrough_stream() -> list[tuple[str, dict[str, Any]]]:
    created = native_response(status="in_progress", output=[], usage=None)
    done = native_response()
    item = {"id": "msg_up_1", "type": "message", "status": "in_progress", "role": "assistant"}
    at = {"item_id": "msg_up_1", "output_index": 0, "content_index": 0}
    events = [
        ("response.created", {"response": created}),
        ("response.in_progress", {"response": created}),
        ("response.output_item.added", {"output_index": 0, "item": {**item, "content": []}}),
        (
            "response.content_part.added",
            {**at, "part": {"type": "output_text", "text": "", "annotations": []}},
        ),
        ("response.output_text.delta", {**at, "delta": "Sun", "logprobs": []}),
        ("response.a_future_event", {"detail": "kept"}),
        ("response.output_text.delta", {**at, "delta": "ny.", "logprobs": []}),
        ("response.output_text.done", {**at, "text": "Sunny.", "logprobs": []}),
        (
            "response.content_part.done",
            {**at, "part": {"type": "output_text", "text": "Sunny.", "annotations": []}},
        ),
        ("response.output_item.done", {"output_index": 0, "item": done["output"][0]}),
        ("response.completed", {"response": done}),
    ]
    return [
        (name, {"type": name, "sequence_number": number, **data})
        for number, (name, data) in enumerate(events)
    ]


async def test_passthrough_stream_relays_every_event_with_switchyards_response_id(
    harness, recorder
):
    upstream = passthrough_stream()
    recorder.script(Scripted(events=copy.deepcopy(upstream)))
    request = responses_request("gpt-resp", {"input": "Weather?"}, stream=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    assert recorder.last.body["stream"] is True
    relayed = harness.stream_of(request.request_id)
    assert [event.event for event in relayed] == [name for name, _ in upstream]
    ours = response_id(request.request_id, request.time)
    for event, (_, sent) in zip(relayed, upstream, strict=True):
        expected = copy.deepcopy(sent)
        if "response" in expected:
            expected["response"].update(
                id=ours,
                created_at=int(request.time.timestamp()),
                model="gpt-resp",
                previous_response_id=None,
                background=False,
            )
        assert event.data == expected
    final = sdk_final_response(relayed)
    assert final.id == ours and final.output_text == "Sunny."
    assert reply.data.response["id"] == ours
    assert reply.data.usage.cache_read_input_tokens == 32


async def test_an_upstream_response_failed_mid_stream_fails_the_request(harness, recorder):
    upstream = passthrough_stream()[:5]
    failed = native_response(status="failed", output=[], usage=None)
    failed["error"] = {"code": "server_error", "message": "The model crashed."}
    upstream.append(
        ("response.failed", {"type": "response.failed", "sequence_number": 5, "response": failed})
    )
    recorder.script(Scripted(events=upstream))
    request = responses_request("gpt-resp", {"input": "Weather?"}, stream=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatFailed)
    assert (reply.data.error.status, reply.data.error.code) == (500, "server_error")
    assert reply.data.error.message == "The model crashed."
    # What was streamed before the failure reached the client; the failure itself is
    # written by the gateway, once.
    relayed = [event.event for event in harness.stream_of(request.request_id)]
    assert relayed[-1] == "response.output_text.delta"
    assert "response.failed" not in relayed


# --------------------------------------------------------------------------- Chat Completions


def translated_body() -> dict[str, Any]:
    return {
        "instructions": "Answer briefly.",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "And this picture?"},
                    {"type": "input_image", "image_url": "https://example.com/a.png"},
                ],
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "18C and sunny"},
        ],
        "tools": [
            {
                "type": "function",
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": STRICT_LOCATION,
                "strict": True,
            }
        ],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False,
        "text": {
            "format": {
                "type": "json_schema",
                "name": "weather",
                "schema": STRICT_EMPTY,
                "strict": True,
            }
        },
        "reasoning": {"effort": "low", "summary": "auto"},
        "max_output_tokens": 300,
        "temperature": 0.5,
        "metadata": {"team": "weather"},
        "store": True,
        "previous_response_id": "resp_6700000000previous",
        "user": "end-user-7",
    }


async def test_responses_are_translated_once_for_a_chat_completions_server(harness, recorder):
    recorder.script(
        Scripted(
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "upstream-llama",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": '{"summary": "Sunny"}',
                            "tool_calls": [
                                {
                                    "id": "call_2",
                                    "type": "function",
                                    "function": {
                                        "name": "get_weather",
                                        "arguments": '{"location": "Lyon"}',
                                    },
                                }
                            ],
                        },
                        "finish_reason": "length",
                    }
                ],
                "usage": {
                    "prompt_tokens": 30,
                    "completion_tokens": 9,
                    "total_tokens": 39,
                    "prompt_tokens_details": {"cached_tokens": 16},
                    "completion_tokens_details": {"reasoning_tokens": 3},
                },
            }
        )
    )
    request = with_previous(responses_request("gpt-chat", translated_body()), PREVIOUS_ITEMS)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    sent = recorder.last
    assert sent.path == "/v1/chat/completions"
    assert sent.body == {
        "model": "upstream-llama",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                    }
                ],
            },
            # The tool message right after its call, as Chat Completions requires; the
            # user's message that came between them follows it.
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And this picture?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            },
        ],
        "max_completion_tokens": 300,
        "temperature": 0.5,
        "parallel_tool_calls": False,
        "user": "end-user-7",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather of a city",
                    "parameters": STRICT_LOCATION,
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": STRICT_EMPTY, "strict": True},
        },
        "reasoning_effort": "low",
    }
    response = reply.data.response
    parsed = Response.model_validate(response)
    assert parsed.id == response_id(request.request_id, request.time)
    assert parsed.model == "gpt-chat"
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details.reason == "max_output_tokens"
    assert [item.type for item in parsed.output] == ["message", "function_call"]
    assert parsed.output_text == '{"summary": "Sunny"}'
    call = parsed.output[1]
    assert (call.call_id, call.name, call.arguments) == (
        "call_2",
        "get_weather",
        '{"location": "Lyon"}',
    )
    # Echoed as OpenAI echoes them, served by Switchyard.
    assert response["metadata"] == {"team": "weather"}
    assert response["previous_response_id"] == "resp_6700000000previous"
    assert response["instructions"] == "Answer briefly."
    assert response["usage"] == {
        "input_tokens": 30,
        "input_tokens_details": {"cached_tokens": 16, "cache_write_tokens": 0},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 39,
    }
    assert reply.data.upstream_api == ClientAPI.OPENAI_CHAT_COMPLETIONS


def chat_chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any):
    chunk: dict[str, Any] = {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "model": "upstream-llama",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    chunk.update(extra)
    return (None, chunk)


CHAT_STREAM = [
    chat_chunk({"role": "assistant", "content": ""}),
    chat_chunk({"reasoning_content": "Thinking it over."}),
    chat_chunk({"content": "Let me "}),
    chat_chunk({"content": "check."}),
    chat_chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    ),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"location":'}}]}),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Oslo"}'}}]}),
    chat_chunk({}, "tool_calls"),
    chat_chunk(
        None,
        usage={
            "prompt_tokens": 20,
            "completion_tokens": 11,
            "total_tokens": 31,
            "completion_tokens_details": {"reasoning_tokens": 4},
        },
    ),
    (None, "[DONE]"),
]

CHAT_STREAM_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",  # reasoning
    "response.reasoning_summary_part.added",
    "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.done",
    "response.reasoning_summary_part.done",
    "response.output_item.done",
    "response.output_item.added",  # message
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.output_item.added",  # function call
    "response.function_call_arguments.delta",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


async def test_a_chat_completions_stream_becomes_the_complete_typed_event_sequence(
    harness, recorder
):
    recorder.script(Scripted(events=CHAT_STREAM))
    request = responses_request("gpt-chat", {"input": "Weather in Oslo?"}, stream=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    assert recorder.last.body["stream_options"] == {"include_usage": True}
    events = harness.stream_of(request.request_id)
    assert [event.event for event in events] == CHAT_STREAM_EVENTS
    assert [event.data["type"] for event in events] == CHAT_STREAM_EVENTS
    assert [event.data["sequence_number"] for event in events] == list(range(len(events)))
    final = sdk_final_response(events)
    assert final.id == response_id(request.request_id, request.time)
    assert final.output_text == "Let me check."
    assert final.output[0].summary[0].text == "Thinking it over."
    call = final.output[2]
    assert (call.call_id, call.arguments) == ("call_9", '{"location": "Oslo"}')
    assert final.usage.output_tokens_details.reasoning_tokens == 4
    assert reply.data.response["output"] == events[-1].data["response"]["output"]
    assert reply.data.usage.output_tokens == 11


async def test_a_length_finish_ends_the_stream_with_response_incomplete(harness, recorder):
    recorder.script(
        Scripted(
            events=[
                chat_chunk({"role": "assistant", "content": "Cut sh"}),
                chat_chunk({}, "length"),
                chat_chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 16}),
            ]
        )
    )
    request = responses_request(
        "gpt-chat", {"input": "Tell a long story", "max_output_tokens": 16}, stream=True
    )

    reply = await harness.handle(request)

    last = harness.stream_of(request.request_id)[-1]
    assert last.event == "response.incomplete"
    assert last.data["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert reply.data.response["status"] == "incomplete"


# --------------------------------------------------------------------------- Anthropic


async def test_responses_are_translated_once_for_an_anthropic_deployment(harness, recorder):
    recorder.script(
        Scripted(
            json={
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "upstream-claude",
                "content": [
                    {"type": "thinking", "thinking": "Oslo is cold.", "signature": "SIG-2"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "get_weather",
                        "input": {"location": "Oslo"},
                    },
                ],
                "stop_reason": "tool_use",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 10,
                    "cache_read_input_tokens": 30,
                    "cache_creation_input_tokens": 5,
                    "output_tokens": 20,
                    "output_tokens_details": {"thinking_tokens": 6},
                },
            }
        )
    )
    body = translated_body()
    body["text"] = {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}}
    body["reasoning"] = {"effort": "medium"}
    body["max_output_tokens"] = 8000
    # Anthropic refuses a forced tool and a temperature other than 1 with thinking on.
    body["tool_choice"] = "auto"
    body["temperature"] = 1
    body["input"].insert(0, {"role": "developer", "content": "Use metric units."})
    request = with_previous(responses_request("claude", body), PREVIOUS_ITEMS)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    sent = recorder.last
    assert sent.path == "/v1/messages"
    assert sent.body == {
        "model": "upstream-claude",
        # The developer item too: a later one goes to the top-level `system` by default.
        "system": "Answer briefly.\n\nUse metric units.",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is the weather in Paris?"}],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Look it up.", "signature": "SIGNATURE-1"},
                    {
                        "type": "tool_use",
                        "id": "call_1",
                        "name": "get_weather",
                        "input": {"location": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C and sunny"},
                    {"type": "text", "text": "And this picture?"},
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.png"},
                    },
                ],
            },
        ],
        "max_tokens": 8000,
        "thinking": {"type": "enabled", "budget_tokens": 4096},
        "temperature": 1,
        "metadata": {"user_id": "end-user-7"},
        "tools": [
            {
                "name": "get_weather",
                "input_schema": STRICT_LOCATION,
                "description": "Weather of a city",
                "strict": True,
            }
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    }
    parsed = Response.model_validate(reply.data.response)
    assert parsed.status == "completed"
    assert [item.type for item in parsed.output] == ["reasoning", "message", "function_call"]
    reasoning = parsed.output[0]
    assert reasoning.summary[0].text == "Oslo is cold."
    assert reasoning.encrypted_content == "SIG-2"
    assert parsed.output_text == "Checking."
    assert parsed.output[2].call_id == "toolu_2"
    assert parsed.output[2].arguments == '{"location":"Oslo"}'
    assert parsed.usage.input_tokens == 45
    assert parsed.usage.input_tokens_details.cached_tokens == 30
    assert parsed.usage.output_tokens_details.reasoning_tokens == 6
    assert reply.data.usage == TokenUsage(
        input_tokens=45,
        output_tokens=20,
        cache_read_input_tokens=30,
        cache_creation_input_tokens=5,
        reasoning_tokens=6,
    )


def anthropic(name: str, **data: Any):
    return (name, {"type": name, **data})


ANTHROPIC_STREAM = [
    anthropic(
        "message_start",
        message={
            "id": "msg_3",
            "type": "message",
            "role": "assistant",
            "model": "upstream-claude",
            "content": [],
            "usage": {"input_tokens": 12, "output_tokens": 1},
        },
    ),
    anthropic(
        "content_block_start",
        index=0,
        content_block={"type": "thinking", "thinking": "", "signature": ""},
    ),
    anthropic("ping"),
    anthropic("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "Hmm."}),
    anthropic("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "S3"}),
    anthropic("content_block_stop", index=0),
    anthropic("content_block_start", index=1, content_block={"type": "text", "text": ""}),
    anthropic("content_block_delta", index=1, delta={"type": "text_delta", "text": "Cold "}),
    anthropic("content_block_delta", index=1, delta={"type": "text_delta", "text": "today."}),
    anthropic("content_block_stop", index=1),
    anthropic(
        "content_block_start",
        index=2,
        content_block={"type": "tool_use", "id": "toolu_3", "name": "get_weather", "input": {}},
    ),
    anthropic(
        "content_block_delta",
        index=2,
        delta={"type": "input_json_delta", "partial_json": '{"location": "Oslo"}'},
    ),
    anthropic("content_block_stop", index=2),
    anthropic(
        "message_delta",
        delta={"stop_reason": "tool_use", "stop_sequence": None},
        usage={"output_tokens": 14},
    ),
    anthropic("message_stop"),
]


async def test_an_anthropic_stream_becomes_the_complete_typed_event_sequence(harness, recorder):
    recorder.script(Scripted(events=ANTHROPIC_STREAM))
    request = responses_request(
        "claude", {"input": "Weather in Oslo?", "reasoning": {"effort": "low"}}, stream=True
    )

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    events = harness.stream_of(request.request_id)
    assert [event.event for event in events] == CHAT_STREAM_EVENTS[:16] + [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.data["sequence_number"] for event in events] == list(range(len(events)))
    final = sdk_final_response(events)
    assert final.output[0].summary[0].text == "Hmm."
    assert final.output[0].encrypted_content == "S3"
    assert final.output_text == "Cold today."
    assert final.output[2].arguments == '{"location": "Oslo"}'
    assert final.usage.output_tokens == 14 and final.usage.input_tokens == 12
    assert reply.data.response == events[-1].data["response"]


async def test_a_signature_streamed_in_pieces_is_sent_back_whole(harness, recorder):
    pieces = [
        anthropic("content_block_delta", index=0, delta={"type": "signature_delta", "signature": p})
        for p in ("S", "", "3")
    ]
    at = next(
        n
        for n, event in enumerate(ANTHROPIC_STREAM)
        if event[1].get("delta", {}).get("type") == "signature_delta"
    )
    recorder.script(Scripted(events=[*ANTHROPIC_STREAM[:at], *pieces, *ANTHROPIC_STREAM[at + 1 :]]))
    request = responses_request("claude", {"input": "Weather in Oslo?"}, stream=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    final = sdk_final_response(harness.stream_of(request.request_id))
    assert final.output[0].encrypted_content == "S3"


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("model", ["gpt-chat", "claude"])
@pytest.mark.parametrize("tool", ["web_search", "file_search", "computer_use_preview", "mcp"])
async def test_built_in_tools_are_refused_naming_the_tool_unless_passed_through(
    harness, recorder, model, tool
):
    recorder.script(Scripted(json=native_response()))
    body = {
        "input": "Search the web",
        "tools": [{"type": "function", "name": "f"}, {"type": tool}],
    }

    refused = await harness.handle(responses_request(model, body))

    assert isinstance(refused, ChatFailed)
    error = refused.data.error
    assert (error.status, error.code, error.param) == (400, "unsupported_parameter", "tools[1]")
    assert tool in error.message
    assert recorder.requests == []  # refused before any upstream call

    passed = await harness.handle(responses_request("gpt-resp", body))
    assert isinstance(passed, ChatCompleted)
    assert recorder.last.body["tools"][1] == {"type": tool}


@pytest.mark.parametrize("model", ["gpt-chat", "claude"])
@pytest.mark.parametrize(
    "tool",
    [
        {"type": "namespace", "name": "agents", "tools": [{"type": "function", "name": "f"}]},
        {"type": "custom", "name": "patch"},
    ],
)
async def test_tools_the_client_runs_but_only_responses_shapes_are_refused_as_such(
    harness, recorder, model, tool
):
    """A namespace of functions or a free-form tool is not OpenAI's to run: the refusal
    says it is a shape the deployment does not take, not a built-in tool."""
    refused = await harness.handle(responses_request(model, {"input": "hi", "tools": [tool]}))

    assert isinstance(refused, ChatFailed)
    error = refused.data.error
    assert (error.status, error.param) == (400, "tools[0]")
    assert "built-in tool" not in error.message
    assert f"Tools of type '{tool['type']}'" in error.message
    assert recorder.requests == []


@pytest.mark.parametrize("model", ["gpt-chat", "claude"])
async def test_client_metadata_is_accepted_and_not_sent_to_a_translated_deployment(
    harness, recorder, model
):
    """Codex sends its session and turn ids in `client_metadata` on every request: no
    model reads them, so a translated deployment is sent nothing of them; a Responses
    deployment gets them as sent."""
    metadata = {"session_id": "s-1", "x-codex-turn-metadata": '{"turn_id": "t-1"}'}
    body = {"input": "hi", "client_metadata": metadata}
    if model == "claude":
        recorder.script(Scripted(json=anthropic_text_reply("Hello")))
    else:
        recorder.script(Scripted(json=_chat_reply({"role": "assistant", "content": "Hello"})))

    answered = await harness.handle(responses_request(model, body))

    assert isinstance(answered, ChatCompleted), answered
    assert "client_metadata" not in recorder.last.body
    assert "s-1" not in recorder.last.raw.decode()

    recorder.script(Scripted(json=native_response()))
    passed = await harness.handle(responses_request("gpt-resp", body))
    assert isinstance(passed, ChatCompleted)
    assert recorder.last.body["client_metadata"] == metadata


@pytest.mark.parametrize("model", ["gpt-chat", "claude"])
async def test_client_metadata_that_is_not_an_object_is_refused(harness, recorder, model):
    refused = await harness.handle(
        responses_request(model, {"input": "hi", "client_metadata": "s-1"})
    )
    assert isinstance(refused, ChatFailed)
    assert (refused.data.error.param, refused.data.error.code) == (
        "client_metadata",
        "invalid_type",
    )


@pytest.mark.parametrize("model", ["gpt-chat", "claude"])
@pytest.mark.parametrize(
    ("tool", "code", "param"),
    [
        ({"type": "zzz"}, "invalid_value", "tools[0].type"),
        ({"type": 5}, "invalid_type", "tools[0].type"),
    ],
)
async def test_a_tool_type_openai_does_not_know_is_refused_as_openai_refuses_it(
    harness, recorder, model, tool, code, param
):
    """A typo is not a built-in tool this deployment lacks: it is an invalid value."""
    refused = await harness.handle(responses_request(model, {"input": "hi", "tools": [tool]}))

    assert isinstance(refused, ChatFailed)
    error = refused.data.error
    assert (error.status, error.code, error.param) == (400, code, param)
    assert "built-in tool" not in error.message
    if code == "invalid_value":
        assert "'zzz'" in error.message and "'web_search'" in error.message
    assert recorder.requests == []


REASONING_ITEM = {"type": "reasoning", "id": "rs_1", "encrypted_content": "abc"}


@pytest.mark.parametrize("model", ["gpt-chat", "claude"])
@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"reasoning": {"effort": ["low"]}}, "reasoning.effort", "invalid_value"),
        ({"reasoning": {"effort": {"level": "low"}}}, "reasoning.effort", "invalid_value"),
        ({"reasoning": {"summary": 5}}, "reasoning.summary", "invalid_value"),
        (
            {"reasoning": {"generate_summary": "long"}},
            "reasoning.generate_summary",
            "invalid_value",
        ),
        (
            {"input": [{**REASONING_ITEM, "summary": 5}, "hi"]},
            "input[0].summary",
            "invalid_type",
        ),
        (
            {"input": [{**REASONING_ITEM, "summary": ["x"]}, "hi"]},
            "input[0].summary[0]",
            "invalid_type",
        ),
        (
            {"input": [{**REASONING_ITEM, "summary": [{"type": "summary_text", "text": 7}]}]},
            "input[0].summary[0].text",
            "invalid_type",
        ),
        (
            {"input": [{**REASONING_ITEM, "summary": [], "encrypted_content": 7}]},
            "input[0].encrypted_content",
            "invalid_type",
        ),
    ],
)
async def test_reasoning_of_the_wrong_shape_is_refused_naming_the_field(
    harness, recorder, model, body, param, code
):
    """Each is OpenAI's 400 naming the field, never the catch-all for a body the
    translation could not read."""
    refused = await harness.handle(responses_request(model, {"input": "hi", **body}))

    assert isinstance(refused, ChatFailed)
    error = refused.data.error
    assert (error.status, error.param, error.code) == (400, param, code), error
    assert recorder.requests == []


@pytest.mark.parametrize("model", ["gpt-chat", "claude"])
async def test_an_include_value_openai_does_not_know_is_refused_as_openai_refuses_it(
    harness, recorder, model
):
    """A typo in `include` is not silently ignored: OpenAI's own 400 `invalid_value`
    naming the entry, while the values OpenAI takes and a translation can ignore pass."""
    body = {"input": "hi", "include": ["reasoning.encrypted_content", "bogus"]}
    refused = await harness.handle(responses_request(model, body))

    assert isinstance(refused, ChatFailed)
    error = refused.data.error
    assert (error.status, error.code, error.param) == (400, "invalid_value", "include[1]")
    assert "'bogus'" in error.message and "'reasoning.encrypted_content'" in error.message
    assert recorder.requests == []

    known = {"input": "hi", "include": ["reasoning.encrypted_content", "web_search_call.results"]}
    await harness.handle(responses_request(model, known))
    assert len(recorder.requests) == 1, "translated and sent"
    assert "include" not in recorder.requests[0].body


@pytest.mark.parametrize(
    ("body", "previous", "param"),
    [
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, None, "input[0]"),
        ({"input": ["just a string"]}, None, "input[0]"),
        (
            {"input": [{"role": "user", "content": "a"}, {"type": "computer_call"}]},
            None,
            "input[1]",
        ),
        ({"input": [{"role": "wizard", "content": "a"}]}, None, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            None,
            "input[0].content[0]",
        ),
        ({"input": "hi"}, [{"type": "web_search_call", "id": "ws_1"}], "previous_response_id"),
        ({"input": "hi", "truncation": "auto"}, None, "truncation"),
        ({"input": "hi", "include": ["message.output_text.logprobs"]}, None, "include[0]"),
        ({"input": "hi", "prompt": {"id": "pmpt_1"}}, None, "prompt"),
        ({"input": "hi", "tool_choice": {"type": "web_search"}}, None, "tool_choice"),
        # Of the wrong type, on either translation (a pass-through's server judges its own).
        ({"input": "hi", "user": 5}, None, "user"),
        ({"input": "hi", "safety_identifier": {"id": "u"}}, None, "safety_identifier"),
        ({"input": "hi", "prompt_cache_key": 5}, None, "prompt_cache_key"),
        ({"input": "hi", "max_tool_calls": "x"}, None, "max_tool_calls"),
        ({"input": "hi", "top_logprobs": "x"}, None, "top_logprobs"),
    ],
)
@pytest.mark.parametrize("model", ["gpt-chat", "claude"])
async def test_what_a_translation_cannot_express_is_refused_naming_the_field(
    harness, recorder, model, body, previous, param
):
    request = responses_request(model, body)
    if previous is not None:
        request = with_previous(request, previous)

    refused = await harness.handle(request)

    assert isinstance(refused, ChatFailed)
    assert (refused.data.error.status, refused.data.error.param) == (400, param)
    assert refused.data.error.type == "invalid_request_error"
    assert recorder.requests == []


async def test_a_temperature_anthropic_cannot_take_is_refused(harness, recorder):
    refused = await harness.handle(responses_request("claude", {"input": "hi", "temperature": 1.5}))
    assert isinstance(refused, ChatFailed)
    assert refused.data.error.param == "temperature"


# Both OpenAI APIs reach an Anthropic deployment through the same translation of their
# sampling, end user, tools and tool choice: a Chat Completions and a Responses request
# saying the same thing become the same Messages fields.
WEATHER = {
    "name": "get_weather",
    "description": "Weather by city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
SAME_REQUEST = {
    "model": "m",
    "temperature": 0.5,
    "top_p": 0.9,
    "safety_identifier": "end-user-1",
    "tool_choice": "required",
    "parallel_tool_calls": False,
}
AS_CHAT = {
    **SAME_REQUEST,
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"type": "function", "function": WEATHER}],
}
AS_RESPONSES = {**SAME_REQUEST, "input": "hi", "tools": [{"type": "function", **WEATHER}]}
TRANSLATIONS = [
    pytest.param(chat_request_to_messages, AS_CHAT, id="chat-completions"),
    pytest.param(responses_request_to_messages, AS_RESPONSES, id="responses"),
]


def test_a_responses_format_field_chat_completions_lacks_is_refused_not_dropped() -> None:
    body = {"model": "m", "input": "x"}
    fmt = {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "examples": []}
    with pytest.raises(TranslationError) as refused:
        responses_request_to_chat({**body, "text": {"format": fmt}})
    assert refused.value.param == "text.format.examples"


@pytest.mark.parametrize(("translate", "body"), TRANSLATIONS)
def test_the_safety_identifier_is_anthropics_user_id_over_the_deprecated_user(
    translate, body
) -> None:
    """Anthropic's `metadata.user_id` is the identifier it detects abuse by, as OpenAI's
    `safety_identifier` is; `user` is the field OpenAI deprecated for it."""
    assert translate({**body, "user": "account-9"})["metadata"] == {"user_id": "end-user-1"}
    alone = {name: value for name, value in body.items() if name != "safety_identifier"}
    assert translate({**alone, "user": "account-9"})["metadata"] == {"user_id": "account-9"}


@pytest.mark.parametrize(("translate", "body"), TRANSLATIONS)
def test_both_openai_apis_give_anthropic_the_same_sampling_tools_and_tool_choice(
    translate, body
) -> None:
    messages = translate(body)

    assert (messages["temperature"], messages["top_p"]) == (0.5, 0.9)
    assert messages["metadata"] == {"user_id": "end-user-1"}
    assert messages["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER["parameters"],
            "description": "Weather by city",
        }
    ]
    assert messages["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(("translate", "body"), TRANSLATIONS)
def test_both_openai_apis_refuse_a_temperature_anthropic_cannot_take(translate, body) -> None:
    with pytest.raises(TranslationError) as refused:
        translate({**body, "temperature": 1.5})

    assert refused.value.param == "temperature"


def anthropic_text_reply(text: str) -> dict[str, Any]:
    """An Anthropic message answering `text` (the upstream's JSON)."""
    return {
        "id": "msg_text",
        "type": "message",
        "role": "assistant",
        "model": "upstream-claude",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 2},
    }


@pytest.mark.parametrize("earlier_id", ["rs_sy" + "1" * 32, "rs_" + "2" * 32])
async def test_reasoning_another_api_made_never_reaches_an_openai_upstream(
    harness, recorder, earlier_id
):
    """Reasoning Switchyard made from an Anthropic reply (a thinking signature in
    `encrypted_content`, under an id of Switchyard's) is left out when the conversation
    goes on at an OpenAI Responses upstream, whether it comes from `previous_response_id`
    or the client sends it back in `input`: OpenAI cannot decrypt it and would refuse it."""
    recorder.script(Scripted(json=native_response()))
    translated = {**PREVIOUS_ITEMS[1], "id": earlier_id}
    body = {"input": [translated, {"role": "user", "content": "And Oslo?"}]}
    request = with_previous(
        responses_request("gpt-resp", body), [PREVIOUS_ITEMS[0], translated, PREVIOUS_ITEMS[2]]
    )

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    sent = recorder.last.body["input"]
    assert not [item for item in sent if item.get("type") == "reasoning"]
    assert [item.get("type", "message") for item in sent] == ["message", "function_call", "message"]


async def test_an_openai_models_reasoning_is_not_sent_to_an_anthropic_deployment(harness, recorder):
    recorder.script(Scripted(json=anthropic_text_reply("Cold.")))
    body = {"input": [{"type": "function_call_output", "call_id": "call_1", "output": "18C"}]}
    request = with_previous(responses_request("claude", body), OPENAI_PREVIOUS_ITEMS)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    blocks = [
        block
        for message in recorder.last.body["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
    ]
    assert not [b for b in blocks if b.get("type") in ("thinking", "redacted_thinking")]
    assert "gAAAA-OPENAI" not in str(recorder.last.body)


async def test_reasoning_of_another_responses_server_still_reaches_it(harness, recorder):
    """A reasoning item of the upstream's own (vLLM's ids are `rs_` and 32 hex digits, and
    carry no encrypted content) goes back to it as it was."""
    recorder.script(Scripted(json=native_response()))
    own = {
        "id": "rs_" + "3" * 32,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "Look it up."}],
    }
    body = {"input": [own, {"role": "user", "content": "And Oslo?"}]}

    reply = await harness.handle(responses_request("gpt-resp", body))

    assert isinstance(reply, ChatCompleted), reply
    assert recorder.last.body["input"][0] == own


@pytest.mark.parametrize(
    "item",
    [
        {"type": "web_search_call", "id": "ws_67c9", "status": "completed", "action": {}},
        {"type": "file_search_call", "id": "fs_1", "status": "completed", "queries": ["q"]},
        {"type": "mcp_list_tools", "id": "mcpl_1", "server_label": "s", "tools": []},
    ],
    ids=lambda item: item["type"],
)
async def test_a_built_in_tool_s_item_goes_back_to_its_upstream_with_its_id(
    harness, recorder, item
):
    """The items of the tools an OpenAI upstream runs itself carry an id its API requires
    when a later turn sends them back (`previous_response_id`): kept, as a reasoning
    item's is; a message's and a function call's that Switchyard gave are not."""
    recorder.script(Scripted(json=native_response()))
    previous = [
        {"type": "message", "id": "msg_" + "1" * 32 + "_0", "role": "user", "content": "Search."},
        item,
        {**PREVIOUS_ITEMS[2], "id": "fc_" + "2" * 32},
    ]
    body = {"input": [{"role": "user", "content": "And Oslo?"}]}

    reply = await harness.handle(with_previous(responses_request("gpt-resp", body), previous))

    assert isinstance(reply, ChatCompleted), reply
    sent = recorder.last.body["input"]
    assert sent[1] == item
    assert "id" not in sent[0] and "id" not in sent[2]


async def test_an_upstreams_reasoning_and_the_items_after_it_go_back_with_their_ids(
    harness, recorder
):
    """A reasoning model's turn of parallel calls, chained with `previous_response_id` at
    the same kind of upstream: every item of its reply goes back with the id the upstream
    gave it, as a client of OpenAI sends them. OpenAI pairs the reasoning item with the
    item after it by their ids, and refuses a reasoning item "without its required
    following item" when that item's id is missing. The user's message, whose id
    Switchyard gave, goes without one."""
    recorder.script(Scripted(json=native_response()))
    upstream_output = [
        {
            "id": "rs_" + "0a" * 25,
            "type": "reasoning",
            "summary": [],
            "encrypted_content": "gAAAA-OPENAI",
        },
        *(
            {
                "id": f"fc_{n}" + "0b" * 25,
                "type": "function_call",
                "status": "completed",
                "call_id": f"call_{n}",
                "name": "get_weather",
                "arguments": "{}",
            }
            for n in (1, 2)
        ),
        {
            "id": "msg_" + "0c" * 25,
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Looking.", "annotations": []}],
        },
    ]
    previous = [PREVIOUS_ITEMS[0], *upstream_output]
    body = {
        "input": [
            {"type": "function_call_output", "call_id": f"call_{n}", "output": "18C"}
            for n in (1, 2)
        ]
    }

    reply = await harness.handle(with_previous(responses_request("gpt-resp", body), previous))

    assert isinstance(reply, ChatCompleted), reply
    sent = recorder.last.body["input"]
    assert "id" not in sent[0]
    assert [item.get("id") for item in sent[1:5]] == [item["id"] for item in upstream_output]
    assert sent[1:4] == upstream_output[:3]
    assert sent[5:] == body["input"]


def test_the_ids_switchyard_gives_items_are_told_from_an_upstreams():
    """What `upstream_item` strips is exactly what Switchyard makes: the ids of a
    translated reply's items and of input items sent without one, never OpenAI's."""
    made = [translate_responses._new_id(prefix) for prefix in ("msg", "fc", "ctc")]
    made += [
        item["id"]
        for item in input_items(
            [{"role": "user", "content": "x"}, {"type": "function_call"}], new_id()
        )
    ]
    made += [item["id"] for item in input_items("Hello", new_id())]
    assert all(map(switchyard_item_id, made)), made
    upstreams = ["fc_" + "0b" * 25, "msg_" + "0c" * 25, "fc_abc", "msg_1", "call_1", None, 7]
    assert not any(map(switchyard_item_id, upstreams))
    # What is sent for each: nothing for Switchyard's, the upstream's as it gave it, and
    # for an item a cached answer reused under `<id>_<request id>`, the id it first had.
    assert [upstream_item_id(item_id) for item_id in made] == [None] * len(made)
    assert upstream_item_id("fc_" + "0b" * 25) == "fc_" + "0b" * 25
    reused = [f"{item_id}_{new_id()}" for item_id in ("fc_" + "0b" * 25, made[0], made[-1])]
    assert [upstream_item_id(item_id) for item_id in reused] == ["fc_" + "0b" * 25, None, None]


async def test_openai_reasoning_sent_back_without_its_id_is_not_sent_to_anthropic(
    harness, recorder
):
    recorder.script(Scripted(json=anthropic_text_reply("Cold.")))
    without_id = {"type": "reasoning", "summary": [], "encrypted_content": "gAAAA-OPENAI"}
    body = {
        "input": [
            {"role": "user", "content": "Hi"},
            without_id,
            {"role": "user", "content": "And?"},
        ]
    }

    reply = await harness.handle(responses_request("claude", body))

    assert isinstance(reply, ChatCompleted), reply
    assert "gAAAA-OPENAI" not in str(recorder.last.body)


def _call_start(index: int, call_id: str, name: str, arguments: str = "") -> tuple:
    function = {"name": name, "arguments": arguments}
    call = {"index": index, "id": call_id, "type": "function", "function": function}
    return chat_chunk({"tool_calls": [call]})


def _call_arguments(index: int, arguments: str) -> tuple:
    return chat_chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})


PARALLEL_CALLS = {
    # One call after the other, as OpenAI streams them.
    "sequential": [
        _call_start(0, "call_a", "get_weather"),
        _call_arguments(0, '{"location":'),
        _call_arguments(0, ' "Oslo"}'),
        _call_start(1, "call_b", "get_time"),
        _call_arguments(1, '{"zone": "CET"}'),
    ],
    # Interleaved, as Chat Completions allows.
    "interleaved": [
        _call_start(0, "call_a", "get_weather"),
        _call_start(1, "call_b", "get_time", '{"zone":'),
        _call_arguments(0, '{"location":'),
        _call_arguments(1, ' "CET"}'),
        _call_arguments(0, ' "Oslo"}'),
    ],
}


@pytest.mark.parametrize("order", PARALLEL_CALLS)
async def test_parallel_tool_calls_stream_as_one_output_item_after_the_other(
    harness, recorder, order
):
    recorder.script(
        Scripted(
            events=[
                chat_chunk({"role": "assistant", "content": None}),
                *PARALLEL_CALLS[order],
                chat_chunk({}, "tool_calls"),
                chat_chunk(None, usage={"prompt_tokens": 9, "completion_tokens": 12}),
            ]
        )
    )
    request = responses_request("gpt-chat", {"input": "Weather and time?"}, stream=True)

    await harness.handle(request)

    events = [event.data for event in harness.stream_of(request.request_id)]
    # Each item is added, gets its deltas and is done before the next one is added.
    open_items: list[int] = []
    for event in events:
        index = event.get("output_index")
        if event["type"] == "response.output_item.added":
            assert open_items == [], f"item {index} added while {open_items} open"
            open_items.append(index)
        elif event["type"] == "response.output_item.done":
            assert open_items == [index]
            open_items.pop()
        elif index is not None:
            assert open_items == [index], f"{event['type']} of {index} while {open_items} open"
    final = sdk_final_response(harness.stream_of(request.request_id))
    calls = [(call.call_id, call.name, call.arguments) for call in final.output]
    assert calls == [
        ("call_a", "get_weather", '{"location": "Oslo"}'),
        ("call_b", "get_time", '{"zone": "CET"}'),
    ]


async def test_text_beside_an_unfinished_call_waits_for_its_arguments(harness, recorder):
    # Some servers send a whitespace `content` in the chunk that carries more arguments:
    # the call's item cannot be done before its arguments are whole, nor reopened after.
    recorder.script(
        Scripted(
            events=[
                chat_chunk({"role": "assistant", "content": None}),
                _call_start(0, "call_a", "get_weather", '{"location":'),
                chat_chunk(
                    {
                        "content": "\n",
                        "tool_calls": [{"index": 0, "function": {"arguments": ' "Oslo"}'}}],
                    }
                ),
                chat_chunk({"content": "Checking."}),
                chat_chunk({}, "tool_calls"),
                chat_chunk(None, usage={"prompt_tokens": 9, "completion_tokens": 12}),
            ]
        )
    )
    request = responses_request("gpt-chat", {"input": "Weather?"}, stream=True)

    await harness.handle(request)

    events = harness.stream_of(request.request_id)
    final = sdk_final_response(events)
    call, message = final.output
    assert (call.call_id, call.arguments) == ("call_a", '{"location": "Oslo"}')
    assert message.content[0].text == "\nChecking."
    kinds = [event.data["type"] for event in events]
    assert kinds.index("response.function_call_arguments.done") < kinds.index(
        "response.output_text.delta"
    )


# A call of a tool without parameters, as Anthropic streams it: `input: {}` at the block's
# start and an empty `partial_json` (https://docs.anthropic.com/en/docs/build-with-claude/
# streaming#input-json-delta: the first delta may be empty).
ANTHROPIC_CALL_WITHOUT_INPUT = [
    anthropic(
        "message_start",
        message={
            "id": "msg_n",
            "type": "message",
            "role": "assistant",
            "model": "upstream-claude",
            "content": [],
            "usage": {"input_tokens": 10, "output_tokens": 1},
        },
    ),
    anthropic(
        "content_block_start",
        index=0,
        content_block={"type": "tool_use", "id": "toolu_n", "name": "now", "input": {}},
    ),
    anthropic(
        "content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": ""}
    ),
    anthropic("content_block_stop", index=0),
    anthropic(
        "message_delta",
        delta={"stop_reason": "tool_use", "stop_sequence": None},
        usage={"output_tokens": 5},
    ),
    anthropic("message_stop"),
]


async def test_a_streamed_call_without_input_has_the_arguments_of_an_empty_object(
    harness, recorder
):
    recorder.script(Scripted(events=ANTHROPIC_CALL_WITHOUT_INPUT))
    tools = [{"type": "function", "name": "now", "parameters": {"type": "object"}}]
    request = responses_request("claude", {"input": "time?", "tools": tools}, stream=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    events = harness.stream_of(request.request_id)
    final = sdk_final_response(events)
    assert [item.arguments for item in final.output if item.type == "function_call"] == ["{}"]
    done = [e.data for e in events if e.event == "response.function_call_arguments.done"]
    assert [data["arguments"] for data in done] == ["{}"]


# "the response body will include the service_tier value based on the processing mode
# actually used to serve the request. This response value may be different from the
# value set in the parameter" (the openai SDK's `Response.service_tier`).
async def test_a_translated_response_reports_the_tier_that_served_it(harness, recorder):
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "upstream-llama",
        "service_tier": "default",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    recorder.script(Scripted(json=completion))
    request = responses_request("gpt-chat", {"input": "hi", "service_tier": "flex"})
    reply = await harness.handle(request)
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response["service_tier"] == "default"

    recorder.script(
        Scripted(
            events=[
                chat_chunk({"role": "assistant", "content": "Hi"}, service_tier="default"),
                chat_chunk({}, "stop", service_tier="default"),
            ]
        )
    )
    request = responses_request("gpt-chat", {"input": "hi", "service_tier": "flex"}, stream=True)
    reply = await harness.handle(request)
    assert isinstance(reply, ChatCompleted), reply
    events = harness.stream_of(request.request_id)
    assert events[0].data["response"]["service_tier"] == "flex"  # echoed as asked
    assert sdk_final_response(events).service_tier == "default"

    # An upstream that names no tier: the one asked for, as before.
    recorder.script(Scripted(json={k: v for k, v in completion.items() if k != "service_tier"}))
    request = responses_request("gpt-chat", {"input": "hi", "service_tier": "flex"})
    reply = await harness.handle(request)
    assert reply.data.response["service_tier"] == "flex"


async def test_an_anthropic_tier_is_reported_in_the_responses_api_names(harness, recorder):
    message = anthropic_message(
        id="msg_t",
        model="upstream-claude",
        content=[{"type": "text", "text": "Hi"}],
        usage={"input_tokens": 5, "output_tokens": 1, "service_tier": "priority"},
    )
    recorder.script(Scripted(json=message))
    request = responses_request("claude", {"input": "hi"})
    reply = await harness.handle(request)
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response["service_tier"] == "priority"


def _thinking_reply(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "msg_omitted",
        "type": "message",
        "role": "assistant",
        "model": "upstream-claude",
        "content": [*blocks, {"type": "text", "text": "Cold."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 7},
    }


@pytest.mark.parametrize(
    ("stream", "signed_at_start"), [(False, False), (True, False), (True, True)]
)
async def test_omitted_thinking_goes_back_as_thinking_and_redacted_as_redacted(
    harness, recorder, stream, signed_at_start
):
    """Anthropic's "omitted" thinking display sends a thinking block with empty text and a
    full signature; the reasoning item made of it must go back as that thinking block (a
    signature is no redacted data), and a redacted block as redacted thinking."""
    blocks = [
        {"type": "thinking", "thinking": "", "signature": "SIG-OMITTED"},
        {"type": "redacted_thinking", "data": "REDACTED-DATA"},
    ]
    if stream:
        events = [
            anthropic(
                "message_start",
                message={**_thinking_reply([]), "content": [], "stop_reason": None},
            ),
            anthropic(
                "content_block_start",
                index=0,
                content_block=blocks[0]
                if signed_at_start
                else {"type": "thinking", "thinking": ""},
            ),
            *(
                []
                if signed_at_start
                else [
                    anthropic(
                        "content_block_delta",
                        index=0,
                        delta={"type": "signature_delta", "signature": "SIG-OMITTED"},
                    )
                ]
            ),
            anthropic("content_block_stop", index=0),
            anthropic("content_block_start", index=1, content_block=blocks[1]),
            anthropic("content_block_stop", index=1),
            anthropic("content_block_start", index=2, content_block={"type": "text", "text": ""}),
            anthropic(
                "content_block_delta", index=2, delta={"type": "text_delta", "text": "Cold."}
            ),
            anthropic("content_block_stop", index=2),
            anthropic(
                "message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 7}
            ),
            anthropic("message_stop"),
        ]
        recorder.script(Scripted(events=events))
    else:
        recorder.script(Scripted(json=_thinking_reply(blocks)))
    first = responses_request("claude", {"input": "Weather?"}, stream=stream)

    reply = await harness.handle(first)

    assert isinstance(reply, ChatCompleted), reply
    output = reply.data.response["output"]
    assert [item["type"] for item in output] == ["reasoning", "reasoning", "message"]
    recorder.script(Scripted(json=anthropic_text_reply("Still cold.")))
    body = {"input": [*output, {"role": "user", "content": "And Oslo?"}]}

    again = await harness.handle(responses_request("claude", body))

    assert isinstance(again, ChatCompleted), again
    assistant = recorder.last.body["messages"][0]
    assert assistant["role"] == "assistant"
    assert assistant["content"][:2] == [
        {"type": "thinking", "thinking": "", "signature": "SIG-OMITTED"},
        {"type": "redacted_thinking", "data": "REDACTED-DATA"},
    ]


async def test_thinking_interleaved_with_tool_use_goes_back_in_its_order(harness, recorder):
    """Anthropic requires thinking blocks back unmodified and in their order: thinking
    between tool calls (interleaved thinking) stays between them."""
    blocks = [
        {"type": "thinking", "thinking": "T1", "signature": "S1"},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "a"}},
        {"type": "thinking", "thinking": "T2", "signature": "S2"},
        {"type": "text", "text": "Checking b too."},
        {"type": "tool_use", "id": "toolu_2", "name": "lookup", "input": {"q": "b"}},
    ]
    recorder.script(Scripted(json={**_thinking_reply([]), "content": blocks}))
    reply = await harness.handle(responses_request("claude", {"input": "Look a and b up."}))
    assert isinstance(reply, ChatCompleted), reply
    output = reply.data.response["output"]
    results = [
        {"type": "function_call_output", "call_id": item["call_id"], "output": "ok"}
        for item in output
        if item["type"] == "function_call"
    ]
    recorder.script(Scripted(json=anthropic_text_reply("Done.")))

    again = await harness.handle(
        responses_request(
            "claude",
            {"input": [{"role": "user", "content": "Look a and b up."}, *output, *results]},
        )
    )

    assert isinstance(again, ChatCompleted), again
    assistant = recorder.last.body["messages"][1]
    assert [
        (block["type"], block.get("thinking") or block.get("text") or block.get("id"))
        for block in assistant["content"]
    ] == [
        ("thinking", "T1"),
        ("tool_use", "toolu_1"),
        ("thinking", "T2"),
        ("text", "Checking b too."),
        ("tool_use", "toolu_2"),
    ]


async def test_a_text_block_whose_text_is_null_reads_as_empty(harness, recorder):
    reply_body = _thinking_reply([{"type": "text", "text": None}])
    recorder.script(Scripted(json=reply_body))

    reply = await harness.handle(responses_request("claude", {"input": "Weather?"}))

    assert isinstance(reply, ChatCompleted), reply
    assert Response.model_validate(reply.data.response).output_text == "Cold."


# ----------------------------------------------- what a Chat Completions reply carries


CITATION = {"url": "https://example.org/oslo", "title": "Oslo", "start_index": 0, "end_index": 5}


def _chat_reply(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-3",
        "object": "chat.completion",
        "model": "upstream-llama",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


async def test_url_citations_of_a_chat_reply_become_output_text_annotations(harness, recorder):
    message = {
        "role": "assistant",
        "content": "Sunny.",
        "annotations": [{"type": "url_citation", "url_citation": CITATION}],
    }
    recorder.script(Scripted(json=_chat_reply(message)))

    reply = await harness.handle(responses_request("gpt-chat", {"input": "Weather?"}))

    assert isinstance(reply, ChatCompleted), reply
    response = Response.model_validate(reply.data.response)
    [part] = response.output[0].content
    assert part.text == "Sunny."
    assert [a.model_dump() for a in part.annotations] == [{"type": "url_citation", **CITATION}]


async def test_url_citations_of_a_chat_stream_are_added_to_the_output_text(harness, recorder):
    annotation = {"type": "url_citation", "url_citation": CITATION}
    recorder.script(
        Scripted(
            events=[
                chat_chunk({"role": "assistant", "content": "Sunny"}),
                chat_chunk({"content": "."}),
                chat_chunk({"annotations": [annotation]}),
                chat_chunk({}, "stop"),
                chat_chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 4}),
            ]
        )
    )
    request = responses_request("gpt-chat", {"input": "Weather?"}, stream=True)

    reply = await harness.handle(request)

    events = harness.stream_of(request.request_id)
    [added] = [e.data for e in events if e.event == "response.output_text.annotation.added"]
    assert (added["annotation_index"], added["content_index"]) == (0, 0)
    assert added["annotation"] == {"type": "url_citation", **CITATION}
    final = sdk_final_response(events)
    [part] = final.output[0].content
    assert (part.text, [a.url for a in part.annotations]) == ("Sunny.", [CITATION["url"]])
    assert reply.data.response["output"] == events[-1].data["response"]["output"]


LEGACY_CALL = {"name": "get_weather", "arguments": '{"location": "Oslo"}'}


async def test_a_legacy_function_call_reply_becomes_a_function_call_item(harness, recorder):
    message = {"role": "assistant", "content": None, "function_call": LEGACY_CALL}
    recorder.script(Scripted(json=_chat_reply(message, "function_call")))

    reply = await harness.handle(responses_request("gpt-chat", {"input": "Weather?"}))

    [call] = Response.model_validate(reply.data.response).output
    assert (call.type, call.name, call.arguments) == ("function_call", *LEGACY_CALL.values())
    assert call.call_id.startswith("call_")


async def test_a_streamed_legacy_function_call_becomes_a_function_call_item(harness, recorder):
    recorder.script(
        Scripted(
            events=[
                chat_chunk({"role": "assistant", "function_call": {"name": "get_weather"}}),
                chat_chunk({"function_call": {"arguments": '{"location":'}}),
                chat_chunk({"function_call": {"arguments": ' "Oslo"}'}}),
                chat_chunk({}, "function_call"),
                chat_chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 4}),
            ]
        )
    )
    request = responses_request("gpt-chat", {"input": "Weather?"}, stream=True)

    await harness.handle(request)

    [call] = sdk_final_response(harness.stream_of(request.request_id)).output
    assert (call.name, call.arguments) == ("get_weather", '{"location": "Oslo"}')


# ------------------------------------------- a translated answer cut off is incomplete


def _anthropic_stream_stopped_by(stop_reason: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        anthropic(
            "message_start",
            message={
                "id": "msg_cut",
                "type": "message",
                "role": "assistant",
                "model": "upstream-claude",
                "content": [],
                "usage": {"input_tokens": 4, "output_tokens": 1},
            },
        ),
        anthropic("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        anthropic("content_block_delta", index=0, delta={"type": "text_delta", "text": "Cut sh"}),
        anthropic("content_block_stop", index=0),
        anthropic(
            "message_delta",
            delta={"stop_reason": stop_reason, "stop_sequence": None},
            usage={"output_tokens": 16},
        ),
        anthropic("message_stop"),
    ]


def _cut_off_replies(model: str, reason: str, *, stream: bool) -> Scripted:
    """The upstream's answer to `model`, stopped by `reason` (a Chat finish reason or an
    Anthropic stop reason), in JSON or as a stream."""
    if model == "gpt-chat":
        if stream:
            return Scripted(
                events=[
                    chat_chunk({"role": "assistant", "content": "Cut sh"}),
                    chat_chunk({}, reason),
                    chat_chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 16}),
                ]
            )
        return Scripted(json=_chat_reply({"role": "assistant", "content": "Cut sh"}, reason))
    if stream:
        return Scripted(events=_anthropic_stream_stopped_by(reason))
    return Scripted(json={**anthropic_text_reply("Cut sh"), "stop_reason": reason})


@pytest.mark.parametrize(
    ("model", "reason", "incomplete_reason"),
    [
        ("gpt-chat", "length", "max_output_tokens"),
        ("gpt-chat", "content_filter", "content_filter"),
        ("claude", "max_tokens", "max_output_tokens"),
        ("claude", "refusal", "content_filter"),
        ("claude", "model_context_window_exceeded", "max_output_tokens"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_message_of_a_translated_response_cut_off_is_incomplete_too(
    harness, recorder, model, reason, incomplete_reason, stream
):
    recorder.script(_cut_off_replies(model, reason, stream=stream))
    request = responses_request(
        model, {"input": "Tell a long story", "max_output_tokens": 16}, stream=stream
    )

    reply = await harness.handle(request)

    response = reply.data.response
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": incomplete_reason}
    # As a Responses server says it: the message the answer was cut off in is incomplete.
    assert [(item["type"], item["status"]) for item in response["output"]] == [
        ("message", "incomplete")
    ]
    if stream:
        events = harness.stream_of(request.request_id)
        done = [e.data["item"] for e in events if e.event == "response.output_item.done"]
        assert [item["status"] for item in done] == ["incomplete"]
        last = events[-1]
        assert last.event == "response.incomplete"
        assert last.data["response"]["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_only_the_item_cut_off_is_incomplete(harness, recorder, stream):
    calls = [
        {
            "index": n,
            "id": f"call_{n}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": arguments},
        }
        for n, arguments in enumerate(['{"loc": "Oslo"}', '{"loc'])
    ]
    message = {"role": "assistant", "content": "Checking.", "tool_calls": calls}
    if stream:
        recorder.script(
            Scripted(
                events=[
                    chat_chunk({"role": "assistant", "content": "Checking."}),
                    *(chat_chunk({"tool_calls": [call]}) for call in calls),
                    chat_chunk({}, "length"),
                ]
            )
        )
    else:
        recorder.script(Scripted(json=_chat_reply(message, "length")))

    reply = await harness.handle(
        responses_request("gpt-chat", {"input": "Weather?"}, stream=stream)
    )

    response = reply.data.response
    assert response["status"] == "incomplete"
    # The message was whole when the call began; the call is what the limit cut.
    assert [(item["type"], item["status"]) for item in response["output"]] == [
        ("message", "completed"),
        ("function_call", "completed"),
        ("function_call", "incomplete"),
    ]


def _anthropic_calls_stopped_by(stop_reason: str) -> list[tuple[str, dict[str, Any]]]:
    """An Anthropic stream of two tool calls, the second's input cut at `{"q": "b`, then
    `stop_reason`."""
    events = [
        anthropic(
            "message_start",
            message={
                "id": "msg_calls",
                "type": "message",
                "role": "assistant",
                "model": "upstream-claude",
                "content": [],
                "usage": {"input_tokens": 4, "output_tokens": 1},
            },
        )
    ]
    for index, arguments in enumerate(['{"q": "a"}', '{"q": "b']):
        block = {"type": "tool_use", "id": f"toolu_{index}", "name": "lookup", "input": {}}
        events += [
            anthropic("content_block_start", index=index, content_block=block),
            anthropic(
                "content_block_delta",
                index=index,
                delta={"type": "input_json_delta", "partial_json": arguments},
            ),
            anthropic("content_block_stop", index=index),
        ]
    return [
        *events,
        anthropic(
            "message_delta",
            delta={"stop_reason": stop_reason, "stop_sequence": None},
            usage={"output_tokens": 16},
        ),
        anthropic("message_stop"),
    ]


async def test_a_whole_call_is_done_before_an_error_that_follows_it(harness, recorder):
    """A tool call whose arguments are whole is closed when its block ends: a stream that
    fails right after still gave the client the call's `response.output_item.done`."""
    events = _anthropic_calls_stopped_by("tool_use")[:4]  # the first call, whole
    error = {"type": "overloaded_error", "message": "Overloaded"}
    recorder.script(Scripted(events=[*events, anthropic("error", error=error)]))
    request = responses_request("claude", {"input": "Look it up"}, stream=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatFailed), reply
    done = [
        e.data["item"]
        for e in harness.stream_of(request.request_id)
        if e.event == "response.output_item.done"
    ]
    assert [(item["type"], item["status"], item["arguments"]) for item in done] == [
        ("function_call", "completed", '{"q": "a"}')
    ]


@pytest.mark.parametrize(
    ("stop_reason", "statuses"),
    [("max_tokens", ["completed", "incomplete"]), ("tool_use", ["completed", "completed"])],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_call_an_anthropic_limit_cut_off_is_incomplete(
    harness, recorder, stop_reason, statuses, stream
):
    """A tool call whose input the limit cut (no whole JSON) is `incomplete`, in the
    stream's `response.output_item.done` as in the final response, so an agent loop does
    not run it; the call before it, whole, is `completed`. Anthropic's stop reason comes
    after the block's end, so the item is closed when the next block starts or the stream
    ends."""
    if stream:
        recorder.script(Scripted(events=_anthropic_calls_stopped_by(stop_reason)))
    else:
        content = [
            {"type": "tool_use", "id": "toolu_0", "name": "lookup", "input": {"q": "a"}},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}},
        ]
        reply = {**anthropic_text_reply(""), "content": content, "stop_reason": stop_reason}
        recorder.script(Scripted(json=reply))
    request = responses_request("claude", {"input": "Look both up"}, stream=stream)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    output = reply.data.response["output"]
    assert [(item["type"], item["status"]) for item in output] == [
        ("function_call", status) for status in statuses
    ]
    if stream:
        events = harness.stream_of(request.request_id)
        done = [e.data["item"] for e in events if e.event == "response.output_item.done"]
        assert [item["status"] for item in done] == statuses
        assert [item["arguments"] for item in done] == ['{"q": "a"}', '{"q": "b']
        assert [e.event for e in events][-3:] == [
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.incomplete" if stop_reason == "max_tokens" else "response.completed",
        ]


async def test_a_translated_response_that_completes_has_a_completed_message(harness, recorder):
    recorder.script(Scripted(json=anthropic_text_reply("Cold.")))

    reply = await harness.handle(responses_request("claude", {"input": "Weather?"}))

    response = reply.data.response
    assert response["status"] == "completed"
    assert [item["status"] for item in response["output"]] == ["completed"]


def test_a_responses_json_mode_reaches_anthropic_without_a_format_and_a_schema_closed():
    # Anthropic has no schema-less JSON mode, and refuses an object schema left open.
    body = {
        "model": "claude",
        "input": "Answer in JSON.",
        "text": {"format": {"type": "json_object"}},
    }
    assert "output_config" not in responses_request_to_messages(body)
    with pytest.raises(TranslationError) as refused:  # as OpenAI refuses it
        responses_request_to_messages({**body, "input": "Answer."})
    assert refused.value.param == "input"

    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {}}}}
    body["text"] = {"format": {"type": "json_schema", "name": "w", "schema": schema}}
    assert responses_request_to_messages(body)["output_config"]["format"]["schema"] == {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {}, "additionalProperties": False}},
        "additionalProperties": False,
    }


def test_the_include_values_taken_are_the_openai_sdks():
    # Kept by hand in `common` for services without the SDK; a newer SDK naming another
    # value shows here.
    import typing

    from openai.types.responses.response_includable import ResponseIncludable

    from switchyard.common.responses import RESPONSE_INCLUDABLE

    assert frozenset(typing.get_args(ResponseIncludable)) == RESPONSE_INCLUDABLE


async def test_a_call_held_when_the_upstream_fails_still_reaches_the_client(harness, recorder):
    # Its item waits for its arguments to begin; the upstream's error ends the stream
    # first: the client still sees the call it was making before the failure.
    recorder.script(
        Scripted(
            events=[
                chat_chunk({"role": "assistant", "content": "Let me check."}),
                _call_start(0, "call_a", "get_weather"),
                (None, {"error": {"message": "The model crashed.", "type": "server_error"}}),
            ]
        )
    )
    request = responses_request("gpt-chat", {"input": "Weather?"}, stream=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatFailed)
    added = [
        event.data["item"]
        for event in harness.stream_of(request.request_id)
        if event.data["type"] == "response.output_item.added"
    ]
    assert [(item["type"], item.get("name")) for item in added] == [
        ("message", None),
        ("function_call", "get_weather"),
    ]
