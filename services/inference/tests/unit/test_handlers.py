"""The request handler against the real simulator over HTTP, on the in-memory bus: what a
client waiting on its reply partition, and a billing consumer on the usage topic, see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import openai
import pytest

from switchyard.common.bus import InMemoryBus
from switchyard.common.events import (
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRequestData,
    ChatRequested,
    ReplyAddress,
    UsageRecorded,
    utcnow,
)
from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.common.testing.infra import async_wait_until
from switchyard.common.topics import Topics
from switchyard.inference.handlers import ChatRequestHandler
from switchyard.inference.providers import ProviderPool, default_provider_factory

TOPICS = Topics("test")
REPLY_PARTITION = 3


def deployment(simulator, name: str, upstream: str, **options: Any) -> Deployment:
    options = {"max_retries": 0, "timeout_s": 5, **options}
    return Deployment(
        name=name, provider="openai", model=upstream, base_url=simulator.openai_url, **options
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
            deployments=[deployment(simulator, "sim", "upstream-quick", timeout_s=0.3)],
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
            deployments=[Deployment(name="anthropic", provider="anthropic", model="claude-x")],
        ),
    ]
    return RoutingTable(models={route.name: route for route in routes})


@dataclass
class Harness:
    handler: ChatRequestHandler
    replies: list = field(default_factory=list)
    other_partition: list = field(default_factory=list)
    usage: list = field(default_factory=list)

    async def reply(self, request_id: str) -> Any:
        async def found() -> Any:
            return next(
                (
                    e
                    for e in self.replies
                    if e.request_id == request_id and isinstance(e, ChatCompleted | ChatFailed)
                ),
                None,
            )

        return await async_wait_until(found, timeout=5, interval=0.01, message="terminal reply")

    async def usage_of(self, request_id: str) -> UsageRecorded:
        async def found() -> Any:
            return next((e for e in self.usage if e.request_id == request_id), None)

        return await async_wait_until(found, timeout=5, interval=0.01, message="usage event")

    async def handle(self, request: ChatRequested) -> Any:
        await self.handler(request)
        return await self.reply(request.request_id)


@pytest.fixture
async def harness(simulator) -> AsyncIterator[Harness]:
    bus = InMemoryBus(partitions={TOPICS.replies: 12})
    providers = ProviderPool()
    result = Harness(
        ChatRequestHandler(
            publish=bus.publish, topics=TOPICS, routing=routing_for(simulator), providers=providers
        )
    )
    await bus.listen(TOPICS.replies, _append(result.replies), partitions=[REPLY_PARTITION])
    await bus.listen(TOPICS.replies, _append(result.other_partition), partitions=[0])
    await bus.listen(TOPICS.usage, _append(result.usage))
    yield result
    await bus.stop()
    await providers.aclose()


def _append(events: list):
    async def append(event) -> None:
        events.append(event)

    return append


def chat_request(
    model: str = "sim-small",
    text: str = "Hello there",
    *,
    deadline_s: float = 30,
    body: dict[str, Any] | None = None,
    stream: bool = False,
    reply_to: bool = True,
) -> ChatRequested:
    body = (
        body
        if body is not None
        else {"model": model, "messages": [{"role": "user", "content": text}]}
    )
    return ChatRequested(
        source="gateway",
        tenant="acme",
        request_id=f"req-{id(body)}-{model}",
        data=ChatRequestData(
            model=model,
            body=body,
            stream=stream,
            user_id="user-1",
            api_key_id="key-1",
            deadline=utcnow() + timedelta(seconds=deadline_s),
            reply_to=ReplyAddress(partition=REPLY_PARTITION, instance_id="gw-1")
            if reply_to
            else None,
        ),
    )


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
    ("injected", "status", "code"),
    [
        (429, 429, "upstream_rate_limited"),
        (500, 502, "upstream_error"),
        (503, 502, "upstream_error"),
        (401, 502, "upstream_auth_failed"),  # our key was refused: not the caller's fault
    ],
)
async def test_upstream_errors_become_failed_replies_with_the_client_status(
    harness, simulator, injected: int, status: int, code: str
) -> None:
    simulator.fault(status=injected, retry_after=12 if injected == 429 else None)

    reply = await harness.handle(chat_request())

    assert isinstance(reply, ChatFailed)
    assert (reply.data.status, reply.data.error.status, reply.data.error.code) == (
        "failed",
        status,
        code,
    )
    assert reply.data.deployment == "sim"
    if injected == 429:
        assert "Retry after 12 seconds" in reply.data.error.message
    assert simulator.calls() == 1  # max_retries=0: exactly one upstream call


async def test_upstream_400_is_passed_through_with_the_upstream_message(harness) -> None:
    request = chat_request(body={"model": "sim-small", "messages": [{"content": "no role"}]})

    reply = await harness.handle(request)

    assert (reply.data.error.status, reply.data.error.type) == (400, "invalid_request_error")
    assert "messages.0" in reply.data.error.message


async def test_rate_limit_is_retried_by_the_sdk_when_the_deployment_allows(
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


async def test_hanging_upstream_past_the_request_deadline_expires(harness, simulator) -> None:
    simulator.fault(hang=True)

    reply = await harness.handle(chat_request(deadline_s=0.3))

    assert (reply.data.status, reply.data.error.status) == ("expired", 504)


async def test_streaming_request_gets_one_valid_chunk_before_the_completion(harness) -> None:
    request = chat_request(
        stream=True,
        body={
            "model": "sim-small",
            "messages": [{"role": "user", "content": "stream it"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )

    await harness.handle(request)

    chunk, completed = harness.replies
    assert isinstance(chunk, ChatChunk) and isinstance(completed, ChatCompleted)
    assert chunk.data.sequence == 0
    parsed = openai.types.chat.ChatCompletionChunk.model_validate(chunk.data.chunk)
    assert parsed.choices[0].delta.content == "Simulated reply to: stream it"
    assert parsed.model == "sim-small" and parsed.choices[0].finish_reason == "stop"


async def test_reply_without_reply_address_is_still_published(simulator) -> None:
    published: list[tuple[str, Any, str | None, int | None]] = []

    async def publish(topic, event, *, key=None, partition=None) -> None:
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

    async def publish(topic, event, *, key=None, partition=None) -> None:
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


async def test_unsupported_provider_fails_clearly(harness) -> None:
    reply = await harness.handle(chat_request(model="claude"))
    assert (reply.data.error.status, reply.data.error.code) == (501, "provider_not_supported")


async def test_redelivered_request_produces_events_with_the_same_ids(harness) -> None:
    request = chat_request()
    await harness.handler(request)
    await harness.handler(request)
    await harness.usage_of(request.request_id)
    await asyncio.sleep(0.05)
    assert len({event.id for event in harness.replies}) == 1  # consumers deduplicate the second


def test_default_factory_builds_openai_clients_for_openai_deployments(simulator) -> None:
    provider = default_provider_factory(deployment(simulator, "sim", "x"))
    assert provider.client.base_url.host == "127.0.0.1"
