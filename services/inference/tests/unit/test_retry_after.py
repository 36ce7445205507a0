"""A provider's Retry-After, read as seconds from 0 to a day: a value no wait can be
(`inf`, `1e400`, a date centuries ahead) is a day, `nan` no answer. An infinite one
reached the gateway, whose rounding of it failed the client's answer with a 500."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from switchyard.inference.upstream import MAX_RETRY_AFTER_S, rate_limit_reset, retry_after


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "inf"}, MAX_RETRY_AFTER_S),
        ({"retry-after": "1e400"}, MAX_RETRY_AFTER_S),
        ({"retry-after": "-inf"}, 0.0),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "nan", "retry-after": "2"}, 2.0),
        ({"retry-after-ms": "inf"}, MAX_RETRY_AFTER_S),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_a_retry_after_is_a_wait_of_at_most_a_day(headers, expected):
    assert retry_after(httpx.Headers(headers)) == expected


def test_a_date_far_ahead_is_a_day_and_one_past_is_now():
    ahead = format_datetime(datetime(9999, 12, 31, tzinfo=UTC), usegmt=True)
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert retry_after(httpx.Headers({"retry-after": ahead})) == MAX_RETRY_AFTER_S
    assert retry_after(httpx.Headers({"retry-after": past})) == 0.0
    soon = retry_after(
        httpx.Headers(
            {"retry-after": format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)}
        )
    )
    assert soon is not None and math.isfinite(soon) and 80 < soon <= 90


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # OpenAI: the limit at 0 decides, as a Go duration.
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}, 360.0),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms"}, 0.02),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1h2m3.5s"}, 3723.5),
        # Already refilled: no wait of its own, the retry's backoff applies.
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "0s"}, None),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1500us"}, 0.0015),
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "7s",
            },
            7.0,
        ),
        # A limit not used up says nothing about this 429.
        ({"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "6m0s"}, None),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "soon"}, None),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0sx"}, None),
        ({"x-ratelimit-remaining-tokens": "none", "x-ratelimit-reset-tokens": "1s"}, None),
        (
            {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "99999h"},
            MAX_RETRY_AFTER_S,
        ),
        ({}, None),
    ],
)
def test_a_spent_limit_names_the_wait_until_it_refills(headers, expected):
    assert rate_limit_reset(httpx.Headers(headers)) == pytest.approx(expected)


def test_anthropic_names_the_refill_as_an_instant():
    ahead = (datetime.now(UTC) + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    headers = {
        "anthropic-ratelimit-output-tokens-remaining": "0",
        "anthropic-ratelimit-output-tokens-reset": ahead,
        "anthropic-ratelimit-requests-remaining": "12",
        "anthropic-ratelimit-requests-reset": "2999-01-01T00:00:00Z",
    }
    wait = rate_limit_reset(httpx.Headers(headers))
    assert wait is not None and 25 < wait <= 30
    headers["anthropic-ratelimit-output-tokens-reset"] = "2000-01-01T00:00:00Z"
    assert rate_limit_reset(httpx.Headers(headers)) is None  # past: the backoff applies
    headers["anthropic-ratelimit-output-tokens-reset"] = "2026-12-07T15:00:00"  # no zone
    assert rate_limit_reset(httpx.Headers(headers)) is None
