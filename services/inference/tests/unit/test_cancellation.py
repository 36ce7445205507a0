"""Cancellation: a `chat.cancel_requested` stops the upstream call of the request it names,
wherever it is (streaming, waiting on the upstream, waiting for a lane), and the client's
reply partition and the usage topic still get their terminal events."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import pytest

from switchyard.common.events import ChatFailed
from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.common.testing.infra import async_wait_until
from switchyard.common.topics import Topics
from switchyard.inference.lanes import LaneGate
from switchyard.inference.providers import ProviderPool
from switchyard.inference.testing import Harness, cancel_request, chat_request

TOPICS = Topics("cancel")


@pytest.fixture
async def harness(simulator) -> AsyncIterator[Harness]:
    deployment = Deployment(
        name="sim", provider="openai", model="up", base_url=simulator.openai_url, max_retries=0
    )
    claude = Deployment(
        name="claude", provider="anthropic", model="up-claude", base_url=simulator.root
    )
    routing = RoutingTable(
        models={
            "m": ModelRoute(name="m", deployments=[deployment]),
            "c": ModelRoute(name="c", deployments=[claude]),
        }
    )
    providers = ProviderPool()
    result = await Harness.start(
        TOPICS,
        routing=routing,
        providers=providers,
        lanes=LaneGate(interactive_capacity=2, batch_capacity=1, batch_yield_ratio=0.5),
    )
    yield result
    await result.stop()
    await providers.aclose()


def assert_cancelled(reply) -> None:
    assert isinstance(reply, ChatFailed)
    assert reply.data.status == "cancelled"
    assert (reply.data.error.status, reply.data.error.code) == (408, "client_disconnected")


@pytest.mark.parametrize("model", ["m", "c"])
async def test_cancelling_a_stream_stops_the_upstream_and_records_usage_so_far(
    harness, simulator, model
) -> None:
    simulator.latency(3000)  # content pieces ~1 s apart
    request = chat_request(model=model, text="a b c d e f g h", stream=True)
    handling = asyncio.create_task(harness.handler(request))
    await async_wait_until(
        _content_chunk(harness, request.request_id), timeout=5, interval=0.01, message="content"
    )
    assert request.request_id in harness.handler.running

    started = time.perf_counter()
    await harness.handler.cancel(cancel_request(request.request_id))
    reply = await harness.reply(request.request_id, timeout=2)

    assert time.perf_counter() - started < 1  # the rest of the stream would take ~2 s
    assert_cancelled(reply)
    assert reply.data.deployment in ("sim", "claude")
    await handling
    usage = await harness.usage_of(request.request_id)
    assert usage.data.status == "cancelled"
    # The text streamed so far, 4 characters a token, whatever the upstream's stream
    # said before its end (Anthropic's `message_start` says a token or a few).
    streamed = "".join(
        event.data["choices"][0]["delta"].get("content") or ""
        for event in harness.stream_of(request.request_id)
        if event.data.get("choices")
    )
    assert len(streamed) > 8
    assert usage.data.usage.output_tokens >= math.ceil(len(streamed) / 4)
    # History keeps what the client was given before it went away.
    assert reply.data.response is not None
    assert reply.data.response["choices"][0]["message"]["content"] == streamed
    # Cut short, it did not stop: no finish reason, as a stream's unfinished chunks say.
    assert reply.data.response["choices"][0]["finish_reason"] is None
    assert usage.data.usage.input_tokens > 0  # reported (Anthropic) or estimated
    assert usage.data.time_to_first_token_ms is not None
    # The upstream stream was closed, not left to run to its end.
    await async_wait_until(
        _aborted_streams(simulator), timeout=3, interval=0.05, message="stream aborted"
    )
    assert request.request_id not in harness.handler.running


async def test_cancelling_a_waiting_upstream_call_answers_at_once(harness, simulator) -> None:
    simulator.fault(hang=True)
    request = chat_request(model="m")
    handling = asyncio.create_task(harness.handler(request))
    await async_wait_until(_upstream_called(simulator), timeout=5, interval=0.01, message="call")

    await harness.handler.cancel(cancel_request(request.request_id))

    assert_cancelled(await harness.reply(request.request_id, timeout=2))
    await handling
    usage = await harness.usage_of(request.request_id)
    assert usage.data.usage.output_tokens == 0 and usage.data.usage.input_tokens > 0


async def test_a_cancellation_that_arrives_first_stops_the_request_before_it_starts(
    harness, simulator
) -> None:
    request = chat_request(model="m")
    await harness.handler.cancel(cancel_request(request.request_id))

    reply = await harness.handle(request)

    assert_cancelled(reply)
    assert simulator.calls() == 0
    assert (await harness.usage_of(request.request_id)).data.usage.total_tokens == 0


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("reason", ["credentials_revoked", "user_disabled"])
async def test_a_cancellation_for_a_refused_caller_is_recorded_with_its_reason(
    harness, simulator, reason, first
) -> None:
    # The gateway cancels the requests of a key revoked (a user disabled) while they run:
    # recorded as such, with the 403 its jobs get, not as a client that went away.
    simulator.fault(hang=True)
    request = chat_request(model="m")
    if first:
        await harness.handler.cancel(cancel_request(request.request_id, reason))
        reply = await harness.handle(request)
    else:
        handling = asyncio.create_task(harness.handler(request))
        await async_wait_until(
            _upstream_called(simulator), timeout=5, interval=0.01, message="call"
        )
        await harness.handler.cancel(cancel_request(request.request_id, reason))
        reply = await harness.reply(request.request_id, timeout=2)
        await handling

    assert isinstance(reply, ChatFailed) and reply.data.status == "cancelled"
    error = reply.data.error
    assert (error.status, error.type, error.code) == (403, "permission_error", reason)
    assert (await harness.usage_of(request.request_id)).data.status == "cancelled"


async def test_cancelling_a_batch_request_waiting_for_its_lane(harness, simulator) -> None:
    simulator.fault(hang=True, count=2)
    busy = [chat_request(model="m") for _ in range(2)]  # interactive lane half full or more
    tasks = [asyncio.create_task(harness.handler(request)) for request in busy]
    await async_wait_until(_upstream_called(simulator, 2), timeout=5, interval=0.01, message="2")
    batch = chat_request(model="m", priority="batch")
    batch_task = asyncio.create_task(harness.handler(batch))
    await asyncio.sleep(0.1)
    assert simulator.calls() == 2  # the batch request is held back

    await harness.handler.cancel(cancel_request(batch.request_id))

    assert_cancelled(await harness.reply(batch.request_id, timeout=2))
    await batch_task
    assert (await harness.usage_of(batch.request_id)).data.usage.total_tokens == 0
    for request in busy:
        await harness.handler.cancel(cancel_request(request.request_id))
    await asyncio.gather(*tasks)
    assert simulator.calls() == 2


async def test_cancellations_for_requests_elsewhere_change_nothing(harness) -> None:
    await harness.handler.cancel(cancel_request("somebody-elses-request"))
    request = chat_request(model="m")
    reply = await harness.handle(request)
    assert reply.data.response["choices"][0]["message"]["content"].startswith("Simulated")


async def test_a_batch_request_whose_deadline_passes_in_the_lane_expires(
    harness, simulator
) -> None:
    simulator.fault(hang=True, count=2)
    busy = [chat_request(model="m") for _ in range(2)]
    tasks = [asyncio.create_task(harness.handler(request)) for request in busy]
    await asyncio.sleep(0.05)

    reply = await harness.handle(chat_request(model="m", priority="batch", deadline_s=0.3))

    assert isinstance(reply, ChatFailed) and reply.data.status == "expired"
    assert "lane" in reply.data.error.message
    for request in busy:
        await harness.handler.cancel(cancel_request(request.request_id))
    await asyncio.gather(*tasks)


def _content_chunk(harness: Harness, request_id: str):
    async def found() -> bool:
        return any(
            (event.data.get("choices") or [{}])[0].get("delta", {}).get("content")
            or event.data.get("type") == "content_block_delta"
            for event in harness.stream_of(request_id)
        )

    return found


def _aborted_streams(simulator):
    async def found() -> bool:
        return simulator.stats()["streams_aborted"] >= 1

    return found


def _upstream_called(simulator, calls: int = 1):
    async def found() -> bool:
        return simulator.calls() >= calls

    return found


async def test_a_cancellation_naming_another_tenant_cancels_nothing(harness, simulator) -> None:
    # Only the request's own client, through a gateway, cancels it.
    foreign = cancel_request("x").model_copy(update={"tenant": "globex"})
    early = chat_request(model="m")
    await harness.handler.cancel(foreign.model_copy(update={"request_id": early.request_id}))
    reply = await harness.handle(early)  # the cancellation came first, for another tenant
    assert reply.data.response["choices"][0]["message"]["content"].startswith("Simulated")

    simulator.fault(hang=True)
    running = chat_request(model="m")
    handling = asyncio.create_task(harness.handler(running))
    await async_wait_until(_upstream_called(simulator), timeout=5, interval=0.01, message="call")
    await harness.handler.cancel(foreign.model_copy(update={"request_id": running.request_id}))
    await asyncio.sleep(0.2)
    assert not handling.done()  # still running
    await harness.handler.cancel(cancel_request(running.request_id))  # its own tenant's
    assert_cancelled(await harness.reply(running.request_id, timeout=2))
    await handling
