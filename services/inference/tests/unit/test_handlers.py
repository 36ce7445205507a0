"""The request handler against the real simulator over HTTP, on the in-memory bus: what a
client waiting on its reply partition, and a billing consumer on the usage topic, see."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from switchyard.common.events import (
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ClientAPI,
    UsageRecorded,
)
from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.common.topics import Topics
from switchyard.inference.handlers import ChatRequestHandler
from switchyard.inference.pricing import Price, PriceTable
from switchyard.inference.providers import ProviderPool
from switchyard.inference.reliability import Backoff
from switchyard.inference.testing import Harness, Scripted, chat_request
from switchyard.inference.upstream import AnthropicUpstream, OpenAIUpstream, create_upstream

TOPICS = Topics("test")


def deployment(simulator, name: str, upstream: str, **options: Any) -> Deployment:
    options = {"max_retries": 0, "timeout_s": 5, **options}
    return Deployment(
        name=name, provider="openai", model=upstream, base_url=simulator.openai_url, **options
    )


def anthropic_deployment(simulator, name: str, upstream: str, **options: Any) -> Deployment:
    options = {"max_retries": 0, "timeout_s": 5, **options}
    return Deployment(
        name=name, provider="anthropic", model=upstream, base_url=simulator.root, **options
    )


def routing_for(simulator) -> RoutingTable:
    routes = [
        # Upstream names differ from public ones, to prove clients only see the public name.
        ModelRoute(name="sim-small", deployments=[deployment(simulator, "sim", "upstream-small")]),
        ModelRoute(
            name="patient",
            deployments=[deployment(simulator, "sim", "upstream-patient", max_retries=2)],
        ),
        ModelRoute(
            name="quick-timeout",
            deployments=[
                deployment(
                    simulator, "sim", "upstream-quick", timeout_s=0.3, response_timeout_s=0.3
                )
            ],
        ),
        ModelRoute(
            # Quick to give up on a silent stream, patient with a reply being generated.
            name="patient-reply",
            deployments=[deployment(simulator, "sim", "upstream-patient-reply", timeout_s=0.3)],
        ),
        ModelRoute(
            name="with-fallback",
            deployments=[
                deployment(simulator, "primary", "upstream-primary"),
                deployment(simulator, "secondary", "upstream-secondary"),
            ],
        ),
        ModelRoute(
            name="claude",
            deployments=[anthropic_deployment(simulator, "anthropic", "upstream-claude")],
        ),
    ]
    return RoutingTable(models={route.name: route for route in routes})


@pytest.fixture
async def harness(simulator) -> AsyncIterator[Harness]:
    providers = ProviderPool()
    result = await Harness.start(
        TOPICS,
        routing=routing_for(simulator),
        providers=providers,
        backoff=Backoff(0.01, 0.05),
    )
    yield result
    await result.stop()
    await providers.aclose()


async def test_completed_reply_reaches_the_reply_partition_with_the_public_model_name(
    harness, simulator
) -> None:
    request = chat_request(text="Hello there")

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted)
    assert (reply.request_id, reply.tenant, reply.source) == (
        request.request_id,
        "acme",
        "inference",
    )
    assert reply.data.response["model"] == "sim-small"
    assert (
        reply.data.response["choices"][0]["message"]["content"] == "Simulated reply to: Hello there"
    )
    assert (reply.data.provider, reply.data.deployment) == ("openai", "sim")
    assert harness.other_partition == []  # another gateway replica never sees it
    assert simulator.calls("upstream-small") == 1


async def test_usage_is_recorded_with_the_upstream_token_counts(harness) -> None:
    request = chat_request(text="count these four words")

    await harness.handle(request)
    usage = await harness.usage_of(request.request_id)

    assert usage.source == "inference" and usage.tenant == "acme"
    assert (usage.data.usage.input_tokens, usage.data.usage.output_tokens) == (4, 7)
    assert (usage.data.status, usage.data.model, usage.data.user_id, usage.data.api_key_id) == (
        "completed",
        "sim-small",
        "user-1",
        "key-1",
    )
    assert usage.data.latency_ms > 0


async def test_unknown_model_fails_with_404_model_not_found_and_still_records_usage(
    harness, simulator
) -> None:
    request = chat_request(model="no-such-model")

    reply = await harness.handle(request)
    usage = await harness.usage_of(request.request_id)

    assert isinstance(reply, ChatFailed)
    assert (reply.data.status, reply.data.error.status, reply.data.error.code) == (
        "failed",
        404,
        "model_not_found",
    )
    assert "no-such-model" in reply.data.error.message
    assert usage.data.status == "failed" and usage.data.usage.total_tokens == 0
    assert simulator.calls() == 0


async def test_request_past_its_deadline_expires_without_calling_upstream(
    harness, simulator
) -> None:
    reply = await harness.handle(chat_request(deadline_s=-1))

    assert isinstance(reply, ChatFailed)
    assert (reply.data.status, reply.data.error.status) == ("expired", 504)
    assert simulator.calls() == 0


@pytest.mark.parametrize(
    ("injected", "status", "error_type"),
    [
        (429, 429, "rate_limit_exceeded"),
        (500, 500, "server_error"),
        (503, 503, "server_error"),
        (401, 502, "upstream_error"),  # our key was refused: not the caller's fault
    ],
)
async def test_upstream_errors_keep_their_status_and_type_for_an_openai_client(
    harness, simulator, injected: int, status: int, error_type: str
) -> None:
    simulator.fault(status=injected, retry_after=12 if injected == 429 else None)

    reply = await harness.handle(chat_request())

    assert isinstance(reply, ChatFailed)
    assert (reply.data.status, reply.data.error.status, reply.data.error.type) == (
        "failed",
        status,
        error_type,
    )
    assert reply.data.deployment == "sim"
    if injected == 429:
        assert reply.data.error.retry_after_s == 12
    assert simulator.calls() == 1  # max_retries=0: exactly one upstream call


async def test_upstream_400_is_passed_through_with_the_upstream_message_and_param(
    harness,
) -> None:
    request = chat_request(body={"model": "sim-small", "messages": [{"content": "no role"}]})

    reply = await harness.handle(request)

    assert (reply.data.error.status, reply.data.error.type) == (400, "invalid_request_error")
    assert "messages[0].role" in reply.data.error.message
    assert (reply.data.error.param, reply.data.error.code) == (
        "messages[0].role",
        "missing_required_parameter",
    )


async def test_rate_limit_is_retried_on_the_same_deployment_when_it_allows(
    harness, simulator
) -> None:
    simulator.fault(status=429, retry_after=0.01)

    reply = await harness.handle(chat_request(model="patient"))

    assert isinstance(reply, ChatCompleted)
    assert simulator.calls("upstream-patient") == 2


async def test_failing_primary_falls_back_to_the_next_deployment(harness, simulator) -> None:
    simulator.fault(status=503, model="upstream-primary")

    reply = await harness.handle(chat_request(model="with-fallback"))

    assert isinstance(reply, ChatCompleted)
    assert reply.data.deployment == "secondary"
    assert reply.data.response["model"] == "with-fallback"
    assert simulator.stats()["models"] == {"upstream-primary": 1, "upstream-secondary": 1}


async def test_client_errors_do_not_fall_back(harness, simulator) -> None:
    simulator.fault(status=400, model="upstream-primary")

    reply = await harness.handle(chat_request(model="with-fallback"))

    assert reply.data.error.status == 400
    assert simulator.calls("upstream-secondary") == 0


async def test_hanging_upstream_fails_with_504_after_the_deployment_timeout(
    harness, simulator
) -> None:
    simulator.fault(hang=True)
    started = asyncio.get_running_loop().time()

    reply = await harness.handle(chat_request(model="quick-timeout"))

    assert isinstance(reply, ChatFailed)
    assert (reply.data.status, reply.data.error.status, reply.data.error.code) == (
        "failed",
        504,
        "upstream_timeout",
    )
    assert asyncio.get_running_loop().time() - started < 3


async def test_a_non_streamed_reply_is_waited_for_beyond_the_read_timeout(
    harness, simulator
) -> None:
    """A non-streamed reply comes once the upstream has generated all of it: it is waited
    for up to `response_timeout_s` (600 s by default), not cut at `timeout_s` (and
    generated again by a retry); a stream that long silent times out at `timeout_s`."""
    with simulator.slowed(800):
        reply = await harness.handle(chat_request(model="patient-reply"))
        simulator.fault(hang=True)
        started = asyncio.get_running_loop().time()
        streamed = await harness.handle(chat_request(model="patient-reply", stream=True))

    assert isinstance(reply, ChatCompleted), reply
    assert simulator.calls("upstream-patient-reply") == 2
    assert isinstance(streamed, ChatFailed)
    assert (streamed.data.error.status, streamed.data.error.code) == (504, "upstream_timeout")
    assert streamed.data.response is None  # it streamed nothing
    assert asyncio.get_running_loop().time() - started < 3


async def test_an_embedding_that_hangs_times_out_at_the_read_timeout(harness, simulator) -> None:
    """An embedding generates no text: its reply is bounded by `timeout_s`, never waited
    for the 600 s a generation may take, so a hung upstream is left at once."""
    simulator.fault(hang=True)
    started = asyncio.get_running_loop().time()

    reply = await harness.handle(
        chat_request(
            model="patient-reply",
            api=ClientAPI.OPENAI_EMBEDDINGS,
            body={"model": "patient-reply", "input": "hi"},
        )
    )

    assert isinstance(reply, ChatFailed), reply
    assert (reply.data.error.status, reply.data.error.code) == (504, "upstream_timeout")
    assert asyncio.get_running_loop().time() - started < 3


async def test_hanging_upstream_past_the_request_deadline_expires(harness, simulator) -> None:
    simulator.fault(hang=True)

    reply = await harness.handle(chat_request(deadline_s=0.3))

    assert (reply.data.status, reply.data.error.status) == ("expired", 504)


async def test_a_stream_the_request_deadline_cuts_keeps_what_it_gave(harness, simulator) -> None:
    simulator.latency(3000)  # content pieces ~1 s apart
    request = chat_request(text="a b c d e f g h", stream=True, deadline_s=1.6)

    reply = await harness.handle(request)

    assert (reply.data.status, reply.data.error.status) == ("expired", 504)
    streamed = "".join(
        event.data["choices"][0]["delta"].get("content") or ""
        for event in harness.stream_of(request.request_id)
        if event.data.get("choices")
    )
    assert streamed  # some content came before the deadline
    assert reply.data.response is not None
    assert reply.data.response["choices"][0]["message"]["content"] == streamed


async def test_streaming_reply_arrives_as_ordered_chunks_then_the_assembled_completion(
    harness, simulator
) -> None:
    simulator.latency(60)  # paced like a model: every chunk is published on its own
    request = chat_request(text="stream it please", stream=True, include_usage=True)

    completed = await harness.handle(request)

    events = harness.events_of(request.request_id)
    chunks = [event for event in events if isinstance(event, ChatChunk)]
    assert events[-1] is completed and isinstance(completed, ChatCompleted)
    assert [chunk.data.sequence for chunk in chunks] == list(range(len(chunks)))
    assert len({chunk.data.run for chunk in chunks}) == 1
    stream = harness.stream_of(request.request_id)
    assert len(stream) == 6  # role, 3 content pieces, finish, usage
    assert all(event.event is None for event in stream)  # data-only, like OpenAI's
    state = ChatCompletionStreamState()
    for event in stream:
        parsed = openai.types.chat.ChatCompletionChunk.model_validate(event.data)
        assert parsed.model == "sim-small"
        state.handle_chunk(parsed)
    streamed = state.get_final_completion()
    assert streamed.choices[0].message.content == "Simulated reply to: stream it please"
    assert streamed.usage.completion_tokens == 6
    assert stream[-1].data["choices"] == []  # the usage chunk asked for
    assert len({chunk.id for chunk in chunks}) == len(chunks)
    # The completion event carries the whole reply, for history.
    response = openai.types.chat.ChatCompletion.model_validate(completed.data.response)
    assert response.choices[0].message.content == "Simulated reply to: stream it please"
    assert response.model == "sim-small" and response.choices[0].finish_reason == "stop"
    assert (completed.data.usage.input_tokens, completed.data.usage.output_tokens) == (3, 6)
    usage = await harness.usage_of(request.request_id)
    assert usage.data.time_to_first_token_ms is not None
    assert 0 < usage.data.time_to_first_token_ms <= usage.data.latency_ms


async def test_streaming_without_include_usage_sends_no_usage_chunk_but_records_usage(
    harness,
) -> None:
    request = chat_request(text="no usage chunk", stream=True)

    completed = await harness.handle(request)

    stream = harness.stream_of(request.request_id)
    assert all(event.data["choices"] for event in stream)
    assert all("usage" not in event.data for event in stream)
    assert stream[-1].data["choices"][0]["finish_reason"] == "stop"
    assert completed.data.usage.output_tokens == 6  # asked upstream anyway, for billing
    assert (await harness.usage_of(request.request_id)).data.usage.output_tokens == 6


async def test_streamed_tool_calls_are_relayed_and_assembled(harness) -> None:
    body = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": "What is the weather in Oslo?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    }
    request = chat_request(body=body, stream=True)

    completed = await harness.handle(request)

    state = ChatCompletionStreamState()
    for event in harness.stream_of(request.request_id):
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(event.data))
    for choice in (
        state.get_final_completion().choices[0],
        openai.types.chat.ChatCompletion.model_validate(completed.data.response).choices[0],
    ):
        assert choice.finish_reason == "tool_calls"
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"location": "Oslo"}


async def test_anthropic_deployment_streams_openai_chunks(harness, simulator) -> None:
    request = chat_request(model="claude", text="hi claude", stream=True, include_usage=True)

    completed = await harness.handle(request)

    state = ChatCompletionStreamState()
    chunks = [event.data for event in harness.stream_of(request.request_id)]
    for chunk in chunks:
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(chunk))
    # Asked for usage: every chunk has the field, null until the last one (OpenAI's shape).
    assert [chunk["usage"] is None for chunk in chunks] == [True] * (len(chunks) - 1) + [False]
    streamed = state.get_final_completion()
    assert streamed.model == "claude"
    assert streamed.choices[0].message.content == "Simulated reply to: hi claude"
    assert streamed.usage.prompt_tokens == 2 and streamed.usage.completion_tokens == 5
    assert (completed.data.provider, completed.data.deployment) == ("anthropic", "anthropic")
    assert simulator.stats()["routes"] == {"/v1/messages": 1}


async def test_anthropic_deployment_answers_in_openai_format(harness, simulator) -> None:
    body = {
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be helpful."},
            {"role": "user", "content": "What is the weather in Rome?"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    }

    reply = await harness.handle(chat_request(model="claude", body=body))

    assert isinstance(reply, ChatCompleted)
    completion = openai.types.chat.ChatCompletion.model_validate(reply.data.response)
    assert completion.model == "claude"
    assert completion.choices[0].finish_reason == "tool_calls"
    arguments = completion.choices[0].message.tool_calls[0].function.arguments
    assert json.loads(arguments) == {"location": "Rome"}
    assert reply.data.usage.input_tokens == completion.usage.prompt_tokens > 0


async def test_embeddings_are_answered_with_the_embeddings_object_and_usage(
    harness, simulator
) -> None:
    request = chat_request(
        api="openai.embeddings", body={"model": "sim-small", "input": ["one two", "three"]}
    )

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted)
    response = openai.types.CreateEmbeddingResponse.model_validate(reply.data.response)
    assert response.model == "sim-small"
    assert [len(item.embedding) for item in response.data] == [8, 8]  # floats, not base64
    assert (reply.data.usage.input_tokens, reply.data.usage.output_tokens) == (3, 0)
    assert (await harness.usage_of(request.request_id)).data.usage.input_tokens == 3
    assert simulator.stats()["routes"] == {"/v1/embeddings": 1}


async def test_embeddings_on_an_anthropic_only_model_are_refused_clearly(harness) -> None:
    reply = await harness.handle(chat_request(model="claude", api="openai.embeddings"))
    assert isinstance(reply, ChatFailed)
    assert (reply.data.error.status, reply.data.error.code) == (400, "unsupported_operation")
    # In the client's words: the route it called, never the operator's deployment name.
    message = reply.data.error.message
    assert "does not offer POST /v1/embeddings" in message and "(anthropic)" in message
    assert "openai.embeddings" not in message


async def test_a_request_anthropic_cannot_express_is_refused_before_calling_it(
    harness, simulator
) -> None:
    body = {"model": "claude", "messages": [{"role": "user", "content": "x"}], "n": 3}
    reply = await harness.handle(chat_request(model="claude", body=body))
    assert (reply.data.error.status, reply.data.error.code) == (400, "unsupported_parameter")
    assert simulator.calls() == 0


async def test_reply_without_reply_address_is_still_published(simulator) -> None:
    published: list[tuple[str, Any, str | None, int | None]] = []

    async def publish(topic, event, *, key=None, partition=None, headers=None) -> None:
        published.append((topic, event, key, partition))

    providers = ProviderPool()
    handler = ChatRequestHandler(
        publish=publish, topics=TOPICS, routing=routing_for(simulator), providers=providers
    )
    request = chat_request(reply_to=False)
    await handler(request)
    await providers.aclose()

    (reply_topic, reply, key, partition), (usage_topic, usage, _, _) = published
    assert (reply_topic, usage_topic) == (TOPICS.replies, TOPICS.usage)
    assert isinstance(reply, ChatCompleted) and isinstance(usage, UsageRecorded)
    assert (key, partition) == (request.request_id, None)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "sim-small"},  # no messages at all
        {"model": "sim-small", "messages": "not a list"},
        {
            "model": "sim-small",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": "hot",
        },
    ],
)
async def test_malformed_request_bodies_get_a_failed_reply_instead_of_crashing(
    harness, body
) -> None:
    reply = await harness.handle(chat_request(body=body))

    assert isinstance(reply, ChatFailed)
    assert reply.data.error.status == 400


async def test_unexpected_provider_bug_still_gets_a_terminal_reply(simulator) -> None:
    class BrokenProvider:
        async def chat(self, body, *, timeout_s):
            raise RuntimeError("bug")

        async def aclose(self) -> None: ...

    replies: list = []

    async def publish(topic, event, *, key=None, partition=None, headers=None) -> None:
        replies.append(event)

    handler = ChatRequestHandler(
        publish=publish,
        topics=TOPICS,
        routing=routing_for(simulator),
        providers=ProviderPool(lambda deployment: BrokenProvider()),
    )
    await handler(chat_request())

    failed, usage = replies
    assert (failed.data.error.status, failed.data.error.code) == (500, "internal_error")
    assert usage.data.status == "failed"


async def test_events_other_than_requests_are_ignored(harness) -> None:
    completed_elsewhere = ChatFailed.model_validate(
        {
            "source": "x",
            "tenant": "t",
            "request_id": "r",
            "data": {"status": "failed", "error": {"status": 500, "type": "x", "message": "m"}},
        }
    )
    await harness.handler(completed_elsewhere)
    await asyncio.sleep(0.05)
    assert harness.replies == [] and harness.usage == []


async def test_upstream_failure_in_the_middle_of_a_stream_ends_it_without_fallback(
    harness, simulator
) -> None:
    simulator.latency(60)
    simulator.fault(status=500, stream_error_after=3, model="upstream-primary")
    request = chat_request(model="with-fallback", stream=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatFailed)
    assert (reply.data.error.status, reply.data.error.type) == (500, "server_error")
    assert reply.data.error.code is None  # the upstream's error event named none
    stream = harness.stream_of(request.request_id)
    assert len(stream) == 3  # what arrived was relayed
    assert simulator.calls("upstream-secondary") == 0  # a started stream cannot move
    usage = await harness.usage_of(request.request_id)
    # Billed the text the client got (4 characters a token), never less than a token a
    # delta: what the upstream reported so far is no count of it.
    text = "".join(
        event.data["choices"][0]["delta"].get("content") or ""
        for event in stream
        if event.data.get("choices")
    )
    assert usage.data.status == "failed"
    assert usage.data.usage.output_tokens == max(2, math.ceil(len(text) / 4)) > 2
    # History keeps what the client was given: the reply its chunks assemble to.
    assert reply.data.response is not None
    assert reply.data.response["choices"][0]["message"]["content"] == text


async def test_a_request_delivered_again_after_its_outcome_was_published_is_not_run_again(
    harness, simulator
) -> None:
    request = chat_request()
    await harness.handler(request)
    await harness.handler(request)  # e.g. its partition came back after a rebalance
    await harness.usage_of(request.request_id)
    await asyncio.sleep(0.05)
    assert simulator.calls() == 1
    assert len(harness.replies) == 2  # published again...
    assert len({event.id for event in harness.replies}) == 1  # ...with the same id


async def test_a_redelivered_request_another_replica_ran_produces_events_with_the_same_ids(
    harness, simulator
) -> None:
    request = chat_request()
    await harness.handler(request)
    harness.handler.published = type(harness.handler.published)()  # another replica's memory
    await harness.handler(request)
    await harness.usage_of(request.request_id)
    await asyncio.sleep(0.05)
    assert len({event.id for event in harness.replies}) == 1  # consumers deduplicate the second


def test_default_factory_builds_clients_without_sdk_retries(simulator) -> None:
    openai_provider = create_upstream(deployment(simulator, "sim", "x", max_retries=5))
    anthropic_provider = create_upstream(
        anthropic_deployment(simulator, "a", "y").model_copy(
            update={"base_url": simulator.openai_url}
        )
    )
    assert isinstance(openai_provider, OpenAIUpstream)
    assert openai_provider.client.base_url.host == "127.0.0.1"
    assert openai_provider.client.max_retries == 0  # backoff is the handler's
    assert isinstance(anthropic_provider, AnthropicUpstream)
    assert anthropic_provider.client.max_retries == 0
    # The Anthropic SDK adds /v1 itself: a base URL ending in /v1 is taken as the root.
    assert str(anthropic_provider.client.base_url).rstrip("/") == simulator.root


async def test_events_queued_behind_a_slow_bus_are_batched_not_delayed_one_by_one(
    simulator,
) -> None:
    published: list = []

    async def slow_publish(topic, event, *, key=None, partition=None, headers=None) -> None:
        await asyncio.sleep(0.05)  # a bus much slower than the (instant) upstream
        published.append(event)

    providers = ProviderPool()
    handler = ChatRequestHandler(
        publish=slow_publish, topics=TOPICS, routing=routing_for(simulator), providers=providers
    )
    request = chat_request(text="one two three four five six seven eight", stream=True)
    await handler(request)
    await providers.aclose()

    chunks = [event for event in published if isinstance(event, ChatChunk)]
    assert isinstance(published[-2], ChatCompleted)
    assert [chunk.data.sequence for chunk in chunks] == list(range(len(chunks)))
    events = [event for chunk in chunks for event in chunk.data.events]
    assert len(chunks) < len(events)  # fewer records than the upstream's events...
    state = ChatCompletionStreamState()
    for event in events:  # ...and every event, unchanged
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(event.data))
    text = state.get_final_completion().choices[0].message.content
    assert text == "Simulated reply to: one two three four five six seven eight"
    assert events[-1].data["choices"][0]["finish_reason"] == "stop"


async def test_usage_events_carry_the_cost_from_the_price_table(simulator) -> None:
    prices = PriceTable(
        models={"upstream-small": Price(input_per_1m=2.0, output_per_1m=10.0)},
        deployments={"primary": Price(input_per_1m=1000.0)},
    )
    providers = ProviderPool()
    harness = await Harness.start(
        TOPICS, routing=routing_for(simulator), providers=providers, prices=prices
    )
    request = chat_request(text="count these four words")  # 4 in, 7 out
    await harness.handle(request)
    usage = await harness.usage_of(request.request_id)
    failed = chat_request(model="no-such-model")
    await harness.handle(failed)
    failed_usage = await harness.usage_of(failed.request_id)
    await harness.stop()
    await providers.aclose()

    assert usage.data.cost_usd == pytest.approx((4 * 2.0 + 7 * 10.0) / 1e6)
    assert usage.data.deployment == "sim"
    assert failed_usage.data.cost_usd == 0


async def test_a_reply_partition_the_topic_lacks_is_answered_on_the_requests_own(
    simulator,
) -> None:
    # A bad producer's reply address: the reply could never be written there, and
    # retrying it would hold a slot for good (and again after a restart).
    looked_up = []

    async def twelve(topic: str) -> int:
        looked_up.append(topic)
        return 12

    providers = ProviderPool()
    harness = await Harness.start(
        TOPICS,
        routing=routing_for(simulator),
        providers=providers,
        backoff=Backoff(0.01, 0.05),
        partition_count=twelve,
    )
    try:
        request = chat_request(text="where do I go")
        reply_to = request.data.reply_to.model_copy(update={"partition": 999})
        lost = request.model_copy(
            update={"data": request.data.model_copy(update={"reply_to": reply_to})}
        )
        await asyncio.wait_for(harness.handler(lost), timeout=10)
        usage = await harness.usage_of(lost.request_id)
        assert usage.data.status == "completed"
        # Published by its key, not to a partition (the in-memory bus hands a record
        # without one to every reader of the topic, partition 0's included).
        assert [e.request_id for e in harness.other_partition] == [lost.request_id]

        fine = chat_request(text="and me")  # a partition the topic has: kept
        await harness.handle(fine)
        assert harness.events_of(fine.request_id)
        assert [e.request_id for e in harness.other_partition] == [lost.request_id]
        assert looked_up == [TOPICS.replies]  # looked up once, for the unknown partition
    finally:
        await harness.stop()
        await providers.aclose()


_OPENAI_REFUSAL = {
    "error": {
        "message": "Invalid 'messages[0].content': string too long.",
        "type": "invalid_request_error",
        "param": "messages[0].content",
        "code": "string_above_max_length",
    }
}


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (ClientAPI.OPENAI_CHAT_COMPLETIONS, {"messages": [{"role": "user", "content": "hi"}]}),
        (
            ClientAPI.ANTHROPIC_MESSAGES,
            {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
        ),
        (ClientAPI.OPENAI_RESPONSES, {"input": "hi"}),
    ],
)
async def test_an_upstream_param_reaches_the_client_only_when_it_names_the_clients_field(
    recorder, serve, api, body
) -> None:
    # An OpenAI-protocol deployment without the Responses API: Chat Completions passes
    # through, Messages and Responses are translated to it.
    harness = await serve(
        Deployment(name="gpt", provider="openai", model="gpt-up", base_url=f"{recorder.root}/v1")
    )
    recorder.script(Scripted(status=400, json=_OPENAI_REFUSAL))

    reply = await harness.handle(chat_request("m", api=api, body={"model": "m", **body}))

    assert isinstance(reply, ChatFailed)
    assert reply.data.error.status == 400
    # The upstream's words are kept; its `param` only where it is the client's field.
    assert reply.data.error.message == _OPENAI_REFUSAL["error"]["message"]
    passed_through = api is ClientAPI.OPENAI_CHAT_COMPLETIONS
    assert reply.data.error.param == ("messages[0].content" if passed_through else None)
