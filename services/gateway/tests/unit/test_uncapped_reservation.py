"""What budgets and token limits reserve for a request that sets no output cap: at least
the `max_tokens` inference will send its model's Anthropic-protocol deployments (their
`default_max_tokens`, the thinking budget of a reasoning effort on top), not only the
price table's default. Reserving 4,096 tokens while inference sent 64,000 (or 36,864 for
`reasoning_effort: "xhigh"`) let a burst spend a budget fifteen times over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from switchyard.common.governance import choices, output_cap
from switchyard.common.pricing import load_prices
from switchyard.common.routing import Deployment
from switchyard.gateway.governance.estimate import estimate, uncapped_output

PRICES = load_prices(None)
MESSAGES = [{"role": "user", "content": "hi"}]


def claude(**options: Any) -> Deployment:
    return Deployment(
        name="claude",
        provider="anthropic",
        model="claude-x",
        base_url="http://127.0.0.1:9",
        api_key_env="K",
        **options,
    )


GPT = Deployment(name="gpt", provider="openai", model="gpt-x", base_url="http://127.0.0.1:9/v1")
DEFAULT = PRICES.max_output_tokens("m")


@pytest.mark.parametrize(
    ("deployments", "body", "output"),
    [
        ([GPT], {}, DEFAULT),
        ([GPT], {"reasoning_effort": "xhigh"}, DEFAULT),
        ([claude()], {}, max(DEFAULT, 4096)),
        ([claude(default_max_tokens=64_000)], {}, 64_000),
        ([GPT, claude(default_max_tokens=64_000)], {}, 64_000),
        # Thinking on: the budget of the effort, above the cap sent without it.
        ([claude()], {"reasoning_effort": "xhigh"}, 32_768 + 4096),
        ([claude()], {"reasoning_effort": "high"}, 16_384 + 4096),
        ([claude()], {"reasoning": {"effort": "medium"}}, 4096 + 4096),
        ([claude()], {"reasoning_effort": "none"}, max(DEFAULT, 4096)),
        # A cap already above the budget is kept as it is, as inference keeps it.
        ([claude(default_max_tokens=64_000)], {"reasoning_effort": "xhigh"}, 64_000),
        # Adaptive thinking is bounded by `max_tokens` itself.
        ([claude(thinking_type="adaptive")], {"reasoning_effort": "xhigh"}, max(DEFAULT, 4096)),
    ],
)
def test_the_output_reserved_without_a_cap_is_what_inference_may_send(
    deployments: list[Deployment], body: dict[str, Any], output: int
) -> None:
    assert uncapped_output("m", body, PRICES, deployments) == output


def test_inferences_own_default_is_taken_when_the_deployment_sets_none() -> None:
    assert uncapped_output("m", {}, PRICES, [claude()], 20_000) == 20_000
    assert uncapped_output("m", {"reasoning_effort": "high"}, PRICES, [claude()], 3000) == 19_384


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "max_output_tokens"])
def test_a_cap_of_the_request_is_what_is_reserved(field: str) -> None:
    body = {"model": "m", "messages": MESSAGES, "reasoning_effort": "xhigh", field: 100}
    deployments = [claude(default_max_tokens=64_000)]
    capped = estimate("m", body, PRICES, embeddings=False, deployments=deployments)
    uncapped = estimate(
        "m",
        {key: value for key, value in body.items() if key != field},
        PRICES,
        embeddings=False,
        deployments=deployments,
    )

    assert uncapped.tokens - capped.tokens == 64_000 - 100


@pytest.mark.parametrize("cap", [100_000, 100_000.0, "100000", "1e5", " 100000 ", 99_999.5])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "max_output_tokens"])
def test_a_cap_sent_as_text_or_a_float_is_reserved_as_a_lenient_server_reads_it(
    field: str, cap: object
) -> None:
    """Passed through as sent, `"100000"` is 100,000 tokens to a server that parses
    leniently (vLLM): reserving the default 4,096 for it let one request spend a budget
    many times over."""
    body = {"model": "m", "messages": MESSAGES, field: cap}
    assert output_cap(body, 4096) == 100_000


@pytest.mark.parametrize("n", [8, 8.0, "8", "7.2"])
def test_n_sent_as_text_or_a_float_is_reserved_as_a_lenient_server_reads_it(n: object) -> None:
    assert choices({"n": n}) == 8


@pytest.mark.parametrize("value", [True, None, "many", float("nan"), float("inf"), -5, 0, "0"])
def test_what_is_no_count_is_the_default(value: object) -> None:
    assert output_cap({"max_tokens": value}, 4096) == 4096
    assert choices({"n": value}) == 1


@pytest.mark.parametrize(
    "entry",
    [
        "deployments:\n  gpt: {input_per_1m: 1, output_per_1m: 1, max_output_tokens: 32768}\n",
        "models:\n  gpt-x: {input_per_1m: 1, output_per_1m: 1, max_output_tokens: 32768}\n",
        "models:\n  m: {input_per_1m: 1, output_per_1m: 1, max_output_tokens: 32768}\n",
    ],
    ids=["deployment", "upstream-model", "public-model"],
)
def test_a_price_entrys_output_limit_counts_wherever_prices_are_found(
    tmp_path: Path, entry: str
) -> None:
    """An operator sets a model's output limit (what a request without a cap may use) in
    the entry that prices it: a deployment's or an upstream model's was ignored."""
    path = tmp_path / "prices.yaml"
    path.write_text(entry)
    prices = load_prices(str(path))

    assert uncapped_output("m", {}, prices, [GPT]) == 32_768
