"""Every gateway route, called with generated requests (schemathesis), never answers 5xx:
bad input gets a 4xx in the API's format. The gateway runs on a real server on
127.0.0.1 with auth and history played by fakes and a fake inference on the bus."""

from __future__ import annotations

import httpx
import pytest

from switchyard.common.bus import InMemoryBus
from switchyard.common.events import ChatRequested, Event
from switchyard.common.testing.fuzz import serve_in_thread, server_errors
from switchyard.common.topics import Topics
from switchyard.gateway.app import create_app
from switchyard.gateway.config import Settings

from .conftest import FakeAuth, completed_reply
from .history_fakes import HISTORY_PORT, FakeHistory


async def serve_gateway(state: dict) -> object:
    settings = Settings(
        request_timeout_s=2.0,
        topic_prefix="fuzz",
        max_body_bytes=200_000,
        governance_store="memory",
    )
    bus = InMemoryBus()
    await bus.start()
    topics = Topics(settings.topic_prefix)
    auth, history = FakeAuth(), FakeHistory()

    async def fake_inference(event: Event) -> None:
        if isinstance(event, ChatRequested) and event.data.reply_to is not None:
            reply = completed_reply(event)
            await bus.publish(
                topics.replies,
                reply,
                key=event.request_id,
                partition=event.data.reply_to.partition,
            )

    await bus.subscribe([topics.requests_interactive], "inference", fake_inference)

    async def route(request: httpx.Request) -> httpx.Response:
        if request.url.port == HISTORY_PORT:
            return await history.handle(request)
        return auth.handle(request)

    app = create_app(
        settings, bus=bus, http=httpx.AsyncClient(transport=httpx.MockTransport(route))
    )
    state["token"] = auth.token(
        sub="user-1",
        role="admin",
        scopes=["chat", "history:read", "history:write", "admin"],
        exp=2_000_000_000,
    )

    async def cleanup() -> None:
        await bus.stop()

    state["cleanup"] = cleanup
    return app


# Bounded by examples (about 45 s alone on 2 cores); the timeout only covers a busy machine.
@pytest.mark.timeout(300)
def test_no_gateway_route_answers_5xx_to_generated_requests():
    with serve_in_thread(serve_gateway) as server:
        failures = server_errors(
            server.base_url, headers={"Authorization": f"Bearer {server.state['token']}"}
        )
    assert failures == [], "\n".join(failures)
