"""Login rate limits, per account and per client address, in process memory.

Each limiter keeps, per key, the times of recent attempts inside a sliding window. The
account limits count failed sign-ins and are cleared by a successful one (an attempt counts
as failed from the moment it is let through until it succeeds, so guesses sent at once
get no more tries than guesses sent one after another): a few per
account *from one client address* (what locks a guesser out), and many more per account
from all addresses together (what bounds a guessing campaign spread over many
addresses). Someone who knows an email address therefore cannot lock its owner out by
failing to sign in as them from their own address: the owner, signing in from theirs, is
still let in, until a campaign of the all-addresses size. The address limit counts every
attempt, so one client cannot spray passwords across many accounts. A caller over a limit
gets 429 with the seconds until the oldest counted attempt leaves the window.

The state is per process: with N auth workers or replicas an attacker gets up to N times
the configured attempts. That keeps sign-in free of any shared store, and the bound stays
small (argon2 makes each guess cost tens of milliseconds anyway). Memory is bounded
(`switchyard.common.sliding_window`). Addresses are counted as `client_key` gives them:
an IPv6 client per /64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from switchyard.common.sliding_window import SlidingWindowLimiter


@dataclass(frozen=True)
class Throttled:
    """A refused sign-in attempt: which limit refused it (`account`: the account's
    failures from this address; `account_all_addresses`; `address`) and the whole seconds
    to wait (the Retry-After value)."""

    limit: str  # "account", "account_all_addresses" or "address"
    retry_after_s: int


class LoginRateLimiter:
    """The brute-force guard of the password grant: attempts are limited per client
    address, failures per account (email) from one address (`account`) and per account
    from every address together (`account_all_addresses`; none: no such limit)."""

    def __init__(
        self,
        account: SlidingWindowLimiter,
        address: SlidingWindowLimiter,
        account_all_addresses: SlidingWindowLimiter | None = None,
    ) -> None:
        self.account = account
        self.address = address
        self.account_all_addresses = account_all_addresses

    @staticmethod
    def _pair(account: str, address: str) -> str:
        return f"{account}\n{address}"  # a newline is in neither an email nor an address

    def check(self, account: str, address: str) -> Throttled | None:
        """Whether this attempt may proceed. If so, it is counted against the address, and
        against the account as a failure until it proves otherwise (`succeeded`, or
        `abandoned` when it ends without a verdict): attempts sent at once cannot all pass
        before the first of them fails."""
        pair = self._pair(account, address)
        limits = [("address", self.address, address), ("account", self.account, pair)]
        if self.account_all_addresses is not None:
            limits.append(("account_all_addresses", self.account_all_addresses, account))
        for name, limiter, key in limits:
            wait = limiter.retry_after(key)
            if wait is not None:
                return Throttled(name, max(1, math.ceil(wait)))
        for _, limiter, key in limits:
            limiter.hit(key)
        return None

    def succeeded(self, account: str, address: str) -> None:
        """Clear the failures of `account` after a successful sign-in from `address`."""
        self.account.reset(self._pair(account, address))
        if self.account_all_addresses is not None:
            self.account_all_addresses.reset(account)

    def abandoned(self, account: str, address: str) -> None:
        """An attempt `check` let through ended without a verdict (the password was not
        checked: hashing busy, the store down): not a failure of the account."""
        self.account.unhit(self._pair(account, address))
        if self.account_all_addresses is not None:
            self.account_all_addresses.unhit(account)
