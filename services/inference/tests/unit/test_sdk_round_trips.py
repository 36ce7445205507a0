"""Real SDK round trips, pass-through and translated, both directions.

A minimal front end stands in for the gateway and does exactly what the gateway does
with event contract v2 (`relay`): it publishes the client's body unchanged with the
client's API and forwarded headers, answers a JSON request with `chat.completed`'s
`response`, relays every stream event as one SSE event (`event:` line when named), ends
an OpenAI stream with `data: [DONE]`, and turns a `chat.failed` into the error in the
client's format (an HTTP error before any event, an SSE error event after). The official
`anthropic` and `openai` SDKs call it; the simulator is the upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from switchyard.common.events import FORWARDED_HEADERS, ChatFailed, ClientAPI, ErrorInfo
from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.common.topics import Topics
from switchyard.inference.providers import ProviderPool
from switchyard.inference.testing import Harness, chat_request

TOPICS = Topics("sdk")
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
}
WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


def error_body(api: ClientAPI, error: ErrorInfo) -> dict[str, Any]:
    if api.vendor == "anthropic":
        return {"type": "error", "error": {"type": error.type, "message": error.message}}
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }


def front_end(harness: Harness) -> Starlette:
    """What the gateway does with a request and its events, minus auth and Kafka."""

    async def relay(api: ClientAPI, request: Request) -> Response:
        body = orjson.loads(await request.body())
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_HEADERS}
        stream = bool(body.get("stream"))
        event = chat_request(
            model=body["model"], body=body, stream=stream, api=api, headers=headers
        )
        await harness.handler(event)
        reply = await harness.reply(event.request_id)
        events = harness.stream_of(event.request_id)
        if isinstance(reply, ChatFailed) and not events:
            error = reply.data.error
            retry = {"retry-after": f"{error.retry_after_s:g}"} if error.retry_after_s else None
            return JSONResponse(error_body(api, error), error.status, headers=retry)
        if not stream:
            return JSONResponse(reply.data.response)
        frames = []
        for item in events:
            head = f"event: {item.event}\n".encode() if item.event else b""
            frames.append(head + b"data: " + orjson.dumps(item.data) + b"\n\n")
        if isinstance(reply, ChatFailed):
            payload = orjson.dumps(error_body(api, reply.data.error))
            head = b"event: error\n" if api.vendor == "anthropic" else b""
            frames.append(head + b"data: " + payload + b"\n\n")
        elif api.vendor == "openai":
            frames.append(b"data: [DONE]\n\n")
        return Response(b"".join(frames), media_type="text/event-stream")

    async def messages(request: Request) -> Response:
        return await relay(ClientAPI.ANTHROPIC_MESSAGES, request)

    async def chat_completions(request: Request) -> Response:
        return await relay(ClientAPI.OPENAI_CHAT_COMPLETIONS, request)

    return Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ]
    )


@pytest.fixture
async def clients(simulator) -> AsyncIterator[tuple[anthropic.AsyncAnthropic, openai.AsyncOpenAI]]:
    routing = RoutingTable(
        models={
            "gpt-sim": ModelRoute(
                name="gpt-sim",
                deployments=[
                    Deployment(
                        name="openai-sim",
                        provider="openai",
                        model="upstream-gpt",
                        base_url=simulator.openai_url,
                    )
                ],
            ),
            "claude-sim": ModelRoute(
                name="claude-sim",
                deployments=[
                    Deployment(
                        name="anthropic-sim",
                        provider="anthropic",
                        model="upstream-claude",
                        base_url=simulator.root,
                    )
                ],
            ),
        }
    )
    providers = ProviderPool()
    harness = await Harness.start(TOPICS, routing=routing, providers=providers)
    transport = httpx2.ASGITransport(app=front_end(harness))
    anthropic_client = anthropic.AsyncAnthropic(
        api_key="sk-test",
        base_url="http://switchyard",
        http_client=httpx2.AsyncClient(transport=transport),
        max_retries=0,
    )
    openai_client = openai.AsyncOpenAI(
        api_key="sk-test",
        base_url="http://switchyard/v1",
        http_client=httpx2.AsyncClient(transport=transport),
        max_retries=0,
    )
    yield anthropic_client, openai_client
    await anthropic_client.close()
    await openai_client.close()
    await harness.stop()
    await providers.aclose()


# ------------------------------------------------ Anthropic SDK -> OpenAI deployment


async def test_anthropic_sdk_gets_a_message_from_an_openai_deployment(clients, simulator) -> None:
    client, _ = clients

    message = await client.messages.create(
        model="gpt-sim",
        max_tokens=100,
        system="You are terse.",
        messages=[{"role": "user", "content": "Hello from Claude's SDK"}],
    )

    assert isinstance(message, anthropic.types.Message)
    assert message.model == "gpt-sim" and message.stop_reason == "end_turn"
    assert message.content[0].text == "Simulated reply to: Hello from Claude's SDK"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 7
    assert simulator.stats()["routes"] == {"/v1/chat/completions": 1}


async def test_anthropic_sdk_tool_use_and_tool_result_through_an_openai_deployment(
    clients,
) -> None:
    client, _ = clients
    first = await client.messages.create(
        model="gpt-sim",
        max_tokens=100,
        tools=[WEATHER_TOOL_ANTHROPIC],
        messages=[{"role": "user", "content": "What is the weather in Lisbon?"}],
    )
    tool_use = first.content[-1]
    assert first.stop_reason == "tool_use"
    assert (tool_use.type, tool_use.name, tool_use.input) == (
        "tool_use",
        "get_weather",
        {"location": "Lisbon"},
    )

    second = await client.messages.create(
        model="gpt-sim",
        max_tokens=100,
        tools=[WEATHER_TOOL_ANTHROPIC],
        messages=[
            {"role": "user", "content": "What is the weather in Lisbon?"},
            {"role": "assistant", "content": [block.to_dict() for block in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": tool_use.id, "content": "21C"},
                    {"type": "text", "text": "thanks"},
                ],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "Simulated reply to: thanks"


async def test_anthropic_sdk_streams_from_an_openai_deployment(clients, simulator) -> None:
    client, _ = clients
    simulator.latency(40)  # paced, so the pieces stay pieces

    async with client.messages.stream(
        model="gpt-sim",
        max_tokens=100,
        messages=[{"role": "user", "content": "stream to Claude's SDK"}],
    ) as stream:
        texts = [text async for text in stream.text_stream]
        message = await stream.get_final_message()

    assert "".join(texts) == "Simulated reply to: stream to Claude's SDK"
    assert len(texts) > 1  # really streamed in pieces
    assert message.content[0].text == "".join(texts)
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 7 and message.usage.input_tokens > 0


async def test_anthropic_sdk_streams_tool_use_from_an_openai_deployment(clients) -> None:
    client, _ = clients

    async with client.messages.stream(
        model="gpt-sim",
        max_tokens=100,
        tools=[WEATHER_TOOL_ANTHROPIC],
        messages=[{"role": "user", "content": "weather in Porto please"}],
    ) as stream:
        message = await stream.get_final_message()

    assert message.stop_reason == "tool_use"
    tool_use = message.content[-1]
    assert (tool_use.name, tool_use.input) == ("get_weather", {"location": "Porto please"})


# ------------------------------------------------ OpenAI SDK -> Anthropic deployment


async def test_openai_sdk_gets_a_completion_from_an_anthropic_deployment(
    clients, simulator
) -> None:
    _, client = clients

    completion = await client.chat.completions.create(
        model="claude-sim",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello from OpenAI's SDK"},
        ],
        max_tokens=50,
        stop=["END"],
    )

    assert completion.model == "claude-sim"
    assert completion.choices[0].message.content == "Simulated reply to: Hello from OpenAI's SDK"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 7
    assert simulator.stats()["routes"] == {"/v1/messages": 1}


async def test_openai_sdk_system_messages_anywhere_reach_an_anthropic_deployment(
    clients, simulator
) -> None:
    # The simulator refuses a `role: "system"` message where Anthropic's placement rules
    # do not allow one: by default the translation puts later ones in `system`.
    _, client = clients

    completion = await client.chat.completions.create(
        model="claude-sim",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "developer", "content": "Now be brief."},
            {"role": "user", "content": "second"},
            {"role": "system", "content": "Answer in English."},
        ],
    )

    assert completion.choices[0].message.content == "Simulated reply to: second"
    assert simulator.stats()["routes"] == {"/v1/messages": 1}


async def test_openai_sdk_tool_calls_and_results_through_an_anthropic_deployment(clients) -> None:
    _, client = clients
    question = {"role": "user", "content": "What is the weather in Madrid?"}
    first = await client.chat.completions.create(
        model="claude-sim", messages=[question], tools=[WEATHER_TOOL_OPENAI]
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"location": "Madrid"},
    )

    second = await client.chat.completions.create(
        model="claude-sim",
        tools=[WEATHER_TOOL_OPENAI],
        messages=[
            question,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "30C"},
            {"role": "user", "content": "and tomorrow"},
        ],
    )
    assert second.choices[0].message.content == "Simulated reply to: and tomorrow"


async def test_openai_sdk_streams_from_an_anthropic_deployment(clients, simulator) -> None:
    _, client = clients
    simulator.latency(40)

    async with client.chat.completions.stream(
        model="claude-sim",
        messages=[{"role": "user", "content": "stream to OpenAI's SDK"}],
        stream_options={"include_usage": True},
    ) as stream:
        deltas = [event.delta async for event in stream if event.type == "content.delta"]
        completion = await stream.get_final_completion()

    assert "".join(deltas) == "Simulated reply to: stream to OpenAI's SDK"
    assert len(deltas) > 1
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 7


async def test_openai_sdk_streams_tool_calls_from_an_anthropic_deployment(clients) -> None:
    _, client = clients

    stream = await client.chat.completions.create(
        model="claude-sim",
        messages=[{"role": "user", "content": "weather in Seville"}],
        tools=[WEATHER_TOOL_OPENAI],
        stream=True,
    )
    arguments, names, finish = [], [], None
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                names += [call.function.name] if call.function.name else []
                arguments.append(call.function.arguments or "")
            finish = choice.finish_reason or finish

    assert names == ["get_weather"] and finish == "tool_calls"
    assert json.loads("".join(arguments)) == {"location": "Seville"}


# ------------------------------------------------ pass-through, as the provider answers


async def test_anthropic_sdk_streams_thinking_with_its_signature_and_sends_it_back(
    clients,
) -> None:
    client, _ = clients
    question = {"role": "user", "content": "Think about Oslo"}

    async with client.messages.stream(
        model="claude-sim",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[question],
    ) as stream:
        first = await stream.get_final_message()

    thinking = first.content[0]
    assert (thinking.type, thinking.thinking) == ("thinking", "Considering: Think about Oslo")
    assert thinking.signature.startswith("sig_")
    # The thinking block goes back in the history; the upstream checks its signature.
    second = await client.messages.create(
        model="claude-sim",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[
            question,
            {"role": "assistant", "content": [block.to_dict() for block in first.content]},
            {"role": "user", "content": "And now?"},
        ],
    )
    assert [block.type for block in second.content] == ["thinking", "text"]
    assert second.content[0].signature.startswith("sig_")


async def test_anthropic_sdk_message_start_carries_the_upstream_token_counts(clients) -> None:
    client, _ = clients
    system = [
        {"type": "text", "text": "A long cached preamble", "cache_control": {"type": "ephemeral"}}
    ]

    for expected_write, expected_read in ((4, 0), (0, 4)):  # the second request hits the cache
        stream = await client.messages.create(
            model="claude-sim",
            max_tokens=100,
            system=system,
            messages=[{"role": "user", "content": "count me"}],
            stream=True,
        )
        events = [event async for event in stream]
        start = events[0]
        assert start.type == "message_start"
        usage = start.message.usage
        assert (usage.input_tokens, usage.cache_creation_input_tokens) == (2, expected_write)
        assert usage.cache_read_input_tokens == expected_read


async def test_anthropic_sdk_stop_sequence_is_reported_with_the_matched_sequence(clients) -> None:
    client, _ = clients
    for model in ("claude-sim", "gpt-sim"):
        message = await client.messages.create(
            model=model,
            max_tokens=100,
            stop_sequences=["STOP"],
            messages=[{"role": "user", "content": "say one STOP two"}],
        )
        assert message.content[0].text == "Simulated reply to: say one "
        if model == "claude-sim":  # passed through; OpenAI does not say which one matched
            assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "STOP")


async def test_overloaded_anthropic_upstream_reaches_the_anthropic_sdk_as_529(
    clients, simulator
) -> None:
    client, _ = clients
    simulator.fault(status=529, count=3, model="upstream-claude", retry_after=0)

    with pytest.raises(anthropic.APIStatusError) as caught:
        await client.messages.create(
            model="claude-sim", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )

    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"


async def test_an_error_inside_an_anthropic_stream_keeps_its_type(clients, simulator) -> None:
    client, _ = clients
    simulator.latency(40)
    simulator.fault(stream_error_after=5, model="upstream-claude", error_type="overloaded_error")

    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(
            model="claude-sim", max_tokens=10, messages=[{"role": "user", "content": "a b c d"}]
        ) as stream:
            async for _ in stream:
                pass

    assert "overloaded_error" in str(caught.value.body)


async def test_system_message_inside_messages_reaches_an_anthropic_deployment(
    clients, simulator
) -> None:
    client, _ = clients
    message = await client.messages.create(
        model="claude-sim",
        max_tokens=10,
        # Where Anthropic's placement rules allow it: right after a user message, last.
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"},
            {"role": "system", "content": "Now be brief."},
        ],
    )
    assert message.content[0].text == "Simulated reply to: second"


async def test_openai_sdk_reads_cache_and_reasoning_tokens_from_an_anthropic_deployment(
    clients,
) -> None:
    _, client = clients
    completion = await client.chat.completions.create(
        model="claude-sim",
        reasoning_effort="low",
        messages=[{"role": "user", "content": "think"}],
    )
    assert completion.usage.completion_tokens_details.reasoning_tokens == 2
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
