"""A stream has `request_timeout_s` to start and `stream_timeout_s` in all: a long
generation that keeps sending is not cut at the request timeout, a stream that never
starts is a 504 at it (and inference is asked to stop), and the request event carries the
stream's deadline, so inference and history agree with the gateway."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import orjson
import pytest

from switchyard.common.events import ChatCancelRequested
from switchyard.common.testing.infra import async_wait_until

from .conftest import API_KEY, chunk, completed_reply

AUTH = {"Authorization": f"Bearer {API_KEY}"}
BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def settings(settings):
    settings.request_timeout_s = 0.5
    settings.stream_timeout_s = 5.0
    return settings


def publisher(harness):
    topics = harness.app.state.gateway.topics

    async def publish(request, reply):
        await harness.bus.publish(
            topics.replies,
            reply,
            key=request.request_id,
            partition=request.data.reply_to.partition,
        )

    return publish


async def test_a_stream_that_keeps_sending_runs_past_the_request_timeout(harness):
    publish = publisher(harness)

    async def slow_stream(request):
        async def send():
            # The first pause is longer than the request timeout (0.5 s) on its own.
            for sequence, (piece, pause) in enumerate(
                [("a", 0.8), ("b", 0.3), ("c", 0.3), ("d", 0.0)]
            ):
                await publish(request, chunk(request, sequence, piece))
                await asyncio.sleep(pause)
            await publish(request, completed_reply(request, "abcd"))

        asyncio.get_running_loop().create_task(send())
        return []

    harness.respond[0] = slow_stream
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with harness.client.stream(
        "POST", "/v1/chat/completions", json={**BODY, "stream": True}, headers=AUTH
    ) as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line]
    assert loop.time() - started > 1.3  # well past the request timeout
    assert lines[-1] == "data: [DONE]"
    contents = [orjson.loads(line[6:])["choices"][0]["delta"]["content"] for line in lines[:-1]]
    assert contents == ["a", "b", "c", "d"]
    [request] = harness.requests
    assert request.data.deadline - request.time == pytest.approx(
        timedelta(seconds=5), abs=timedelta(seconds=1)
    )


async def test_a_stream_that_never_starts_is_a_504_at_the_request_timeout(harness):
    cancels = []

    async def on_control(event):
        if isinstance(event, ChatCancelRequested):
            cancels.append(event.request_id)

    await harness.bus.subscribe([harness.app.state.gateway.topics.control], "t", on_control)

    async def silent(_request):
        return []

    harness.respond[0] = silent
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await harness.client.post(
        "/v1/chat/completions", json={**BODY, "stream": True}, headers=AUTH
    )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert loop.time() - started < 3
    [request] = harness.requests
    await async_wait_until(lambda: asyncio.sleep(0, cancels), timeout=5, message="a cancel")
    assert cancels == [request.request_id]


async def test_an_answer_that_is_not_streamed_keeps_the_request_timeout(harness):
    async def silent(_request):
        return []

    harness.respond[0] = silent
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    assert response.status_code == 504
    assert loop.time() - started < 3
    [request] = harness.requests
    assert request.data.deadline - request.time == pytest.approx(
        timedelta(seconds=0.5), abs=timedelta(seconds=0.3)
    )
