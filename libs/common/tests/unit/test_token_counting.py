"""Token counts of client text of any length: never refused by the tokenizer library
(it refuses a text of a million characters, or one making over 200,000 tokens, in one
call), and within a budget of characters actually encoded."""

from __future__ import annotations

import pytest

from switchyard.common.tokenizer import (
    CHUNK_CHARS,
    SAMPLE_WINDOW_CHARS,
    TokenCounter,
    count_text,
    encoding,
)


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


def test_past_its_budget_a_counter_estimates_from_samples_of_the_rest() -> None:
    counter = TokenCounter(exact_chars=CHUNK_CHARS)
    measured = counter.count("hello world " * 6_000)  # 72,000 characters: two pieces
    assert counter.encoded_chars >= CHUNK_CHARS
    estimated = counter.count("hello world " * 100_000)  # nothing more encoded whole
    assert counter.encoded_chars < 2 * CHUNK_CHARS
    assert 0 <= counter.sampling_budget < SAMPLE_WINDOW_CHARS  # the samples' cost is bounded
    # Each window cut mid-word may count a token more at its ends: the estimate errs high.
    assert estimated == pytest.approx(measured * 100_000 / 6_000, rel=0.04)
    assert estimated >= measured * 100_000 // 6_000  # a reservation errs high


def test_a_counter_that_measured_nothing_counts_a_token_a_character() -> None:
    assert TokenCounter(exact_chars=0).count("abc def") == 7


@pytest.mark.parametrize(
    "dense",
    [
        "x " * 150_000,  # a token a word
        "日本語のテキスト。" * 30_000,  # no whitespace at all
        "".join(chr(0x4E00 + (i * 7919) % 20_000) for i in range(250_000)),  # rare characters
    ],
    ids=["words", "japanese", "rare-characters"],
)
def test_padding_the_head_of_a_prompt_does_not_make_the_rest_cheap(dense: str) -> None:
    """A million spaces make 0.008 tokens a character: estimated at the head's ratio, a
    padded prompt's dense rest was taken for a hundredth of its tokens, and a request
    many times a budget or a tokens-per-minute limit was admitted."""
    budget = 100_000
    exact = count_text(dense)
    for texts in (
        [" " * budget + dense],
        [" " * budget, dense],
        [" " * budget] + [dense[i : i + 3_000] for i in range(0, len(dense), 3_000)],
    ):
        counter = TokenCounter(exact_chars=budget)
        estimated = counter.count_all(texts)
        assert estimated >= 0.9 * exact, (estimated, exact)
        assert estimated <= 1.15 * exact + budget
        # Never more than the budgets encoded, whatever the texts.
        assert counter.encoded_chars <= budget + CHUNK_CHARS
        assert counter.sampling_budget >= 0


def test_dense_text_hidden_between_stretches_of_spaces_is_found() -> None:
    # Dense stretches a tenth of the rest, spread through it: the samples fall at random
    # in every stride, so they are hit in proportion.
    # With the gateway's budget, about a thousand windows: in trials the estimates lay
    # within 0.82 and 1.13 of the exact count; 0.6 is five standard deviations away.
    budget = 1_000_000
    block = " " * 4_500 + "日本語のテキスト。" * 55
    rest = block * 400
    exact = count_text(" " * budget + rest)
    estimates = [TokenCounter(exact_chars=budget).count(" " * budget + rest) for _ in range(3)]
    assert min(estimates) >= 0.6 * exact, (estimates, exact)
