"""A provider's Retry-After, read as seconds from 0 to a day: a value no wait can be
(`inf`, `1e400`, a date centuries ahead) is a day, `nan` no answer. An infinite one
reached the gateway, whose rounding of it failed the client's answer with a 500."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from switchyard.inference.upstream import MAX_RETRY_AFTER_S, retry_after


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
