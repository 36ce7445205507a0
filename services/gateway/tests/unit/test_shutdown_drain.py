"""Stopping a gateway bounds its wait for the requests it holds: `shutdown_drain_s` after
the stop signal (`Gateway.begin_drain`), each request still waiting for its reply is
ended with 503 `gateway_shutting_down` in its API's own format (a started stream with its
API's error event), instead of being cut without a word when the orchestrator kills the
process. Requests that end within the drain are answered as usual."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from switchyard.common.errorformat import error_type
from switchyard.common.stopping import stop_signalled

from .conftest import API_KEY, chunk, completed_reply
from .test_stream_deadline import publisher

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {**CHAT, "max_tokens": 16}


@pytest.fixture
def settings(settings):
    settings.shutdown_drain_s = 0.3
    return settings


async def _held(harness, count: int) -> None:
    gateway = harness.app.state.gateway
    deadline = asyncio.get_running_loop().time() + 5
    while asyncio.get_running_loop().time() < deadline:
        if len(gateway.pending) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} requests never held")


async def test_requests_still_held_after_the_drain_end_in_their_api_format(harness):
    publish = publisher(harness)

    async def starts_then_stalls(request):
        if request.data.stream:
            asyncio.get_running_loop().create_task(publish(request, chunk(request, 0, "par")))
        return []

    harness.respond[0] = starts_then_stalls
    gateway = harness.app.state.gateway

    async def stream() -> list[str]:
        async with harness.client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH
        ) as response:
            assert response.status_code == 200
            return [line async for line in response.aiter_lines() if line]

    streamed = asyncio.ensure_future(stream())
    messages = asyncio.ensure_future(
        harness.client.post("/v1/messages", json=MESSAGES, headers=AUTH)
    )
    await _held(harness, 2)
    loop = asyncio.get_running_loop()
    signalled = loop.time()
    # What the process's SIGTERM handler runs (switchyard.common.stopping).
    stop_signalled()
    lines, refused = await asyncio.wait_for(asyncio.gather(streamed, messages), timeout=5)
    assert loop.time() - signalled >= 0.25  # the drain period was waited for first

    assert orjson.loads(lines[0][6:])["choices"][0]["delta"]["content"] == "par"
    error = orjson.loads(lines[-1][6:])["error"]
    assert error["code"] == "gateway_shutting_down"
    assert error["type"] == error_type("openai", 503)
    assert refused.status_code == 503
    body = refused.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type("anthropic", 503)
    assert "shutting down" in body["error"]["message"]
    assert len(gateway.pending) == 0
    gateway.begin_drain()  # a second signal changes nothing
    assert gateway.end_held_requests() == 0


async def test_a_request_answered_within_the_drain_is_answered_as_usual(harness):
    publish = publisher(harness)

    async def answers_soon(request):
        async def later():
            await asyncio.sleep(0.1)
            await publish(request, completed_reply(request, "in time"))

        asyncio.get_running_loop().create_task(later())
        return []

    harness.respond[0] = answers_soon
    gateway = harness.app.state.gateway
    # A drain far longer than the reply takes, however slow the machine: the request is
    # answered within it.
    gateway.settings.shutdown_drain_s = 5.0
    gateway.begin_drain()
    response = await harness.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "in time"
