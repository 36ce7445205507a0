"""The provider simulator, driven by the official `openai` and `anthropic` SDKs over real
HTTP: if these pass, an application pointed at the simulator cannot tell it from the real
providers' wire protocols."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from switchyard.common.testing.infra import async_wait_until

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


@pytest.fixture
async def openai_client(simulator) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        base_url=simulator.openai_url, api_key="sim", max_retries=0, timeout=5
    )
    yield client
    await client.close()


@pytest.fixture
async def anthropic_client(simulator) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(
        base_url=simulator.root, api_key="sim", max_retries=0, timeout=5
    )
    yield client
    await client.close()


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------ OpenAI


async def test_openai_completion_replies_deterministically_with_word_counts(openai_client) -> None:
    completion = await openai_client.chat.completions.create(
        model="sim-small",
        messages=[{"role": "system", "content": "Be brief"}, *user("Hello there")],
    )

    assert completion.object == "chat.completion"
    assert completion.model == "sim-small"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Simulated reply to: Hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 5)
    assert completion.usage.total_tokens == 9


async def test_openai_content_parts_and_last_user_message_are_used(openai_client) -> None:
    completion = await openai_client.chat.completions.create(
        model="sim-large",
        messages=[
            *user("first question"),
            {"role": "assistant", "content": "an answer"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "part"}],
            },
        ],
    )
    assert completion.choices[0].message.content == "Simulated reply to: second part"
    assert completion.model == "sim-large"


async def test_openai_stream_delivers_the_reply_in_several_chunks_then_usage(openai_client) -> None:
    stream = await openai_client.chat.completions.create(
        model="sim-small",
        messages=user("stream me a few words please"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in with_choices if c.choices[0].delta.content]
    assert len(texts) >= 3
    assert "".join(texts) == "Simulated reply to: stream me a few words please"
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 9
    assert len({c.id for c in chunks}) == 1


async def test_openai_stream_without_include_usage_has_no_usage_chunk(openai_client) -> None:
    stream = await openai_client.chat.completions.create(
        model="sim-small", messages=user("hi"), stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


async def test_openai_weather_question_with_tools_gets_a_tool_call(openai_client) -> None:
    completion = await openai_client.chat.completions.create(
        model="sim-small", messages=user("What's the weather in Paris?"), tools=[WEATHER_TOOL]
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}


async def _after_tool_results(openai_client, **options: Any) -> Any:
    """The reply to an agent loop's second turn: a weather question, the simulated model's
    call of the weather tool, and the tool's result."""
    asked = user("What's the weather in Paris?")
    first = await openai_client.chat.completions.create(
        model="sim-small", messages=asked, tools=[WEATHER_TOOL]
    )
    call = first.choices[0].message.tool_calls[0]
    return await openai_client.chat.completions.create(
        model="sim-small",
        messages=[
            *asked,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny 20C"},
        ],
        tools=[WEATHER_TOOL],
        **options,
    )


async def test_openai_tool_results_are_answered_not_called_for_again(openai_client) -> None:
    # An agent loop's second turn: the tool's result ends the loop with a text answer.
    second = await _after_tool_results(openai_client)
    choice = second.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content == "Simulated reply to: sunny 20C"


async def test_a_forced_tool_choice_calls_a_tool_even_after_tool_results(
    openai_client, anthropic_client
) -> None:
    """A forced `tool_choice` makes the real APIs call a tool on every turn, also one
    answering tool results; the Vercel AI SDK's structured output over Anthropic's API (its
    `json` tool forced with `any`) relies on it."""
    second = await _after_tool_results(openai_client, tool_choice="required")
    assert second.choices[0].finish_reason == "tool_calls"
    tool = {
        "name": "json",
        "input_schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
    }
    reply = await anthropic_client.messages.create(
        model="sim-claude",
        max_tokens=64,
        messages=[
            {"role": "user", "content": "What's the weather in Paris?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "json", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}],
            },
        ],
        tools=[tool],
        tool_choice={"type": "any"},
    )
    assert reply.stop_reason == "tool_use"
    assert [block.type for block in reply.content][-1] == "tool_use"


async def test_openai_streamed_tool_call_reassembles_to_valid_arguments(openai_client) -> None:
    stream = await openai_client.chat.completions.create(
        model="sim-small", messages=user("weather for Lyon"), tools=[WEATHER_TOOL], stream=True
    )
    name, arguments, finish = None, "", None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            name = name or call.function.name
            arguments += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert (name, json.loads(arguments), finish) == (
        "get_weather",
        {"location": "Lyon"},
        "tool_calls",
    )


async def test_without_tools_weather_is_just_text(openai_client) -> None:
    completion = await openai_client.chat.completions.create(
        model="sim-small", messages=user("weather?")
    )
    assert completion.choices[0].message.content == "Simulated reply to: weather?"


async def test_embeddings_are_deterministic_with_default_and_requested_dimensions(
    openai_client,
) -> None:
    first = await openai_client.embeddings.create(model="sim-embed", input=["alpha", "beta"])
    again = await openai_client.embeddings.create(model="sim-embed", input="alpha")
    sized = await openai_client.embeddings.create(model="sim-embed", input="alpha", dimensions=3)

    assert [len(item.embedding) for item in first.data] == [8, 8]
    assert first.data[0].embedding == again.data[0].embedding
    assert first.data[0].embedding != first.data[1].embedding
    assert len(sized.data[0].embedding) == 3
    assert first.usage.prompt_tokens == 2


async def test_embeddings_base64_encoding_decodes_to_the_float_vector(openai_client) -> None:
    floats = await openai_client.embeddings.create(model="e", input="alpha")
    raw = await openai_client.embeddings.with_raw_response.create(
        model="e", input="alpha", encoding_format="base64"
    )
    encoded = json.loads(raw.content)["data"][0]["embedding"]
    decoded = struct.unpack("<8f", base64.b64decode(encoded))
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-6)


async def test_models_lists_the_simulated_models(openai_client) -> None:
    models = [model.id async for model in openai_client.models.list()]
    assert models == ["sim-small", "sim-large"]


async def test_openai_malformed_input_is_a_400_in_openai_shape(openai_client, simulator) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(model="sim-small", messages=[])
    assert "messages" in caught.value.message
    assert caught.value.body["type"] == "invalid_request_error"

    async with httpx.AsyncClient() as http:
        response = await http.post(f"{simulator.openai_url}/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The request body is not valid JSON."


# ------------------------------------------------------------------ Anthropic


async def test_anthropic_message_has_the_official_shape(anthropic_client) -> None:
    message = await anthropic_client.messages.create(
        model="sim-small", max_tokens=50, system="You are terse", messages=user("Hello Claude")
    )

    assert (
        message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    )
    assert message.model == "sim-small"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Simulated reply to: Hello Claude"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 5)


async def test_anthropic_stream_helper_yields_text_and_final_message(anthropic_client) -> None:
    async with anthropic_client.messages.stream(
        model="sim-small", max_tokens=50, messages=user("tell me a short story now")
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()

    assert len(pieces) >= 3
    assert "".join(pieces) == "Simulated reply to: tell me a short story now"
    assert final.content[0].text == "".join(pieces)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 9


async def test_anthropic_raw_stream_events_come_in_protocol_order(anthropic_client) -> None:
    stream = await anthropic_client.messages.create(
        model="sim-small", max_tokens=50, messages=user("order please"), stream=True
    )
    types = [event.type async for event in stream]

    deltas = types.count("content_block_delta")
    assert deltas >= 2
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_anthropic_weather_question_with_tools_gets_tool_use(anthropic_client) -> None:
    tool = {
        "name": "get_weather",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
    }
    message = await anthropic_client.messages.create(
        model="sim-small", max_tokens=50, tools=[tool], messages=user("weather in Oslo")
    )
    assert message.stop_reason == "tool_use"
    assert (message.content[0].name, message.content[0].input) == (
        "get_weather",
        {"location": "Oslo"},
    )

    async with anthropic_client.messages.stream(
        model="sim-small", max_tokens=50, tools=[tool], messages=user("weather in Oslo")
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].input == {"location": "Oslo"}


async def test_a_weather_call_fits_its_tools_own_schema(anthropic_client, openai_client) -> None:
    """A tool asking for a `city` and a `unit` gets both (an SDK's tool runner validates
    the arguments against the schema): the place in the city, the first unit allowed."""
    schema = {
        "type": "object",
        "properties": {
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "city": {"type": "string"},
        },
        "required": ["city", "unit"],
    }
    message = await anthropic_client.messages.create(
        model="sim-small",
        max_tokens=50,
        tools=[{"name": "get_weather", "input_schema": schema}],
        messages=user("What's the weather in Oslo?"),
    )
    assert message.content[0].input == {"city": "Oslo", "unit": "celsius"}
    completion = await openai_client.chat.completions.create(
        model="sim-small",
        messages=user("What's the weather in Oslo?"),
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": schema}}],
    )
    arguments = completion.choices[0].message.tool_calls[0].function.arguments
    assert json.loads(arguments) == {"city": "Oslo", "unit": "celsius"}


async def test_anthropic_malformed_input_is_a_400_in_anthropic_shape(
    anthropic_client, simulator
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await anthropic_client.messages.create(model="sim-small", max_tokens=10, messages=[])
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"

    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{simulator.root}/v1/messages", json={"model": "sim-small", "messages": user("hi")}
        )  # no max_tokens
    assert response.status_code == 400
    assert "max_tokens" in response.json()["error"]["message"]


async def test_anthropic_count_tokens_equals_the_input_a_message_reports(anthropic_client):
    body = {"system": "Be brief.", "messages": user("How many words are here?")}
    counted = await anthropic_client.messages.count_tokens(model="sim-claude", **body)
    message = await anthropic_client.messages.create(model="sim-claude", max_tokens=10, **body)
    assert counted.input_tokens == message.usage.input_tokens == 7
    with pytest.raises(anthropic.BadRequestError):
        await anthropic_client.messages.count_tokens(model="sim-claude", messages=[])


async def test_responses_input_tokens_equal_the_input_a_response_reports(openai_client):
    body = {"instructions": "Be brief.", "input": "How many words are here?"}
    counted = await openai_client.responses.input_tokens.count(model="sim-small", **body)
    response = await openai_client.responses.create(model="sim-small", **body)
    assert counted.object == "response.input_tokens"
    assert counted.input_tokens == response.usage.input_tokens == 7
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.responses.input_tokens.count(
            model="sim-small", input="hi", extra_body={"max_output_tokens": 20}
        )
    assert refused.value.body["param"] == "max_output_tokens"


# ------------------------------------------------------------------ control API


async def test_faults_are_consumed_in_order_then_requests_succeed(openai_client, simulator) -> None:
    simulator.fault(status=429, count=1, retry_after=7)
    simulator.fault(status=500, count=1, should_retry=False)

    with pytest.raises(openai.RateLimitError) as rate_limited:
        await openai_client.chat.completions.create(model="sim-small", messages=user("a"))
    assert rate_limited.value.response.headers["retry-after"] == "7"
    assert "x-should-retry" not in rate_limited.value.response.headers
    with pytest.raises(openai.InternalServerError) as server_error:
        await openai_client.chat.completions.create(model="sim-small", messages=user("b"))
    assert server_error.value.response.headers["x-should-retry"] == "false"
    ok = await openai_client.chat.completions.create(model="sim-small", messages=user("c"))

    assert ok.choices[0].message.content == "Simulated reply to: c"
    assert simulator.stats()["routes"]["/v1/chat/completions"] == 3


async def test_fault_for_one_model_leaves_other_models_alone(openai_client, simulator) -> None:
    simulator.fault(status=503, model="sim-large")

    small = await openai_client.chat.completions.create(model="sim-small", messages=user("x"))
    with pytest.raises(openai.APIStatusError) as caught:
        await openai_client.chat.completions.create(model="sim-large", messages=user("x"))

    assert small.choices[0].message.content == "Simulated reply to: x"
    assert caught.value.status_code == 503
    assert simulator.stats()["models"] == {"sim-small": 1, "sim-large": 1}


async def test_anthropic_faults_use_anthropic_error_shape(anthropic_client, simulator) -> None:
    simulator.fault(status=429)
    with pytest.raises(anthropic.RateLimitError) as caught:
        await anthropic_client.messages.create(model="sim-small", max_tokens=5, messages=user("x"))
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Simulated fault: HTTP 429."},
    }


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(409, "invalid_request_error"), (422, "invalid_request_error"), (529, "overloaded_error")],
)
async def test_anthropic_faults_carry_the_type_anthropic_documents_for_the_status(
    anthropic_client, simulator, status: int, error_type: str
) -> None:
    simulator.fault(status=status)
    with pytest.raises(anthropic.APIStatusError) as caught:
        await anthropic_client.messages.create(model="sim-small", max_tokens=5, messages=user("x"))
    assert caught.value.status_code == status
    assert caught.value.body["error"]["type"] == error_type


async def test_hang_fault_makes_the_client_time_out(simulator) -> None:
    simulator.fault(hang=True)
    client = openai.AsyncOpenAI(
        base_url=simulator.openai_url, api_key="sim", max_retries=0, timeout=0.3
    )
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="sim-small", messages=user("x"))
    await client.close()
    assert 0.25 < time.monotonic() - started < 2


async def test_clearing_faults_restores_normal_answers(openai_client, simulator) -> None:
    simulator.fault(status=500, count=5)
    simulator.control.delete("/_sim/faults").raise_for_status()
    ok = await openai_client.chat.completions.create(model="sim-small", messages=user("x"))
    assert ok.choices[0].finish_reason == "stop"
    assert simulator.stats()["faults_pending"] == 0


async def test_latency_applies_to_replies_and_is_spread_over_stream_chunks(
    openai_client, simulator
) -> None:
    # Long enough to stand out from how slow a loaded machine makes any request.
    latency_s = 1.0
    simulator.latency(latency_s * 1000)
    started = time.monotonic()
    await openai_client.chat.completions.create(model="sim-small", messages=user("slow"))
    slow = time.monotonic() - started
    assert slow >= latency_s

    stream = await openai_client.chat.completions.create(
        model="sim-small", messages=user("one two three four five six"), stream=True
    )
    arrivals = [time.monotonic() async for _ in stream]
    # Chunks trickle in rather than arriving at once.
    assert arrivals[-1] - arrivals[0] >= 0.75 * latency_s

    simulator.latency(0)
    started = time.monotonic()
    await openai_client.chat.completions.create(model="sim-small", messages=user("fast"))
    fast = time.monotonic() - started
    # Compared with the slow request (the same work but the latency), not with a fixed
    # bound: the latency is gone.
    assert slow - fast > latency_s / 2, (slow, fast)


def test_control_api_rejects_invalid_faults_and_latency(simulator) -> None:
    assert simulator.control.post("/_sim/faults", json={"status": 200}).status_code == 400
    assert (
        simulator.control.post("/_sim/faults", json={"status": 500, "count": 0}).status_code == 400
    )
    assert simulator.control.put("/_sim/latency", json={"latency_ms": -1}).status_code == 400
    assert simulator.stats()["faults_pending"] == 0


def test_reset_clears_counts(simulator) -> None:
    httpx.get(f"{simulator.openai_url}/models")
    assert simulator.stats()["routes"] == {"/v1/models": 1}
    simulator.control.post("/_sim/reset")
    assert simulator.stats()["total"] == 0


async def test_mid_stream_fault_fails_an_openai_stream_after_some_chunks(
    openai_client, simulator
) -> None:
    simulator.fault(stream_error_after=2)
    stream = await openai_client.chat.completions.create(
        model="sim-small", messages=user("a b c d e f"), stream=True
    )
    received = []
    with pytest.raises(openai.APIError, match="mid-stream"):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 2


async def test_a_mid_stream_fault_waits_for_a_streaming_request(openai_client, simulator) -> None:
    """ "Streaming requests only": a request that is not streamed passes the fault by,
    and the next streamed one takes it."""
    simulator.fault(status=503, stream_error_after=1)
    answered = await openai_client.chat.completions.create(model="sim-small", messages=user("x"))
    assert answered.choices[0].message.content
    assert simulator.stats()["faults_pending"] == 1

    stream = await openai_client.chat.completions.create(
        model="sim-small", messages=user("a b c d"), stream=True
    )
    with pytest.raises(openai.APIError, match="mid-stream"):
        async for _ in stream:
            pass
    assert simulator.stats()["faults_pending"] == 0


async def test_mid_stream_fault_sends_an_anthropic_error_event(anthropic_client, simulator) -> None:
    simulator.fault(stream_error_after=4)
    stream = await anthropic_client.messages.create(
        model="sim-claude", max_tokens=10, messages=user("a b c d e f"), stream=True
    )
    types = []
    with pytest.raises(anthropic.APIStatusError, match="mid-stream"):
        async for event in stream:
            types.append(event.type)
    assert types == ["message_start", "content_block_start", "content_block_delta"]  # + a ping


async def test_abandoned_streams_are_counted(simulator) -> None:
    simulator.latency(2000)
    async with (
        httpx.AsyncClient(base_url=simulator.openai_url, timeout=5) as client,
        client.stream(
            "POST",
            "/chat/completions",
            json={"model": "sim-small", "messages": user("a b c d"), "stream": True},
        ) as response,
    ):
        async for _ in response.aiter_lines():
            break  # the first event, then hang up

    async def aborted() -> bool:
        return simulator.stats()["streams_aborted"] == 1

    await async_wait_until(aborted, timeout=3, interval=0.05, message="abandoned stream")


def test_invalid_mid_stream_fault_is_refused(simulator) -> None:
    response = simulator.control.post("/_sim/faults", json={"stream_error_after": -1})
    assert response.status_code == 400


def test_simulator_exposes_prometheus_metrics():
    from prometheus_client import Gauge
    from starlette.testclient import TestClient

    from switchyard.simulator.app import create_simulator_app

    # A service module imported into the same process registers its metrics at zero:
    # the simulator's scrape must not report them as its own.
    try:
        Gauge("switchyard_auth_simulator_probe", "an auth metric imported by the process")
    except ValueError:
        pass  # registered by an earlier run in this process
    response = TestClient(create_simulator_app()).get("/metrics")
    assert response.status_code == 200
    assert "process_cpu_seconds_total" in response.text or "python_gc_objects" in response.text
    assert "switchyard_auth_" not in response.text


async def test_openai_prompt_cache_reports_cached_tokens_from_the_second_request(
    openai_client,
) -> None:
    messages = [
        {"role": "system", "content": "a long shared prefix of words"},
        {"role": "user", "content": "question"},
    ]
    first = await openai_client.chat.completions.create(model="sim-small", messages=messages)
    second = await openai_client.chat.completions.create(model="sim-small", messages=messages)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == 6
    assert second.usage.prompt_tokens == first.usage.prompt_tokens  # part of it, not on top


async def test_images_in_tool_results_are_seen_by_the_anthropic_protocol(anthropic_client) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    message = await anthropic_client.messages.create(
        model="sim-claude",
        max_tokens=10,
        messages=[
            {"role": "user", "content": "look"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [image]},
                    {"type": "text", "text": "what is it"},
                ],
            },
        ],
    )
    assert message.content[0].text == "Simulated reply to: what is it (with 1 image)"


async def test_thinking_blocks_sent_back_without_their_signature_are_refused(
    anthropic_client,
) -> None:
    with pytest.raises(anthropic.BadRequestError, match="signature"):
        await anthropic_client.messages.create(
            model="sim-claude",
            max_tokens=10,
            messages=[
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "x"}]},
                {"role": "user", "content": "b"},
            ],
        )


def test_the_switchyard_cli_runs_the_simulator_from_its_own_distribution() -> None:
    from typer.testing import CliRunner

    from switchyard.common.cli import build
    from switchyard.common.plugins import by_name

    result = CliRunner().invoke(build(), ["simulator", "--help"])
    assert result.exit_code == 0, result.output
    assert "--latency-ms" in result.output
    # The inference service no longer carries it: its image has no simulator.
    assert by_name("inference").commands() == []


# ------------------------------------------------------------------ tool_choice

LOOKUP = {
    "name": "lookup",
    "description": "Find an order",
    "schema": {
        "type": "object",
        "properties": {"order_id": {"type": "integer", "minimum": 7}},
        "required": ["order_id"],
    },
}


def _chat_tools() -> list[dict]:
    return [
        WEATHER_TOOL,
        {
            "type": "function",
            "function": {"name": LOOKUP["name"], "parameters": LOOKUP["schema"]},
        },
    ]


@pytest.mark.parametrize(
    ("text", "tool_choice", "called"),
    [
        ("Where is my order?", {"type": "function", "function": {"name": "lookup"}}, "lookup"),
        ("Where is my order?", "required", "get_weather"),
        ("Where is my order?", "auto", None),
        ("What is the weather in Oslo?", "none", None),
        ("What is the weather in Oslo?", "auto", "get_weather"),
    ],
)
async def test_chat_follows_tool_choice(openai_client, text, tool_choice, called) -> None:
    completion = await openai_client.chat.completions.create(
        model="sim-small", messages=user(text), tools=_chat_tools(), tool_choice=tool_choice
    )
    calls = completion.choices[0].message.tool_calls or []
    assert [call.function.name for call in calls] == ([called] if called else [])
    if called == "lookup":
        assert json.loads(calls[0].function.arguments) == {"order_id": 7}


@pytest.mark.parametrize(
    ("text", "tool_choice", "called"),
    [
        ("Where is my order?", {"type": "tool", "name": "lookup"}, "lookup"),
        ("Where is my order?", {"type": "any"}, "get_weather"),
        ("Where is my order?", {"type": "auto"}, None),
        ("What is the weather in Oslo?", {"type": "none"}, None),
    ],
)
async def test_messages_follow_tool_choice(anthropic_client, text, tool_choice, called) -> None:
    tools = [
        {"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"]},
        {"name": LOOKUP["name"], "input_schema": LOOKUP["schema"]},
    ]
    message = await anthropic_client.messages.create(
        model="sim-small", max_tokens=64, messages=user(text), tools=tools, tool_choice=tool_choice
    )
    calls = [block for block in message.content if block.type == "tool_use"]
    assert [call.name for call in calls] == ([called] if called else [])
    assert message.stop_reason == ("tool_use" if called else "end_turn")
    if called == "lookup":
        assert calls[0].input == {"order_id": 7}


async def test_responses_follow_a_named_tool_choice(openai_client) -> None:
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "parameters": WEATHER_TOOL["function"]["parameters"],
        },
        {"type": "function", "name": LOOKUP["name"], "parameters": LOOKUP["schema"]},
    ]
    response = await openai_client.responses.create(
        model="sim-small",
        input="Where is my order?",
        tools=tools,
        tool_choice={"type": "function", "name": "lookup"},
    )
    [call] = [item for item in response.output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("lookup", {"order_id": 7})


async def test_a_message_thread_is_refused_as_the_sdks_recover_from(anthropic_client) -> None:
    """The simulator keeps no conversation between requests: `thread` is refused with
    `error.details.error_code` `thread_unsupported_request`, and the SDK's tool runner
    (which threads by default) goes on with the whole conversation and no thread."""
    with pytest.raises(anthropic.BadRequestError) as refused:
        await anthropic_client.beta.messages.create(
            model="sim-claude", max_tokens=16, messages=user("hi"), thread={"type": "create"}
        )
    assert refused.value.body["error"]["details"] == {"error_code": "thread_unsupported_request"}

    @anthropic.beta_async_tool
    async def weather(location: str) -> str:
        """The weather at `location`."""
        return "Sunny"

    runner = anthropic_client.beta.messages.tool_runner(
        model="sim-claude",
        max_tokens=64,
        messages=user("What is the weather in Paris?"),
        tools=[weather],
    )
    last = await runner.until_done()
    assert last.stop_reason == "end_turn"
