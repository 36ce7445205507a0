"""The inference app as `switchyard dev` runs it: a given in-memory bus, the lifespan
subscribing to the request topics, health and metrics over HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from switchyard.common.bus import InMemoryBus
from switchyard.common.events import (
    ChatCompleted,
    ChatFailed,
    ChatRequestData,
    ChatRequested,
    ChatStarted,
    Priority,
    ReplyAddress,
    utcnow,
)
from switchyard.common.plugins import by_name
from switchyard.common.routing import RoutingError
from switchyard.common.testing.infra import async_ready, async_wait_until
from switchyard.common.topics import Topics
from switchyard.inference.app import ControlListener, create_app
from switchyard.inference.config import Settings
from switchyard.inference.redelivery import LocalOutcomeLog
from switchyard.inference.testing import cancel_request


def settings_for(simulator, tmp_path: Path, **overrides) -> Settings:
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "models:\n  sim-small:\n    deployments:\n"
        "      - {name: sim, provider: openai, model: sim-small,"
        f" base_url: '{simulator.openai_url}'}}\n"
    )
    options = {"interactive_concurrency": 4, "routing_reload_interval_s": 0, **overrides}
    return Settings(topic_prefix="apptest", routing_file=str(routing), **options)


def request_for(
    model: str, priority: str = "interactive", request_id: str | None = None
) -> ChatRequested:
    return ChatRequested(
        source="gateway",
        tenant="acme",
        request_id=request_id or f"req-{priority}",
        data=ChatRequestData(
            api="openai.chat_completions",
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

        ready = await async_ready(lambda: client.get("/readyz"))
        metrics = await client.get("/metrics")
        live = await client.get("/livez")

    # The batch lane's request is announced when it starts (`chat.started`), then answered.
    started = [reply for reply in replies if isinstance(reply, ChatStarted)]
    assert [(event.request_id, event.data.priority) for event in started] == [
        ("req-batch", Priority.BATCH)
    ]
    answers = [reply for reply in replies if not isinstance(reply, ChatStarted)]
    assert {reply.request_id for reply in answers} == {"req-interactive", "req-batch"}
    assert all(isinstance(reply, ChatCompleted) for reply in answers)
    assert replies.index(started[0]) < next(
        i for i, reply in enumerate(replies) if reply.request_id == "req-batch" and reply in answers
    )
    assert ready.json()["checks"] == {"bus": True, "outcomes": True}
    assert live.status_code == 200
    assert (
        'switchyard_inference_provider_call_seconds_count{deployment="sim",model="sim-small",outcome="ok"}'
        in metrics.text
    )
    assert "switchyard_inference_tokens_total" in metrics.text


async def _done(replies: list, count: int) -> bool:
    return sum(not isinstance(reply, ChatStarted) for reply in replies) >= count


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
    assert plugin.commands() == []  # `switchyard simulator` comes from its own distribution


def test_dev_without_the_simulator_distribution_says_so_instead_of_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SWITCHYARD_ROUTING_FILE", raising=False)
    # As in a production image: the switchyard-simulator distribution is not installed.
    monkeypatch.setitem(sys.modules, "switchyard.simulator.app", None)

    contribution = by_name("inference").prepare_dev()

    assert contribution.extra_servers == []
    assert "switchyard-simulator" in contribution.messages[0]
    assert "not installed" in contribution.messages[0]


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


def test_old_consumer_concurrency_setting_still_sets_the_interactive_lane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SWITCHYARD_INFERENCE_CONSUMER_CONCURRENCY", "7")
    assert Settings().interactive_concurrency == 7
    monkeypatch.setenv("SWITCHYARD_INFERENCE_INTERACTIVE_CONCURRENCY", "9")
    assert Settings().interactive_concurrency == 9


async def test_cancellations_on_the_control_topic_reach_the_running_request(
    simulator, tmp_path: Path
) -> None:
    topics = Topics("apptest")
    bus = InMemoryBus()
    replies: list = []

    async def collect(event) -> None:
        replies.append(event)

    await bus.listen(topics.replies, collect)
    simulator.fault(hang=True)
    app = create_app(settings_for(simulator, tmp_path), bus=bus)
    async with app.router.lifespan_context(app):
        await bus.publish(topics.requests_interactive, request_for("sim-small", request_id="r1"))
        await async_wait_until(
            lambda: _called(simulator), timeout=5, interval=0.01, message="upstream call"
        )
        await bus.publish(topics.control, cancel_request("r1"))
        await async_wait_until(
            lambda: _done(replies, 1), timeout=3, interval=0.01, message="cancelled reply"
        )

    (reply,) = replies
    assert isinstance(reply, ChatFailed) and reply.data.status == "cancelled"


async def _called(simulator) -> bool:
    return simulator.calls() >= 1


async def test_routing_file_changes_apply_without_restart_on_sighup_and_by_polling(
    simulator, tmp_path: Path
) -> None:
    settings = settings_for(simulator, tmp_path)
    routing = Path(settings.routing_file)
    topics = Topics("apptest")
    bus = InMemoryBus()
    replies: list = []

    async def collect(event) -> None:
        replies.append(event)

    await bus.listen(topics.replies, collect)
    app = create_app(settings, bus=bus)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        assert runtime.routing.model_names() == ["sim-small"]
        rewrite(
            routing,
            "  renamed:\n    deployments:\n"
            "      - {name: sim, provider: openai, model: sim-large,"
            f" base_url: '{simulator.openai_url}'}}\n",
            append=True,
        )
        os.kill(os.getpid(), signal.SIGHUP)
        await async_wait_until(
            lambda: _has_model(runtime, "renamed"), timeout=3, interval=0.01, message="reload"
        )
        await bus.publish(topics.requests_interactive, request_for("renamed", request_id="r2"))
        await async_wait_until(lambda: _done(replies, 1), timeout=5, interval=0.01, message="reply")
    assert isinstance(replies[0], ChatCompleted)
    assert simulator.calls("sim-large") == 1

    # Polling notices a change too (no signal), and a broken file keeps the last table.
    app = create_app(
        settings.model_copy(update={"routing_reload_interval_s": 0.05}), bus=InMemoryBus()
    )
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        rewrite(routing, "models: [broken", bump_s=1)
        await asyncio.sleep(0.2)
        assert "renamed" in runtime.routing.model_names()
        rewrite(
            routing,
            "models:\n  only:\n    deployments:\n"
            "      - {name: sim, provider: openai, model: x,"
            f" base_url: '{simulator.openai_url}'}}\n",
            bump_s=2,
        )
        await async_wait_until(
            lambda: _has_model(runtime, "only"), timeout=3, interval=0.02, message="poll"
        )
        assert runtime.routing.model_names() == ["only"]


def rewrite(path: Path, text: str, bump_s: int = 0, append: bool = False) -> None:
    """Write the file and move its mtime forward (coarse file-system clocks)."""
    path.write_text((path.read_text() if append else "") + text)
    if bump_s:
        os.utime(path, ns=(time.time_ns(), time.time_ns() + bump_s * 10**9))


async def _has_model(runtime, name: str) -> bool:
    return name in runtime.routing.model_names()


async def test_batch_backlog_does_not_delay_interactive_requests(simulator, tmp_path: Path) -> None:
    """An interactive request published behind 300 queued batch requests does not wait for
    them: while it is served, only the few batch requests already in the batch lane's slots
    finish, never the backlog queued before it.

    Measured in batch completions, not seconds: a loaded machine slows both lanes alike,
    so the count an interactive request sees go by holds wherever the test runs."""
    simulator.latency(30)
    topics = Topics("apptest")
    bus = InMemoryBus()
    arrived: set[str] = set()
    # For each interactive request: batch requests finished when it was published, and
    # when its reply arrived.
    batch_done_at_publish: dict[str, int] = {}
    batch_done_at_reply: dict[str, int] = {}
    batch_done: list[str] = []

    async def collect(event) -> None:
        if isinstance(event, ChatCompleted | ChatFailed):
            arrived.add(event.request_id)
            if event.request_id.startswith("batch-"):
                batch_done.append(event.request_id)
            else:
                batch_done_at_reply[event.request_id] = len(batch_done)

    await bus.listen(topics.replies, collect)
    batch_concurrency = 4
    settings = settings_for(
        simulator, tmp_path, interactive_concurrency=16, batch_concurrency=batch_concurrency
    )
    app = create_app(settings, bus=bus)

    async def client(name: str, rounds: int) -> list[str]:
        sent = []
        for n in range(rounds):
            request_id = f"{name}-{n}"
            batch_done_at_publish[request_id] = len(batch_done)
            await bus.publish(
                topics.requests_interactive, request_for("sim-small", request_id=request_id)
            )
            await async_wait_until(
                lambda request_id=request_id: _arrived(arrived, request_id),
                timeout=30,
                interval=0.002,
                message="interactive reply",
            )
            sent.append(request_id)
        return sent

    async def interactive(label: str) -> list[str]:
        results = await asyncio.gather(*(client(f"{label}{c}", 6) for c in range(6)))
        return [request_id for sent in results for request_id in sent]

    async with app.router.lifespan_context(app):
        await interactive("warm")
        for n in range(300):
            await bus.publish(
                topics.requests_batch, request_for("sim-small", "batch", request_id=f"batch-{n}")
            )
        busy = await interactive("busy")
        backlog_left = 300 - len(batch_done)
        await async_wait_until(
            lambda: _done(batch_done, 300), timeout=60, interval=0.05, message="batch drained"
        )

    # Batch requests that finished while each interactive request waited for its reply.
    overtaken = sorted(batch_done_at_reply[r] - batch_done_at_publish[r] for r in busy)
    assert backlog_left > 100  # the batch backlog really was there while we measured
    # Queued behind the backlog, each would see hundreds finish first. Served at once, a
    # typical one sees about one round of the batch lane's slots (here 4 at a time) finish,
    # and even the unluckiest a handful of rounds.
    assert overtaken[len(overtaken) // 2] <= 2 * batch_concurrency, overtaken
    assert overtaken[-1] <= 10 * batch_concurrency, overtaken
    assert len(set(batch_done)) == 300  # and batch work was not lost, only held back


async def _arrived(arrived: set[str], request_id: str) -> bool:
    return request_id in arrived


async def test_control_listener_keeps_trying_until_the_topic_can_be_read() -> None:
    class LateTopicBus(InMemoryBus):
        failures = 2

        async def listen(self, topic, handler, *, partitions=None):
            if self.failures:
                self.failures -= 1
                raise AssertionError("No partitions are currently assigned")
            return await super().listen(topic, handler, partitions=partitions)

    bus = LateTopicBus()
    seen: list = []

    async def handler(event) -> None:
        seen.append(event)

    listener = ControlListener(bus, "t.control", handler, retry_every_s=0.01)
    await listener.start()  # does not wait: requests are served meanwhile
    await async_wait_until(
        lambda: _listening(listener), timeout=2, interval=0.01, message="listening"
    )
    await bus.publish("t.control", cancel_request("r"))
    await async_wait_until(lambda: _done(seen, 1), timeout=2, interval=0.01, message="event")
    await listener.stop()
    await bus.stop()


async def _listening(listener) -> bool:
    return listener.subscription is not None


async def test_a_lane_that_cannot_be_subscribed_is_retried_and_stopped_with_the_rest(
    simulator, tmp_path: Path
):
    """The batch lane cannot be subscribed (its topic unavailable, Kafka away): start-up
    goes on, retrying it in the background with readiness failing, as the gateway's
    listeners do; stopping stops the retry, the interactive lane's consumer and the
    outcomes log started before it, so a stopped replica holds no consumer."""
    topics = Topics("apptest")
    stopped: list[str] = []

    class Outcomes(LocalOutcomeLog):
        async def stop(self) -> None:
            stopped.append("outcomes")
            await super().stop()

    class Bus(InMemoryBus):
        async def subscribe(self, topics_, group, handler, **options):  # type: ignore[override]
            if list(topics_) == [topics.requests_batch]:
                raise RuntimeError("batch topic unavailable")
            subscription = await super().subscribe(topics_, group, handler, **options)
            stop = subscription.stop

            async def recorded_stop() -> None:
                stopped.append(f"consumer {','.join(topics_)}")
                await stop()

            subscription.stop = recorded_stop  # type: ignore[method-assign]
            return subscription

    bus = Bus()
    await bus.start()
    outcomes = Outcomes(60.0, 1024 * 1024)
    app = create_app(settings_for(simulator, tmp_path), bus=bus, outcomes=outcomes)
    try:
        async with app.router.lifespan_context(app):
            assert not app.state.consumers.consuming()
            assert stopped == []
        stopped_by_the_app = list(stopped)
    finally:
        await bus.stop()

    assert stopped_by_the_app == [f"consumer {topics.requests_interactive}", "outcomes"]
    assert app.state.bus is None and app.state.outcomes is None


async def test_a_job_whose_deadline_passed_in_its_lane_is_not_said_to_have_reached_the_upstream(
    simulator, tmp_path: Path
) -> None:
    """A batch request that waited in its lane past its deadline was reported expired
    "while the upstream was answering", though it never reached it."""
    simulator.latency(600)
    topics = Topics("apptest")
    bus = InMemoryBus()
    replies: list = []

    async def collect(event) -> None:
        replies.append(event)

    await bus.listen(topics.replies, collect)
    app = create_app(settings_for(simulator, tmp_path, batch_concurrency=1), bus=bus)
    first = request_for("sim-small", "batch", request_id="batch-first")
    late = request_for("sim-small", "batch", request_id="batch-late")
    late = late.model_copy(
        update={
            "data": late.data.model_copy(update={"deadline": utcnow() + timedelta(seconds=0.3)})
        }
    )
    async with app.router.lifespan_context(app):
        await bus.publish(topics.requests_batch, first)
        await bus.publish(topics.requests_batch, late)
        await async_wait_until(
            lambda: _done(replies, 2), timeout=10, interval=0.01, message="two outcomes"
        )
    [outcome] = [r for r in replies if r.request_id == "batch-late" and isinstance(r, ChatFailed)]
    assert outcome.data.error.code == "deadline_exceeded"
    assert "while the upstream was answering" not in outcome.data.error.message
    assert simulator.calls("sim-small") == 1  # the late one never reached it
