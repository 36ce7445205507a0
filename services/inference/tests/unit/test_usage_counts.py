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
