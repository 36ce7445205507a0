"""The one backoff policy: full jitter over the whole range, exponential, capped, and the
same maths wherever a loop retries (consumer retries, webhook deliveries, polling)."""

from __future__ import annotations

import random
from unittest import mock

import pytest

from switchyard.common.backoff import POLL_FAILURE_MAX_S, Backoff, poll_delay
from switchyard.common.bus import RetryPolicy


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 0.1), (1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0), (10_000, 1.0)],
)
def test_ceiling_doubles_per_retry_up_to_the_cap(attempt: int, ceiling: float) -> None:
    assert Backoff(initial_s=0.1, max_s=1.0).ceiling(attempt) == pytest.approx(ceiling)


def test_delays_use_the_whole_range_from_zero_to_the_ceiling() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0)
    rng = random.Random(7)
    for attempt in (1, 3, 5, 50):
        ceiling = backoff.ceiling(attempt)
        delays = [backoff.delay(attempt, rng) for _ in range(1000)]
        assert 0 <= min(delays) and max(delays) <= ceiling
        # Full jitter: waits near zero happen as often as waits near the ceiling (a draw
        # from the upper half only, the old consumer maths, would fail the first check).
        assert min(delays) < ceiling * 0.05
        assert max(delays) > ceiling * 0.95


def test_delay_is_deterministic_with_a_seeded_rng() -> None:
    backoff = Backoff(initial_s=0.25, max_s=8.0)
    first = [backoff.delay(n, random.Random(42)) for n in range(1, 10)]
    again = [backoff.delay(n, random.Random(42)) for n in range(1, 10)]
    assert first == again


def test_delay_draws_uniformly_between_zero_and_the_ceiling() -> None:
    with mock.patch("switchyard.common.backoff.random.uniform", return_value=0.5) as uniform:
        assert Backoff(initial_s=0.5, max_s=3.0).delay(4) == 0.5
    uniform.assert_called_once_with(0.0, 3.0)


@pytest.mark.parametrize(("initial_s", "max_s"), [(0, 1.0), (-1, 1.0), (0.1, 0)])
def test_non_positive_bounds_are_refused(initial_s: float, max_s: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Backoff(initial_s, max_s)


def test_consumer_retry_policy_uses_the_common_maths() -> None:
    policy = RetryPolicy(max_attempts=None, initial_backoff_s=0.1, max_backoff_s=1.0)
    with mock.patch("switchyard.common.backoff.random.uniform", side_effect=lambda a, b: b):
        assert [policy.backoff(n) for n in (1, 2, 3, 4, 5, 6)] == pytest.approx(
            [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
        )
    with mock.patch("switchyard.common.backoff.random.uniform", side_effect=lambda a, b: a):
        assert policy.backoff(3) == 0.0


def test_polling_waits_the_interval_when_healthy_and_backs_off_on_failures() -> None:
    rng = random.Random(3)
    assert poll_delay(0.5, 0, rng) == 0.5
    for failures in (1, 2, 5, 100):
        delays = [poll_delay(0.5, failures, rng) for _ in range(200)]
        # Never faster than the usual interval, never slower than interval plus the cap.
        assert all(0.5 <= d <= 0.5 + POLL_FAILURE_MAX_S for d in delays)
        assert max(delays) <= 0.5 + Backoff(0.5, POLL_FAILURE_MAX_S).ceiling(failures)
