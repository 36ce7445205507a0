"""A request whose upstreams report more output tokens than its own cap allows is billed
as reported, beyond what its budget reserved: inference counts and logs it
(`switchyard_inference_output_over_cap_total`) instead of billing it silently."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from switchyard.common.events import TerminalStatus, TokenUsage
from switchyard.common.pricing import PriceTable
from switchyard.common.routing import Deployment
from switchyard.inference.outcomes import FixedPrices, Outcome, OutcomeEvents
from switchyard.inference.testing import chat_request

DEPLOYMENT = Deployment(name="d", provider="openai", model="u", base_url="http://127.0.0.1:9/v1")


def over_cap() -> float:
    labels = {"model": "m", "deployment": "d"}
    return REGISTRY.get_sample_value("switchyard_inference_output_over_cap_total", labels) or 0.0


@pytest.mark.parametrize(
    ("body", "output_tokens", "counted"),
    [
        ({"max_tokens": 10}, 100_000, True),
        ({"max_completion_tokens": "10"}, 11, True),
        ({"max_tokens": 10, "n": 2}, 20, False),
        ({"max_tokens": 10, "n": 2}, 21, True),
        ({"max_output_tokens": 50}, 50, False),
        ({}, 100_000, False),  # no cap of its own: reserved at the price table's default
    ],
)
def test_output_beyond_the_requests_cap_is_counted(
    body: dict[str, Any], output_tokens: int, counted: bool
) -> None:
    request = chat_request(model="m", body={"model": "m", "messages": [], **body})
    outcome = Outcome(
        TerminalStatus.COMPLETED,
        response={},
        deployment=DEPLOYMENT,
        usage=TokenUsage(input_tokens=5, output_tokens=output_tokens),
    )
    before = over_cap()

    OutcomeEvents(FixedPrices(PriceTable())).record_metrics(request, outcome, 0.0)

    assert over_cap() - before == (1.0 if counted else 0.0)
