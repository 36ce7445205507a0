"""The building blocks of resilience on their own: backoff, circuit breaker, priority
limiter, lane gate, price table."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest

from switchyard.common.events import Priority, TokenUsage
from switchyard.common.routing import Deployment
from switchyard.inference.lanes import LaneGate
from switchyard.inference.pricing import (
    Price,
    PriceError,
    PriceSource,
    PriceTable,
    load_prices,
    request_cost,
)
from switchyard.inference.reliability import (
    Backoff,
    BreakerPolicy,
    CircuitBreaker,
    CircuitState,
    DeploymentStates,
    PriorityLimiter,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [backoff.delay(attempt, rng) for _ in range(500)]
        assert 0 <= min(delays) and max(delays) <= ceiling
        assert max(delays) > ceiling * 0.9  # the whole range is used: full jitter
        assert min(delays) < ceiling * 0.1


def test_breaker_opens_after_consecutive_failures_only() -> None:
    clock = Clock()
    changes: list[CircuitState] = []
    breaker = CircuitBreaker(BreakerPolicy(3, 10), clock=clock, on_change=changes.append)

    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    breaker.success()  # a success resets the count
    for _ in range(2):
        breaker.failure()
    assert breaker.state is CircuitState.CLOSED and breaker.allow()
    breaker.failure()

    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow()
    assert breaker.retry_in() == pytest.approx(10)
    assert changes == [CircuitState.OPEN]


def test_breaker_lets_one_probe_through_after_the_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerPolicy(1, 10), clock=clock)
    breaker.failure()
    clock.now += 9.9
    assert not breaker.allow()

    clock.now += 0.2
    assert breaker.allow()  # the probe
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allow()  # only one at a time

    breaker.failure()  # the probe failed: open for another cool-down
    assert breaker.state is CircuitState.OPEN and not breaker.allow()
    clock.now += 10
    assert breaker.allow()
    breaker.release()  # the probe was cancelled: another may go
    assert breaker.allow()
    breaker.success()
    assert breaker.state is CircuitState.CLOSED and breaker.failures == 0
    assert breaker.allow() and breaker.allow()


async def test_priority_limiter_serves_interactive_waiters_first() -> None:
    limiter = PriorityLimiter(1)
    await limiter.acquire()
    order: list[str] = []

    async def wait(name: str, priority: Priority) -> None:
        await limiter.acquire(priority)
        order.append(name)
        await asyncio.sleep(0)
        limiter.release()

    tasks = [
        asyncio.create_task(wait("batch-1", Priority.BATCH)),
        asyncio.create_task(wait("batch-2", Priority.BATCH)),
    ]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(wait("interactive", Priority.INTERACTIVE)))
    await asyncio.sleep(0)
    limiter.release()
    await asyncio.gather(*tasks)

    assert order == ["interactive", "batch-1", "batch-2"]
    assert limiter.in_use == 0


async def test_priority_limiter_waiter_cancelled_keeps_the_count_right() -> None:
    limiter = PriorityLimiter(1)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    limiter.release()  # hands the slot to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.in_use == 0
    await asyncio.wait_for(limiter.acquire(), 1)


def test_full_deployments_go_after_free_ones_of_their_priority_group_only() -> None:
    states = DeploymentStates(BreakerPolicy())
    a, b, c = (
        Deployment(name=n, provider="openai", model="x", priority=p, max_concurrency=1)
        for n, p in (("a", 0), ("b", 0), ("c", 1))
    )
    states.get("m", a).limiter.in_use = 1  # a is full

    assert [d.name for d in states.order("m", [a, b, c])] == ["b", "a", "c"]
    states.get("m", b).limiter.in_use = 1
    assert [d.name for d in states.order("m", [a, b, c])] == ["a", "b", "c"]


def test_reloaded_concurrency_limit_is_followed() -> None:
    states = DeploymentStates(BreakerPolicy())
    deployment = Deployment(name="a", provider="openai", model="x", max_concurrency=2)
    assert states.get("m", deployment).limiter.capacity == 2
    assert (
        states.get("m", deployment.model_copy(update={"max_concurrency": 5})).limiter.capacity == 5
    )
    assert states.get("m", deployment.model_copy(update={"max_concurrency": None})).limiter is None


async def test_lane_gate_holds_batch_back_while_interactive_is_busy() -> None:
    gate = LaneGate(interactive_capacity=4, batch_capacity=2, batch_yield_ratio=0.5)
    started: list[str] = []
    release = asyncio.Event()

    async def run(name: str, priority: Priority) -> None:
        async with gate.slot(priority):
            started.append(name)
            await release.wait()

    interactive = [asyncio.create_task(run(f"i{n}", Priority.INTERACTIVE)) for n in range(2)]
    await asyncio.sleep(0)
    batch = [asyncio.create_task(run(f"b{n}", Priority.BATCH)) for n in range(3)]
    await asyncio.sleep(0.01)
    assert sorted(started) == ["i0", "i1"]  # 2 of 4 interactive slots busy: batch waits

    release.set()
    await asyncio.gather(*interactive)
    await asyncio.sleep(0.01)
    assert {"b0", "b1", "b2"} <= set(started)
    await asyncio.gather(*batch)
    assert (gate.interactive, gate.batch) == (0, 0)


async def test_lane_gate_caps_batch_and_keeps_its_order() -> None:
    gate = LaneGate(interactive_capacity=10, batch_capacity=1)
    order: list[int] = []

    async def run(n: int) -> None:
        async with gate.slot(Priority.BATCH):
            order.append(n)
            assert gate.batch == 1
            await asyncio.sleep(0.001)

    await asyncio.gather(*(run(n) for n in range(5)))
    assert order == [0, 1, 2, 3, 4]


async def test_a_cancelled_batch_waiter_leaves_the_line() -> None:
    gate = LaneGate(interactive_capacity=2, batch_capacity=1, batch_yield_ratio=0.5)
    async with gate.slot(Priority.INTERACTIVE):
        waiter = asyncio.create_task(gate.slot(Priority.BATCH).__aenter__())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    async with gate.slot(Priority.BATCH):
        assert gate.batch == 1


# --------------------------------------------------------------------------- prices


def test_prices_by_deployment_then_upstream_model_then_public_model(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "deployments:\n  special: {input_per_1m: 10, output_per_1m: 20}\n"
        "models:\n"
        "  upstream-x: {input_per_1m: 1, output_per_1m: 2}\n"
        "  public: {input_per_1m: 0.5}\n"
    )
    table = load_prices(str(path))

    def deployment(name: str, upstream: str) -> Deployment:
        return Deployment(name=name, provider="openai", model=upstream)

    assert (
        request_cost(
            table,
            "public",
            deployment("special", "upstream-x"),
            TokenUsage(input_tokens=1_000_000, output_tokens=500_000),
        )
        == 20
    )
    assert (
        request_cost(
            table,
            "public",
            deployment("other", "upstream-x"),
            TokenUsage(input_tokens=1_000_000, output_tokens=500_000),
        )
        == 2
    )
    assert (
        request_cost(
            table,
            "public",
            deployment("other", "unknown"),
            TokenUsage(input_tokens=2_000_000, output_tokens=9),
        )
        == 1
    )
    assert (
        request_cost(
            table,
            "unpriced",
            deployment("other", "unknown"),
            TokenUsage(input_tokens=1_000, output_tokens=1_000),
        )
        == 0
    )
    assert (
        request_cost(
            load_prices(None), "public", None, TokenUsage(input_tokens=10**9, output_tokens=10**9)
        )
        == 0
    )


def test_bad_price_files_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  m: {input_per_1m: -1}\n")
    with pytest.raises(PriceError, match=r"prices.yaml: models\.m\.input_per_1m"):
        load_prices(str(path))
    path.write_text("models:\n  m: {input: 1}\n")
    with pytest.raises(PriceError, match="input"):
        load_prices(str(path))


def test_price_source_reloads_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  m: {input_per_1m: 1}\n")
    source = PriceSource(str(path))
    assert not source.reload_if_changed()
    path.write_text("models:\n  m: {input_per_1m: 2, output_per_1m: 3}\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert source.reload_if_changed()
    assert (
        request_cost(
            source.table, "m", None, TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)
        )
        == 5
    )


def test_cache_reads_and_writes_are_priced_at_their_own_rates(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "models:\n"
        "  claude: {input_per_1m: 3, output_per_1m: 15, cache_read_per_1m: 0.3,"
        " cache_write_per_1m: 3.75}\n"
        "  gpt: {input_per_1m: 2, output_per_1m: 8}\n"
    )
    table = load_prices(str(path))
    usage = TokenUsage(
        input_tokens=1_000_000 + 2_000_000 + 4_000_000,  # uncached + read + written
        output_tokens=1_000_000,
        cache_read_input_tokens=2_000_000,
        cache_creation_input_tokens=4_000_000,
    )

    assert request_cost(table, "claude", None, usage) == pytest.approx(3 + 2 * 0.3 + 4 * 3.75 + 15)
    # Without cache prices, cached tokens cost the input price (never counted twice).
    assert request_cost(table, "gpt", None, usage) == pytest.approx(7 * 2 + 8)


def test_default_prices_cover_the_simulator_and_public_models() -> None:
    table = load_prices(None)
    million_each = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    # The simulator's models are priced, so budgets work in embedded mode.
    assert request_cost(table, "sim-small", None, million_each) == 2.0
    # Public models come from the genai-prices snapshot: gpt-4o-mini is $0.15 / $0.60.
    openai = Deployment(name="openai", provider="openai", model="gpt-4o-mini")
    assert request_cost(table, "gpt-4o-mini", openai, million_each) == pytest.approx(0.75)
    # A file entry overrides the default.
    overridden = PriceTable(models={"gpt-4o-mini": Price(input_per_1m=1.0)})
    assert request_cost(overridden, "gpt-4o-mini", openai, million_each) == pytest.approx(1.0)
