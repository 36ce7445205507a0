"""The one backoff policy of every retry and reconnect loop in Switchyard.

Exponential backoff with *full jitter* (the "Full Jitter" of AWS's Architecture Blog post
"Exponential Backoff And Jitter"): the wait before retry number n (n >= 1) is drawn
uniformly from [0, min(max_s, initial_s * 2**(n - 1))]. Drawing from the whole range keeps
replicas that failed together from retrying in lockstep; the cap bounds the wait during a
long outage. Producer and consumer reconnects, handler retries, dead-letter publishes,
upstream retries, webhook deliveries and the services' start-up waits all use it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# 2**60 times any sensible initial delay is far above any cap; the exponent is bounded so
# that a loop retrying for days never computes an overflowing float.
_MAX_EXPONENT = 60


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter.

    `initial_s` (seconds, > 0) is the ceiling of the first wait; each further retry doubles
    the ceiling up to `max_s` (seconds, > 0). Raises ValueError if either is not positive.
    """

    initial_s: float = 0.1
    max_s: float = 10.0

    def __post_init__(self) -> None:
        if not (self.initial_s > 0 and self.max_s > 0):
            raise ValueError(
                f"backoff needs positive initial_s and max_s, got {self.initial_s}, {self.max_s}"
            )

    def ceiling(self, attempt: int) -> float:
        """The longest wait (seconds) before retry number `attempt` (1 for the first retry;
        values below 1 count as 1)."""
        exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
        return min(self.max_s, self.initial_s * 2.0**exponent)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait (seconds) before retry number `attempt`: uniform in
        [0, `ceiling(attempt)`], drawn from `rng` (the module's RNG when None)."""
        return (rng or random).uniform(0.0, self.ceiling(attempt))


# The longest a polling loop waits between two rounds while its dependency fails.
POLL_FAILURE_MAX_S = 10.0


def poll_delay(interval_s: float, failures: int, rng: random.Random | None = None) -> float:
    """The wait (seconds) of a polling loop before its next round: `interval_s` after a
    round that worked (`failures == 0`), and after `failures` consecutive failed rounds
    `interval_s` plus a `Backoff(interval_s, max(POLL_FAILURE_MAX_S, interval_s))` delay,
    so a loop whose database is down backs off without ever polling faster than usual."""
    if failures <= 0:
        return interval_s
    backoff = Backoff(interval_s, max(POLL_FAILURE_MAX_S, interval_s))
    return interval_s + backoff.delay(failures, rng)
