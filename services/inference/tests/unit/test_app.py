"""The inference app as `switchyard dev` runs it: a given in-memory bus, the lifespan
subscribing to the request topics, health and metrics over HTTP."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from switchyard.common.bus import InMemoryBus
from switchyard.common.events import (
    ChatCompleted,
    ChatRequestData,
    ChatRequested,
    ReplyAddress,
    utcnow,
)
from switchyard.common.plugins import by_name
from switchyard.common.routing import RoutingError
from switchyard.common.testing.infra import async_wait_until
from switchyard.common.topics import Topics
from switchyard.inference.app import create_app
from switchyard.inference.config import Settings


def settings_for(simulator, tmp_path: Path, **overrides) -> Settings:
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "models:\n  sim-small:\n    deployments:\n"
        "      - {name: sim, provider: openai, model: sim-small,"
        f" base_url: '{simulator.openai_url}'}}\n"
    )
    return Settings(
        topic_prefix="apptest", routing_file=str(routing), consumer_concurrency=4, **overrides
    )


def request_for(model: str, priority: str = "interactive") -> ChatRequested:
    return ChatRequested(
        source="gateway",
        tenant="acme",
        request_id=f"req-{priority}",
        data=ChatRequestData(
            model=model,
            body={"model": model, "messages": [{"role": "user", "content": "ping"}]},
            user_id="u",
            priority=priority,
            deadline=utcnow() + timedelta(seconds=30),
            reply_to=ReplyAddress(partition=0, instance_id="gw"),
        ),
    )


async def test_app_answers_requests_from_both_lanes_and_reports_health(
    simulator, tmp_path: Path
) -> None:
    topics = Topics("apptest")
    bus = InMemoryBus()
    replies: list = []

    async def collect(event) -> None:
        replies.append(event)

    await bus.listen(topics.replies, collect)
    app = create_app(settings_for(simulator, tmp_path), bus=bus)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://inference") as client,
    ):
        await bus.publish(topics.requests_interactive, request_for("sim-small"))
        await bus.publish(topics.requests_batch, request_for("sim-small", "batch"))
        await async_wait_until(
            lambda: _done(replies, 2), timeout=5, interval=0.01, message="two replies"
        )

        ready = await client.get("/readyz")
        metrics = await client.get("/metrics")
        live = await client.get("/livez")

    assert {reply.request_id for reply in replies} == {"req-interactive", "req-batch"}
    assert all(isinstance(reply, ChatCompleted) for reply in replies)
    assert ready.status_code == 200 and ready.json()["checks"] == {"bus": True}
    assert live.status_code == 200
    assert (
        'switchyard_inference_provider_call_seconds_count{deployment="sim",model="sim-small",outcome="ok"}'
        in metrics.text
    )
    assert "switchyard_inference_tokens_total" in metrics.text


async def _done(replies: list, count: int) -> bool:
    return len(replies) >= count


async def test_readiness_is_503_before_the_bus_is_started(simulator, tmp_path: Path) -> None:
    app = create_app(settings_for(simulator, tmp_path), bus=InMemoryBus())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://x"
    ) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503


async def test_bad_routing_file_stops_start_up_with_a_clear_error(tmp_path: Path) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text("models:\n  m:\n    deployments: []\n")
    app = create_app(Settings(routing_file=str(routing)), bus=InMemoryBus())
    with pytest.raises(RoutingError, match="routing.yaml: models.m.deployments"):
        async with app.router.lifespan_context(app):
            pass


def test_plugin_is_discoverable_and_runs_the_simulator_in_dev(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SWITCHYARD_ROUTING_FILE", raising=False)
    plugin = by_name("inference")

    contribution = plugin.prepare_dev()

    assert (plugin.default_port, plugin.start_order) == (8003, 10)
    assert [(name, port) for name, _, port in contribution.extra_servers] == [("simulator", 8099)]
    assert [command.__name__ for command in plugin.commands()] == ["simulator"]


def test_dev_skips_the_simulator_when_routing_does_not_use_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "models:\n  gpt:\n    deployments:\n"
        "      - {name: openai, provider: openai, model: gpt-4o-mini}\n"
    )
    monkeypatch.setenv("SWITCHYARD_ROUTING_FILE", str(routing))

    assert by_name("inference").prepare_dev().extra_servers == []
