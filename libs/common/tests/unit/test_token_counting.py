"""Token counts of client text of any length: never refused by the tokenizer library
(it refuses a text of a million characters, or one making over 200,000 tokens, in one
call), and within a budget of characters actually encoded."""

from __future__ import annotations

import pytest

from switchyard.common.tokenizer import CHUNK_CHARS, TokenCounter, count_text, encoding


@pytest.mark.parametrize(
    "text",
    [
        "word " * 210_000,  # over 200,000 tokens
        "x" * 1_500_000,  # over a million characters, no whitespace to cut at
        "line\n" * 300_000,
        "\U00020000" * 52_000,  # 4-byte characters: several tokens each
        "日本語のテキスト。" * 30_000,
    ],
)
def test_a_text_of_any_length_is_counted(text: str) -> None:
    counted = count_text(text)
    # Counted in pieces cut at whitespace: the same as the library's count of the whole,
    # within a token per piece (where it can count the whole at all).
    pieces = len(text) // CHUNK_CHARS + 1
    sample = text[: CHUNK_CHARS * 4]
    expected = len(encoding().encode_ordinary(sample)) * (len(text) / len(sample))
    assert abs(counted - expected) <= pieces + 4


def test_short_texts_are_counted_exactly() -> None:
    text = "Hello, world! " * 50
    assert count_text(text) == len(encoding().encode_ordinary(text))
    assert count_text("") == 0


def test_past_its_budget_a_counter_estimates_at_the_ratio_it_measured() -> None:
    counter = TokenCounter(exact_chars=CHUNK_CHARS)
    measured = counter.count("hello world " * 6_000)  # 72,000 characters: two pieces
    assert counter.encoded_chars >= CHUNK_CHARS
    estimated = counter.count("hello world " * 100_000)  # nothing more encoded
    assert counter.encoded_chars < 2 * CHUNK_CHARS
    assert estimated == pytest.approx(measured * 100_000 / 6_000, rel=0.01)
    assert estimated >= measured * 100_000 // 6_000  # rounded up: a reservation errs high


def test_a_counter_that_measured_nothing_counts_a_token_a_character() -> None:
    assert TokenCounter(exact_chars=0).count("abc def") == 7
