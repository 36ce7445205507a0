"""The gateway reloads the prices file when it changes, as inference does, so budgets
reserve at the prices requests are billed at: a price raised (or a model priced) after
start-up was reserved at the old price, or at nothing, while inference billed the new
one, and a burst overspent a budget many times over."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from switchyard.common.pricing import PriceSource
from switchyard.gateway.bootstrap import watch_prices
from switchyard.gateway.config import Settings


def write(path: Path, text: str, stamp: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(stamp, stamp))  # a new modification time, however quick the test


async def until(condition, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


async def test_admission_reserves_at_the_prices_of_the_file_as_it_is_now(tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    write(prices, "models:\n  fake: {input_per_1m: 1000, output_per_1m: 1000}\n", 10**18)
    source = PriceSource(str(prices))
    gateway = SimpleNamespace(price_source=source, admission=SimpleNamespace(prices=source.table))
    watching = asyncio.create_task(watch_prices(gateway, 0.01))  # type: ignore[arg-type]
    try:
        assert gateway.admission.prices.price("fake").output_per_1m == 1000
        assert gateway.admission.prices.price("added") is None

        write(
            prices,
            "models:\n  fake: {input_per_1m: 10000, output_per_1m: 10000}\n"
            "  added: {input_per_1m: 5, output_per_1m: 5}\n",
            2 * 10**18,
        )
        await until(lambda: gateway.admission.prices.price("added") is not None)
        assert gateway.admission.prices.price("fake").output_per_1m == 10000

        # An invalid edit keeps the table in force (once the watcher has read it).
        write(prices, "models: [not, a, table\n", 3 * 10**18)
        seen = source._file_signature()
        await until(lambda: source._signature == seen)
        await asyncio.sleep(0.05)
        assert gateway.admission.prices.price("fake").output_per_1m == 10000
        assert not watching.done()
    finally:
        watching.cancel()


PRICES_AT_START = "models:\n  fake: {input_per_1m: 1000, output_per_1m: 1000}\n"


@pytest.fixture
def prices_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.yaml"
    write(path, PRICES_AT_START, 10**18)
    return path


@pytest.fixture
def settings(prices_file: Path) -> Settings:
    """The unit harness's settings (`conftest.settings`), with a prices file watched
    every 20 ms."""
    return Settings(
        request_timeout_s=2.0,
        topic_prefix="unit",
        governance_store="memory",
        prices_file=str(prices_file),
        routing_reload_interval_s=0.02,
    )


async def test_the_running_gateway_watches_the_prices_file(harness, prices_file: Path) -> None:
    admission = harness.app.state.gateway.admission
    assert admission.prices.price("fake").output_per_1m == 1000

    write(prices_file, "models:\n  fake: {input_per_1m: 1, output_per_1m: 7}\n", 2 * 10**18)

    await until(lambda: admission.prices.price("fake").output_per_1m == 7)
