"""Login rate limits, per account and per client address, in process memory.

Each limiter keeps, per key, the times of recent attempts inside a sliding window. The
account limit counts failed sign-ins and is cleared by a successful one; the address limit
counts every attempt, so one client cannot spray passwords across many accounts. A caller
over a limit gets 429 with the seconds until the oldest counted attempt leaves the window.

The state is per process: with N auth workers or replicas an attacker gets up to N times
the configured attempts. That keeps sign-in free of any shared store, and the bound stays
small (argon2 makes each guess cost tens of milliseconds anyway). Memory is bounded: at
most `max_keys` keys are tracked, the least recently used being forgotten first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass


class SlidingWindowLimiter:
    """Counts hits per key in a sliding window: a key with `limit` hits in the last
    `window_s` seconds must wait. In memory, per process; at most `max_keys` keys are tracked
    (the least recently hit forgotten first). `clock` returns seconds (monotonic)."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._max_keys = max_keys
        self._clock = clock
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return None
        return hits

    def retry_after(self, key: str) -> float | None:
        """Seconds until `key` may try again, or None if it is under the limit."""
        now = self._clock()
        hits = self._recent(key, now)
        if hits is None or len(hits) < self.limit:
            return None
        return max(0.0, hits[-self.limit] + self.window_s - now)

    def hit(self, key: str) -> None:
        """Count one hit for `key` now."""
        now = self._clock()
        hits = self._recent(key, now)
        if hits is None:
            hits = self._hits[key] = deque(maxlen=self.limit)
            while len(self._hits) > self._max_keys:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key)
        hits.append(now)

    def reset(self, key: str) -> None:
        """Forget every hit of `key`."""
        self._hits.pop(key, None)


@dataclass(frozen=True)
class Throttled:
    """A refused sign-in attempt: which limit refused it (`account` or `address`) and the
    whole seconds to wait (the Retry-After value)."""

    limit: str  # "account" or "address"
    retry_after_s: int


class LoginRateLimiter:
    """The brute-force guard of the password grant: attempts are limited per client
    address, and failures per account (email)."""

    def __init__(self, account: SlidingWindowLimiter, address: SlidingWindowLimiter) -> None:
        self.account = account
        self.address = address

    def check(self, account: str, address: str) -> Throttled | None:
        """Whether this attempt may proceed; counts it against the address if so."""
        for name, limiter, key in (
            ("address", self.address, address),
            ("account", self.account, account),
        ):
            wait = limiter.retry_after(key)
            if wait is not None:
                return Throttled(name, max(1, math.ceil(wait)))
        self.address.hit(address)
        return None

    def failed(self, account: str) -> None:
        """Count a failed sign-in against `account` (the email tried)."""
        self.account.hit(account)

    def succeeded(self, account: str) -> None:
        """Clear the failures of `account` after a successful sign-in."""
        self.account.reset(account)
