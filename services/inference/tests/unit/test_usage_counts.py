"""Token counts read from an upstream's `usage`: what is not a positive integer is 0, and
an absurd count is read as the most a count may say (MAX_TOKEN_COUNT, a signed 64-bit
integer, what every store holds) rather than failing the reply or its recording."""

from __future__ import annotations

import pytest

from switchyard.common.events import MAX_TOKEN_COUNT, TokenUsage
from switchyard.inference.usage import add_usage, anthropic_usage, openai_usage, responses_usage

BEYOND = 2**70


@pytest.mark.parametrize("value", [None, "12", True, -3, 1.5])
def test_what_is_not_a_positive_integer_counts_nothing(value) -> None:
    assert openai_usage({"prompt_tokens": value, "completion_tokens": 2}) == TokenUsage(
        output_tokens=2
    )


def test_absurd_counts_are_read_as_the_most_a_count_may_say() -> None:
    assert openai_usage({"prompt_tokens": BEYOND, "completion_tokens": 3_000_000_000}) == (
        TokenUsage(input_tokens=MAX_TOKEN_COUNT, output_tokens=3_000_000_000)
    )
    anthropic = anthropic_usage(
        {"input_tokens": MAX_TOKEN_COUNT, "cache_read_input_tokens": 5, "output_tokens": 1}
    )
    assert (anthropic.input_tokens, anthropic.cache_read_input_tokens) == (MAX_TOKEN_COUNT, 5)
    assert responses_usage({"input_tokens": BEYOND}).input_tokens == MAX_TOKEN_COUNT
    both = add_usage(anthropic, anthropic)
    assert both.input_tokens == MAX_TOKEN_COUNT and both.output_tokens == 2


def test_the_contract_refuses_a_count_beyond_64_bits() -> None:
    with pytest.raises(ValueError):
        TokenUsage(input_tokens=MAX_TOKEN_COUNT + 1)


def test_an_openai_servers_cache_writes_are_counted_and_shown() -> None:
    # `prompt_tokens_details.cache_write_tokens` (OpenAI's usage, as the `openai` SDK types
    # it): billed at the cache-write price, and shown to a Responses client.
    from switchyard.common.responses import usage_object

    usage = openai_usage(
        {
            "prompt_tokens": 100,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 40, "cache_write_tokens": 6},
        }
    )

    assert (usage.input_tokens, usage.cache_read_input_tokens) == (100, 40)
    assert usage.cache_creation_input_tokens == 6
    assert usage_object(usage)["input_tokens_details"]["cache_write_tokens"] == 6


def test_an_hours_cache_writes_are_billed_at_their_own_price() -> None:
    # Anthropic's `cache_creation` breakdown: writes kept an hour cost 2 times plain input,
    # those kept 5 minutes 1.25 times. Priced all at the 5-minute rate, they were billed
    # (and counted against budgets) about 37% low.
    from switchyard.common.pricing import SIMULATOR_PRICES, PriceTable
    from switchyard.inference.pricing import request_cost

    native = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
        "output_tokens": 20,
    }

    usage = anthropic_usage(native)

    assert (usage.cache_creation_input_tokens, usage.cache_creation_1h_input_tokens) == (3000, 2000)
    price = SIMULATOR_PRICES["sim-claude"]
    assert (price.cache_write_per_1m, price.cache_write_1h_per_1m) == (1.25, 2.0)
    expected = (10 * 1.0 + 1000 * 1.25 + 2000 * 2.0 + 20 * 5.0) / 1e6
    assert request_cost(PriceTable(), "sim-claude", None, usage) == pytest.approx(expected)
    assert add_usage(usage, usage).cache_creation_1h_input_tokens == 4000


def test_a_usage_without_an_hours_writes_reads_as_before_on_the_wire() -> None:
    # A consumer of an earlier release refuses unknown fields: the count is left out of the
    # JSON when 0, and kept when not.
    plain = TokenUsage(input_tokens=5, cache_creation_input_tokens=3)
    assert "cache_creation_1h_input_tokens" not in plain.model_dump_json()
    kept = TokenUsage(
        input_tokens=5, cache_creation_input_tokens=3, cache_creation_1h_input_tokens=2
    )
    assert TokenUsage.model_validate_json(kept.model_dump_json()) == kept


def test_the_price_library_gives_an_hours_writes_their_price() -> None:
    from switchyard.common.pricing import library_price

    price = library_price("claude-sonnet-4-5", "anthropic")

    assert price is not None and price.cache_write_per_1m is not None
    assert price.cache_write_1h_per_1m == pytest.approx(2 * price.input_per_1m)
    assert price.cache_write_1h_per_1m > price.cache_write_per_1m
