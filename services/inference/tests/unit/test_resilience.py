"""Retries, backoff, Retry-After, fallback, circuit breakers, concurrency limits and
weighted routing, each against faults injected into the real simulator over HTTP."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from switchyard.common.events import ChatCompleted, ChatFailed
from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.common.topics import Topics
from switchyard.inference.providers import ProviderPool
from switchyard.inference.reliability import Backoff, BreakerPolicy, DeploymentStates
from switchyard.inference.testing import Harness, chat_request

TOPICS = Topics("resilience")


def sim(simulator, name: str, upstream: str, **options: Any) -> Deployment:
    options = {"max_retries": 0, "timeout_s": 5, **options}
    return Deployment(
        name=name, provider="openai", model=upstream, base_url=simulator.openai_url, **options
    )


def table(*routes: tuple[str, list[Deployment]]) -> RoutingTable:
    return RoutingTable(
        models={name: ModelRoute(name=name, deployments=list(d)) for name, d in routes}
    )


@pytest.fixture
async def make_harness() -> AsyncIterator[Any]:
    started: list[tuple[Harness, ProviderPool]] = []

    async def make(routing: RoutingTable, **options: Any) -> Harness:
        providers = ProviderPool()
        options.setdefault("backoff", Backoff(0.01, 0.05))
        harness = await Harness.start(TOPICS, routing=routing, providers=providers, **options)
        started.append((harness, providers))
        return harness

    yield make
    for harness, providers in started:
        await harness.stop()
        await providers.aclose()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_5xx_is_retried_with_backoff_then_succeeds(simulator, make_harness) -> None:
    harness = await make_harness(
        table(("m", [sim(simulator, "d", "up-retry", max_retries=2)])),
        backoff=Backoff(0.05, 0.05),
    )
    simulator.fault(status=503, count=2, model="up-retry")
    retries_before = metric(
        "switchyard_inference_retries_total", model="m", deployment="d", code="upstream_error"
    )
    started = time.perf_counter()

    reply = await harness.handle(chat_request(model="m"))

    assert isinstance(reply, ChatCompleted)
    assert simulator.calls("up-retry") == 3
    assert time.perf_counter() - started < 1  # two jittered waits of at most 50 ms
    assert (
        metric(
            "switchyard_inference_retries_total", model="m", deployment="d", code="upstream_error"
        )
        - retries_before
        == 2
    )


async def test_retry_after_is_honoured(simulator, make_harness) -> None:
    harness = await make_harness(
        table(("m", [sim(simulator, "d", "up-ra", max_retries=1)])), backoff=Backoff(0.001, 0.001)
    )
    simulator.fault(status=429, retry_after=0.4, model="up-ra")
    started = time.perf_counter()

    reply = await harness.handle(chat_request(model="m"))

    assert isinstance(reply, ChatCompleted)
    assert time.perf_counter() - started >= 0.4
    assert simulator.calls("up-ra") == 2


async def test_retry_after_beyond_the_deadline_is_not_waited_for(simulator, make_harness) -> None:
    harness = await make_harness(table(("m", [sim(simulator, "d", "up-long", max_retries=3)])))
    simulator.fault(status=429, retry_after=30, model="up-long")
    started = time.perf_counter()

    reply = await harness.handle(chat_request(model="m", deadline_s=5))

    assert isinstance(reply, ChatFailed)
    assert (reply.data.error.status, reply.data.error.retry_after_s) == (429, 30)
    assert time.perf_counter() - started < 4  # answered before the 5 s deadline, not at it
    assert simulator.calls("up-long") == 1


async def test_an_upstreams_x_should_retry_false_stops_retries_but_not_fallback(
    simulator, make_harness
) -> None:
    harness = await make_harness(
        table(
            (
                "m",
                [
                    sim(simulator, "first", "up-nr", max_retries=3, priority=0),
                    sim(simulator, "second", "up-nr-2", max_retries=3, priority=1),
                ],
            )
        )
    )
    simulator.fault(status=500, should_retry=False, model="up-nr")
    simulator.fault(status=503, should_retry=False, model="up-nr-2")

    reply = await harness.handle(chat_request(model="m"))

    assert isinstance(reply, ChatFailed)
    assert (reply.data.error.status, reply.data.error.should_retry) == (503, False)
    assert (simulator.calls("up-nr"), simulator.calls("up-nr-2")) == (1, 1)


async def test_an_upstreams_x_should_retry_true_on_a_client_error_is_relayed(
    simulator, make_harness
) -> None:
    harness = await make_harness(table(("m", [sim(simulator, "d", "up-sr", max_retries=3)])))
    simulator.fault(status=409, should_retry=True, model="up-sr")

    reply = await harness.handle(chat_request(model="m"))

    assert isinstance(reply, ChatFailed)
    assert (reply.data.error.status, reply.data.error.should_retry) == (409, True)
    assert simulator.calls("up-sr") == 1  # a 4xx is the client's to retry, not inference's


async def test_an_error_without_x_should_retry_carries_none(simulator, make_harness) -> None:
    harness = await make_harness(table(("m", [sim(simulator, "d", "up-ns")])))
    simulator.fault(status=500, model="up-ns")

    reply = await harness.handle(chat_request(model="m"))

    assert isinstance(reply, ChatFailed) and reply.data.error.should_retry is None


async def test_retries_exhausted_then_fallback_to_the_next_deployment(
    simulator, make_harness
) -> None:
    harness = await make_harness(
        table(
            (
                "m",
                [
                    sim(simulator, "primary", "up-p", max_retries=2),
                    sim(simulator, "secondary", "up-s"),
                ],
            )
        )
    )
    simulator.fault(status=500, count=3, model="up-p")

    reply = await harness.handle(chat_request(model="m"))

    assert isinstance(reply, ChatCompleted) and reply.data.deployment == "secondary"
    assert simulator.stats()["models"] == {"up-p": 3, "up-s": 1}


async def test_refused_credentials_fall_back_without_retrying_the_same_deployment(
    simulator, make_harness
) -> None:
    harness = await make_harness(
        table(
            (
                "m",
                [
                    sim(simulator, "primary", "up-auth", max_retries=3),
                    sim(simulator, "secondary", "up-ok"),
                ],
            )
        )
    )
    simulator.fault(status=401, model="up-auth")

    reply = await harness.handle(chat_request(model="m"))

    assert reply.data.deployment == "secondary"
    assert simulator.stats()["models"] == {"up-auth": 1, "up-ok": 1}


async def test_timeouts_are_retried_then_fall_back(simulator, make_harness) -> None:
    harness = await make_harness(
        table(
            (
                "m",
                [
                    sim(
                        simulator,
                        "slow",
                        "up-hang",
                        timeout_s=0.2,
                        response_timeout_s=0.2,
                        max_retries=1,
                    ),
                    sim(simulator, "fast", "up-fast"),
                ],
            )
        )
    )
    simulator.fault(hang=True, count=2, model="up-hang")

    reply = await harness.handle(chat_request(model="m"))

    assert isinstance(reply, ChatCompleted) and reply.data.deployment == "fast"
    assert simulator.stats()["models"] == {"up-hang": 2, "up-fast": 1}


async def test_a_stream_failing_before_its_first_chunk_falls_back_cleanly(
    simulator, make_harness
) -> None:
    harness = await make_harness(
        table(("m", [sim(simulator, "primary", "up-p"), sim(simulator, "secondary", "up-s")]))
    )
    simulator.fault(status=503, model="up-p")
    request = chat_request(model="m", stream=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted) and reply.data.deployment == "secondary"
    chunks = harness.chunks_of(request.request_id)
    assert [chunk.data.sequence for chunk in chunks] == list(range(len(chunks)))
    assert len({event.data["id"] for event in harness.stream_of(request.request_id)}) == 1


async def test_circuit_opens_after_repeated_failures_and_probes_after_the_cooldown(
    simulator, make_harness
) -> None:
    now = [0.0]  # the breakers' clock, moved by hand: no test timing on a loaded machine
    harness = await make_harness(
        table(("m", [sim(simulator, "flaky", "up-flaky"), sim(simulator, "backup", "up-b")])),
        deployments=DeploymentStates(
            BreakerPolicy(failure_threshold=2, cooldown_s=30), clock=lambda: now[0]
        ),
    )
    state = {"model": "m", "deployment": "flaky"}
    simulator.fault(status=500, count=2, model="up-flaky")

    for _ in range(2):  # two failures (each falls back to the backup)
        assert (await harness.handle(chat_request(model="m"))).data.deployment == "backup"
    assert metric("switchyard_inference_circuit_state", **state) == 1  # open

    reply = await harness.handle(chat_request(model="m"))
    assert reply.data.deployment == "backup"
    assert simulator.calls("up-flaky") == 2  # the open circuit was not called

    now[0] += 29.9
    reply = await harness.handle(chat_request(model="m"))
    assert reply.data.deployment == "backup"  # still cooling down
    now[0] += 0.2
    reply = await harness.handle(chat_request(model="m"))  # the half-open probe
    assert reply.data.deployment == "flaky"
    assert metric("switchyard_inference_circuit_state", **state) == 0  # closed again


async def test_a_failed_probe_reopens_and_all_open_circuits_fail_fast(
    simulator, make_harness
) -> None:
    now = [0.0]
    harness = await make_harness(
        table(("m", [sim(simulator, "only", "up-only")])),
        deployments=DeploymentStates(
            BreakerPolicy(failure_threshold=1, cooldown_s=30), clock=lambda: now[0]
        ),
    )
    simulator.fault(status=502, count=2, model="up-only")
    assert (await harness.handle(chat_request(model="m"))).data.error.status == 502

    fast = await harness.handle(chat_request(model="m"))  # circuit open: no upstream call
    assert (fast.data.error.status, fast.data.error.code) == (503, "upstream_unavailable")
    assert fast.data.error.retry_after_s == 30  # the cool-down left, in whole seconds
    assert simulator.calls("up-only") == 1

    now[0] += 30.1
    probe = await harness.handle(chat_request(model="m"))
    assert probe.data.error.status == 502  # the probe failed...
    again = await harness.handle(chat_request(model="m"))
    assert again.data.error.code == "upstream_unavailable"  # ...so it is open again
    assert simulator.calls("up-only") == 2


async def test_client_errors_do_not_count_against_the_circuit(simulator, make_harness) -> None:
    harness = await make_harness(
        table(("m", [sim(simulator, "d", "up-400")])),
        deployments=DeploymentStates(BreakerPolicy(failure_threshold=1, cooldown_s=60)),
    )
    simulator.fault(status=400, model="up-400")
    assert (await harness.handle(chat_request(model="m"))).data.error.status == 400
    assert isinstance(await harness.handle(chat_request(model="m")), ChatCompleted)


async def test_concurrency_limit_spills_over_to_a_free_deployment_of_the_same_priority(
    simulator, make_harness
) -> None:
    simulator.latency(200)
    harness = await make_harness(
        table(
            (
                "m",
                [
                    sim(simulator, "a", "up-a", priority=0, weight=1, max_concurrency=1),
                    sim(simulator, "b", "up-b", priority=0, weight=1, max_concurrency=1),
                ],
            )
        )
    )
    requests = [chat_request(model="m") for _ in range(4)]
    started = time.perf_counter()

    await asyncio.gather(*(harness.handler(request) for request in requests))
    replies = [await harness.reply(request.request_id) for request in requests]

    elapsed = time.perf_counter() - started
    # The first two run at once, one on each (spill-over); the next two queue on the
    # deployment their weighted draw put first: never more than one call per deployment.
    assert {reply.data.deployment for reply in replies} == {"a", "b"}
    assert elapsed > 0.38


async def test_concurrency_limit_queues_when_every_deployment_is_busy(
    simulator, make_harness
) -> None:
    simulator.latency(100)
    harness = await make_harness(table(("m", [sim(simulator, "a", "up-limit", max_concurrency=2)])))
    requests = [chat_request(model="m") for _ in range(5)]
    started = time.perf_counter()

    await asyncio.gather(*(harness.handler(request) for request in requests))

    assert time.perf_counter() - started > 0.28  # 5 requests, 2 at a time: 3 rounds
    replies = [await harness.reply(request.request_id) for request in requests]
    assert all(isinstance(reply, ChatCompleted) for reply in replies)


async def test_weights_share_traffic_within_a_priority_group(simulator, make_harness) -> None:
    harness = await make_harness(
        table(
            (
                "m",
                [
                    # Generous timeouts: only the weights may decide where a request goes,
                    # never a slow machine making a deployment time out.
                    sim(simulator, "heavy", "up-heavy", priority=0, weight=3, timeout_s=60),
                    sim(simulator, "light", "up-light", priority=0, weight=1, timeout_s=60),
                    sim(simulator, "reserve", "up-reserve", priority=1, timeout_s=60),
                ],
            )
        ),
        rng=random.Random(20261130),  # the same draws every run
    )
    requests = [chat_request(model="m") for _ in range(200)]
    await asyncio.gather(*(harness.handler(request) for request in requests))

    calls = simulator.stats()["models"]
    assert calls.get("up-reserve", 0) == 0
    assert 0.62 < calls["up-heavy"] / 200 < 0.88


def claude(simulator, name: str, upstream: str) -> Deployment:
    return Deployment(
        name=name, provider="anthropic", model=upstream, base_url=simulator.root, max_retries=0
    )


async def test_a_fallback_that_cannot_take_the_request_does_not_hide_the_primarys_failure(
    simulator, make_harness
) -> None:
    """A `seed` the Messages API lacks is the fallback's 400: the client must still get the
    primary's retryable 500 (or 429), not a 400 telling it never to retry."""
    harness = await make_harness(
        table(("m", [sim(simulator, "primary", "up-down"), claude(simulator, "fallback", "c")]))
    )
    simulator.fault(status=500, count=1, model="up-down")

    reply = await harness.handle(chat_request(model="m", body={"seed": 5}))

    assert isinstance(reply, ChatFailed)
    assert reply.data.error.status == 500, reply.data.error
    assert reply.data.error.code != "unsupported_parameter"
    assert simulator.calls("up-down") == 1 and simulator.calls("c") == 0


async def test_a_request_only_an_open_circuit_could_take_is_told_to_retry_later(
    simulator, make_harness
) -> None:
    now = [0.0]
    harness = await make_harness(
        table(("m", [sim(simulator, "primary", "up-open"), claude(simulator, "fallback", "c2")])),
        deployments=DeploymentStates(
            BreakerPolicy(failure_threshold=1, cooldown_s=30), clock=lambda: now[0]
        ),
    )
    simulator.fault(status=502, count=1, model="up-open")
    await harness.handle(chat_request(model="m"))  # opens the primary's circuit

    reply = await harness.handle(chat_request(model="m", body={"seed": 5}))

    assert isinstance(reply, ChatFailed)
    error = reply.data.error
    assert (error.status, error.code, error.retry_after_s) == (503, "upstream_unavailable", 30)
    # Without the open circuit, the fallback's own 400 is the answer: nothing else could.
    alone = await make_harness(table(("c", [claude(simulator, "only", "c3")])))
    refused = await alone.handle(chat_request(model="c", body={"seed": 5}))
    assert (refused.data.error.status, refused.data.error.code) == (400, "unsupported_parameter")
