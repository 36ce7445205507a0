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


def test_many_short_dense_texts_after_padding_weigh_their_length() -> None:
    """A window that began in a six-character text stopped at its end, yet the sampled
    tokens were divided by the characters sampled in all: short dense texts counted for
    about a hundredth of their weight, and 600,000 of them passed as 8% of their tokens."""
    import random
    import string

    chooser = random.Random(7)
    tiny = ["".join(chooser.choices(string.printable[:94], k=6)) for _ in range(60_000)]
    texts = [" " * 2_000_000, *tiny]
    exact = sum(count_text(text) for text in texts)
    estimated = TokenCounter(exact_chars=100_000).count_all(texts)
    assert 0.8 * exact <= estimated <= 1.25 * exact, (estimated, exact)


def test_queued_texts_are_sampled_together() -> None:
    # One text after another past the budget: the first no longer spends the sampling on
    # itself alone, leaving the next to be rated at the padding's ratio.
    dense = "日本語のテキスト。" * 60_000
    counter = TokenCounter(exact_chars=100_000)
    for text in (" " * 400_000, " " * 100_001, dense):
        assert counter.add(text) == 0
    assert counter.count_queued() >= 0.9 * count_text(dense)
    assert counter.count_queued() == 0  # the queue was emptied


def test_the_word_floor_is_never_above_the_count() -> None:
    # Non-breaking and ideographic spaces are not words (each pair is a piece or two).
    for text in (" \u00a0" * 50_000, " \u3000" * 50_000, "a b" * 50_000, "日本 x" * 20_000):
        counter = TokenCounter(exact_chars=0)
        counter.sampling_budget = 0  # the floor alone against a ratio of 0
        counter.highest_ratio = 1e-9
        assert counter.count(text) <= count_text(text), text[:4]
