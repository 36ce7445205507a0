"""Sign-in attempts are limited per account and per client address (429 + Retry-After)."""

from __future__ import annotations

import asyncio

import pytest
from starlette.datastructures import Headers

from switchyard.auth.ratelimit import LoginRateLimiter
from switchyard.common.sliding_window import SlidingWindowLimiter

from ..conftest import running_auth

PASSWORD = "correct horse battery staple"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_counts_recent_hits_and_says_when_to_retry() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(3, 60, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("k") is None
        limiter.hit("k")
        clock.now += 10
    # Hits at 1000, 1010, 1020; now 1030: the first leaves the window at 1060.
    assert limiter.retry_after("k") == pytest.approx(30)
    assert limiter.retry_after("other") is None
    clock.now = 1060.5
    assert limiter.retry_after("k") is None
    limiter.reset("k")
    assert limiter.retry_after("k") is None


def test_memory_is_bounded_by_forgetting_the_least_recent_keys() -> None:
    limiter = SlidingWindowLimiter(1, 60, max_keys=2, clock=Clock())
    for key in ("a", "b", "c"):
        limiter.hit(key)
    assert limiter.retry_after("a") is None  # forgotten
    assert limiter.retry_after("c") is not None


def login_limits(
    *, from_one_address: int, per_address: int, from_all_addresses: int
) -> LoginRateLimiter:
    """The limits as auth builds them (300 s for an account, 60 s for an address), on a
    clock that stands still."""
    clock = Clock()
    return LoginRateLimiter(
        account=SlidingWindowLimiter(from_one_address, 300, clock=clock),
        address=SlidingWindowLimiter(per_address, 60, clock=clock),
        account_all_addresses=SlidingWindowLimiter(from_all_addresses, 300, clock=clock),
    )


def test_address_limit_counts_every_attempt_and_account_limits_only_failures() -> None:
    limits = login_limits(from_one_address=2, per_address=4, from_all_addresses=3)
    assert limits.check("alice", "10.0.0.1") is None
    limits.succeeded("alice", "10.0.0.1")
    # Each attempt let through counts as a failure until it succeeds.
    assert limits.check("alice", "10.0.0.1") is None
    assert limits.check("alice", "10.0.0.1") is None
    # Two failures from 10.0.0.1: that address is locked out of alice's account...
    throttled = limits.check("alice", "10.0.0.1")
    assert throttled is not None and throttled.limit == "account"
    assert throttled.retry_after_s == 300
    # ...not alice herself, signing in from her own address.
    assert limits.check("alice", "10.0.0.2") is None
    # Three failures from all addresses together lock the account for everyone.
    throttled = limits.check("alice", "10.0.0.9")
    assert throttled is not None and throttled.limit == "account_all_addresses"
    # 10.0.0.1 made three attempts that counted; one more, then it is throttled for any
    # account.
    assert limits.check("bob", "10.0.0.1") is None
    throttled = limits.check("carol", "10.0.0.1")
    assert throttled is not None and throttled.limit == "address"


def test_attempts_sent_at_once_cannot_all_pass_before_the_first_fails() -> None:
    limits = login_limits(from_one_address=5, per_address=100, from_all_addresses=8)
    # 30 guesses from one address, none answered yet: 5 are let through.
    passed = [limits.check("alice", "10.0.0.1") is None for _ in range(30)]
    assert passed.count(True) == 5
    # From other addresses, the account's all-addresses limit stops the 9th.
    passed = [limits.check("alice", f"10.1.0.{n}") is None for n in range(10)]
    assert passed.count(True) == 3


def test_a_success_clears_the_accounts_failures_and_an_attempt_without_verdict_is_taken_back():
    limits = login_limits(from_one_address=2, per_address=100, from_all_addresses=3)
    for address in ("10.0.0.1", "10.0.0.2"):
        assert limits.check("alice", address) is None
    limits.succeeded("alice", "10.0.0.3")
    assert limits.check("alice", "10.0.0.1") is None
    assert limits.check("alice", "10.0.0.6") is None
    assert limits.check("alice", "10.0.0.4") is None  # 2 failures since the success, not 4
    limits.abandoned("alice", "10.0.0.4")  # the password was never checked
    assert limits.check("alice", "10.0.0.4") is None
    throttled = limits.check("alice", "10.0.0.5")
    assert throttled is not None and throttled.limit == "account_all_addresses"


def test_keys_of_any_length_cost_the_same_memory() -> None:
    limiter = SlidingWindowLimiter(5, 300, max_keys=1000, clock=Clock())
    for number in range(1000):
        limiter.hit("x" * 100_000 + str(number))
    assert all(len(key) == 16 for key in limiter._hits)
    assert limiter.retry_after("x" * 100_000 + "7") is None
    for _ in range(4):
        limiter.hit("x" * 100_000 + "7")
    assert limiter.retry_after("x" * 100_000 + "7") is not None


async def attempt(harness, password: str, email: str = "alice@example.com", **kwargs):
    return await harness.client.post(
        "/v1/auth/token",
        json={"grant_type": "password", "username": email, "password": password},
        **kwargs,
    )


async def test_an_account_is_locked_after_repeated_failures(auth_app) -> None:
    await auth_app.service.create_user(email="alice@example.com", password=PASSWORD)
    limit = auth_app.settings.login_max_failures_per_account
    for number in range(limit):
        assert (await attempt(auth_app, f"guess-{number}")).status_code == 401
    locked = await attempt(auth_app, PASSWORD)  # even the right password waits
    assert locked.status_code == 429
    error = locked.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "too_many_attempts"
    assert 1 <= int(locked.headers["retry-after"]) <= auth_app.settings.login_account_window_s
    assert PASSWORD not in locked.text
    # Another account from the same address is not affected by alice's lock.
    await auth_app.service.create_user(email="bob@example.com", password=PASSWORD)
    assert (await attempt(auth_app, PASSWORD, email="bob@example.com")).status_code == 200


async def test_a_success_clears_the_failures_of_the_account(auth_app) -> None:
    await auth_app.service.create_user(email="alice@example.com", password=PASSWORD)
    limit = auth_app.settings.login_max_failures_per_account
    for _ in range(limit - 1):
        await attempt(auth_app, "wrong")
    assert (await attempt(auth_app, PASSWORD)).status_code == 200
    for _ in range(limit - 1):
        assert (await attempt(auth_app, "wrong")).status_code == 401
    assert (await attempt(auth_app, PASSWORD)).status_code == 200


async def test_one_address_spraying_many_accounts_is_throttled(auth_app, settings) -> None:
    limit = settings.login_max_attempts_per_address
    for number in range(limit):
        response = await attempt(auth_app, "guess", email=f"user{number}@example.com")
        assert response.status_code == 401
    throttled = await attempt(auth_app, "guess", email="someone@example.com")
    assert throttled.status_code == 429 and "retry-after" in throttled.headers


async def test_forwarded_for_is_used_only_when_trusted(settings) -> None:
    from switchyard.auth.api.deps import client_address

    class Request:
        def __init__(self, *forwarded: str) -> None:
            self.headers = Headers(
                raw=[(b"x-forwarded-for", value.encode()) for value in forwarded]
            )
            self.client = type("Client", (), {"host": "10.1.1.1"})()

    class Context:
        def __init__(self, trust: bool) -> None:
            self.settings = settings.model_copy(update={"trust_forwarded_for": trust})

    request = Request("203.0.113.9, 198.51.100.7")
    assert client_address(request, Context(False)) == "10.1.1.1"
    assert client_address(request, Context(True)) == "198.51.100.7"
    # A proxy that adds a line of its own, after the client's: its entry is the last.
    request = Request("10.7.0.1", "198.51.100.8")
    assert client_address(request, Context(True)) == "198.51.100.8"


async def test_wrong_passwords_sent_at_once_get_no_more_guesses_than_one_at_a_time(settings):
    trusting = settings.model_copy(update={"trust_forwarded_for": True})
    async with running_auth(trusting) as auth:
        await auth.service.create_user(email="alice@example.com", password=PASSWORD)
        attacker = {"x-forwarded-for": "203.0.113.66"}
        answers = await asyncio.gather(
            *(attempt(auth, f"guess-{number}", headers=attacker) for number in range(20))
        )
        statuses = sorted(response.status_code for response in answers)
        limit = trusting.login_max_failures_per_account
        assert statuses == [401] * limit + [429] * (20 - limit)
        owner = {"x-forwarded-for": "198.51.100.7"}
        assert (await attempt(auth, PASSWORD, headers=owner)).status_code == 200


async def test_failing_as_someone_else_does_not_lock_them_out_from_their_own_address(
    settings,
) -> None:
    # Anyone who knows an email can fail to sign in as it: that locks out the address
    # the failures come from, not the account's owner elsewhere.
    trusting = settings.model_copy(update={"trust_forwarded_for": True})
    async with running_auth(trusting) as auth:
        await auth.service.create_user(email="alice@example.com", password=PASSWORD)
        attacker = {"x-forwarded-for": "203.0.113.66"}
        for number in range(trusting.login_max_failures_per_account):
            response = await attempt(auth, f"guess-{number}", headers=attacker)
            assert response.status_code == 401
        assert (await attempt(auth, PASSWORD, headers=attacker)).status_code == 429
        owner = {"x-forwarded-for": "198.51.100.7"}
        assert (await attempt(auth, PASSWORD, headers=owner)).status_code == 200


async def test_failures_spread_over_many_addresses_lock_the_account_for_everyone(
    settings,
) -> None:
    trusting = settings.model_copy(
        update={"trust_forwarded_for": True, "login_max_failures_per_account_all_addresses": 6}
    )
    async with running_auth(trusting) as auth:
        await auth.service.create_user(email="alice@example.com", password=PASSWORD)
        for number in range(6):
            headers = {"x-forwarded-for": f"203.0.113.{number}"}
            assert (await attempt(auth, "guess", headers=headers)).status_code == 401
        owner = await attempt(auth, PASSWORD, headers={"x-forwarded-for": "198.51.100.7"})
        assert owner.status_code == 429
        assert owner.json()["error"]["code"] == "too_many_attempts"


async def test_a_busy_hasher_is_told_apart_from_too_many_attempts(run_auth) -> None:
    """A sign-in refused because too many passwords wait for the hasher is auth's load, not
    the account's attempts: its own code, so a client (the console) can say which, and it
    counts as no failure of the account."""
    from argon2 import profiles

    from switchyard.auth.passwords import HashingBusy, PasswordHasher

    class BusyHasher(PasswordHasher):
        busy = False

        async def verify_async(self, password_hash: str | None, password: str) -> bool:
            if self.busy:
                raise HashingBusy
            return await super().verify_async(password_hash, password)

    hasher = BusyHasher(profiles.CHEAPEST)
    async with run_auth(passwords=hasher) as harness:
        await harness.service.create_user(email="alice@example.com", password=PASSWORD)
        hasher.busy = True
        limit = harness.settings.login_max_failures_per_account
        for _ in range(limit + 1):
            refused = await attempt(harness, PASSWORD)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "passwords_busy"
            assert refused.headers["retry-after"] == "1"
        hasher.busy = False
        assert (await attempt(harness, PASSWORD)).status_code == 200
