"""Real SDK round trips through the translation layer, both directions.

A minimal front end stands in for the gateway (`/v1/messages` and `/v1/chat/completions`
over the handler on the in-memory bus, shaped with `switchyard.common.translate` exactly
as the gateway does), and the official `anthropic` and `openai` SDKs call it:
- the Anthropic SDK reaching an OpenAI-protocol deployment (Anthropic -> OpenAI -> back);
- the OpenAI SDK reaching an Anthropic-protocol deployment (OpenAI -> Anthropic -> back);
each with and without streaming, text and tool calls. The simulator is the upstream."""

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

from switchyard.common.events import ChatChunk, ChatFailed
from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.common.topics import Topics
from switchyard.common.translate import (
    OpenAIToAnthropicStream,
    anthropic_request_to_openai,
    anthropic_sse,
    openai_response_to_anthropic,
)
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


def front_end(harness: Harness) -> Starlette:
    """What the gateway does with a request and its events, minus auth and Kafka."""

    async def run(api: str, body: dict[str, Any]) -> tuple[list[ChatChunk], Any]:
        request = chat_request(
            model=body["model"], body=body, stream=bool(body.get("stream")), api=api
        )
        await harness.handler(request)
        reply = await harness.reply(request.request_id)
        return harness.chunks_of(request.request_id), reply

    async def messages(request: Request) -> Response:
        anthropic_body = orjson.loads(await request.body())
        body = anthropic_request_to_openai(anthropic_body)
        chunks, reply = await run("anthropic", body)
        if isinstance(reply, ChatFailed):
            return JSONResponse(
                {
                    "type": "error",
                    "error": {"type": "api_error", "message": reply.data.error.message},
                },
                status_code=reply.data.error.status,
            )
        if not body.get("stream"):
            return JSONResponse(openai_response_to_anthropic(reply.data.response, body["model"]))
        converter = OpenAIToAnthropicStream(body["model"])
        events = [event for chunk in chunks for event in converter.feed(chunk.data.chunk)]
        events += converter.finish(
            input_tokens=reply.data.usage.input_tokens,
            output_tokens=reply.data.usage.output_tokens,
        )
        return Response(
            b"".join(anthropic_sse(event) for event in events), media_type="text/event-stream"
        )

    async def chat_completions(request: Request) -> Response:
        body = orjson.loads(await request.body())
        chunks, reply = await run("openai", body)
        if isinstance(reply, ChatFailed):
            return JSONResponse(
                {"error": {"message": reply.data.error.message, "type": reply.data.error.type}},
                status_code=reply.data.error.status,
            )
        if not body.get("stream"):
            return JSONResponse(reply.data.response)
        lines = [b"data: " + orjson.dumps(chunk.data.chunk) + b"\n\n" for chunk in chunks]
        return Response(b"".join(lines) + b"data: [DONE]\n\n", media_type="text/event-stream")

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
