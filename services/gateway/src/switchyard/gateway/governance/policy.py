"""The limits that apply to a caller, from auth (`GET /internal/v1/policy`), cached.

One fetch per caller (user, or user and API key) however many requests wait for it; kept
`ttl_s`, and dropped at once when auth announces a change of any level it includes
(`auth.limits_changed`, `auth.user_disabled`...), so a changed limit applies to the next
request on every replica. A caller auth does not know (404) has no limits; auth not
answering is `PolicyUnavailable`.

The policy also carries the response cache opt-in of the caller's key and team
(`Policy.cache`), which the response cache (cache.py) reads from here rather than asking
anyone again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from switchyard.common.governance import LEVELS, FailureMode, Limits
from switchyard.common.headers import INTERNAL_TOKEN_HEADER
from switchyard.gateway.auth import (
    AuthOutage,
    Stale,
    StaleIfError,
    shared_task,
    unreachable_status,
)


class PolicyUnavailable(Exception):
    """Auth did not answer; the caller's limits are unknown. `unreachable`: it could not be
    asked (no connection, a timeout, 429 or 5xx), an outage a cached policy may ride out."""

    def __init__(self, message: str, *, unreachable: bool = True) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True)
class LevelLimits:
    """The limits one level (`api_key`, `user`, `team` or `tenant`) puts on a request, and the
    start of its budget periods (epoch seconds; None: periods counted from the Unix epoch)."""

    level: str  # api_key | user | team | tenant
    scope_id: str
    limits: Limits
    budget_anchor: float | None  # epoch seconds


@dataclass(frozen=True)
class CacheOptIn:
    """The response cache opt-in one level (`api_key` or `team`) sets; None: not set there."""

    level: str
    enabled: bool | None
    ttl_s: int | None


@dataclass(frozen=True)
class Policy:
    """The limits that apply to a caller (its key, user, team and tenant), what to do when the
    ledger cannot be reached, and the response cache opt-ins of its key and team."""

    tenant: str
    team_id: str | None
    # Only the levels that carry at least one limit, narrowest first.
    levels: tuple[LevelLimits, ...] = ()
    rate_limit_failure_mode: FailureMode = FailureMode.OPEN
    budget_failure_mode: FailureMode = FailureMode.CLOSED
    # Every level id, limited or not (what a change event is matched against).
    scope_ids: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    # The response cache opt-in of the key, then the team (levels that set one only).
    cache: tuple[CacheOptIn, ...] = ()

    @property
    def limited(self) -> bool:
        """Whether any level carries a limit."""
        return bool(self.levels)

    @property
    def counts_tokens(self) -> bool:
        """Whether admitting under this policy counts the prompt's tokens: some level has a
        token rate limit or a budget."""
        return any(
            level.limits.tpm_limit is not None or level.limits.max_budget_usd is not None
            for level in self.levels
        )


def parse_policy(data: dict[str, Any]) -> Policy:
    """A `Policy` from auth's `/internal/v1/policy` JSON answer.

    Raises:
        KeyError, ValueError: the answer lacks a field or holds an invalid value.
    """
    levels = []
    ids = set()
    raw_levels = data.get("levels") or {}
    for level in LEVELS:
        raw = raw_levels.get(level)
        if not raw:
            continue
        ids.add((level, raw["id"]))
        limits = Limits(**(raw.get("limits") or {}))
        if limits.empty:
            continue
        anchor = raw.get("budget_anchor_at")
        levels.append(
            LevelLimits(
                level=level,
                scope_id=raw["id"],
                limits=limits,
                budget_anchor=datetime.fromisoformat(anchor).timestamp() if anchor else None,
            )
        )
    cache = []
    for level in ("api_key", "team"):
        raw = raw_levels.get(level) or {}
        enabled, ttl_s = raw.get("cache_enabled"), raw.get("cache_ttl_s")
        if enabled is not None or ttl_s is not None:
            cache.append(CacheOptIn(level, enabled, ttl_s))
    return Policy(
        tenant=data["tenant"],
        team_id=data.get("team_id"),
        cache=tuple(cache),
        levels=tuple(levels),
        rate_limit_failure_mode=FailureMode(data.get("rate_limit_failure_mode", "open")),
        budget_failure_mode=FailureMode(data.get("budget_failure_mode", "closed")),
        scope_ids=frozenset(ids),
    )


NO_LIMITS = Policy(tenant="", team_id=None)


class PolicySource:
    """The callers' limit policies from auth, cached `ttl_s` seconds per (user, key), with one
    fetch in flight per caller however many requests wait for it. While auth cannot be asked,
    a policy past its TTL is used for up to `stale_if_error_s` more (see the authenticator's
    `AuthOutage`, which `outage` shares); an invalidated one never is."""

    def __init__(
        self,
        client: Callable[[], httpx.AsyncClient],
        *,
        auth_url: str,
        internal_token: str,
        ttl_s: float = 60.0,
        stale_if_error_s: float = 0.0,
        outage: AuthOutage | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._url = auth_url.rstrip("/") + "/internal/v1/policy"
        self._internal_token = internal_token
        self._ttl_s = ttl_s
        self._stale_if_error_s = stale_if_error_s
        self._clock = clock
        self._cache: dict[tuple[str, str | None], tuple[StaleIfError, Policy]] = {}
        # Shared with the authenticator (`outage`), so one failed call to auth spares the
        # callers both waits.
        self._outage = outage if outage is not None else AuthOutage(clock)
        # By caller and `_generation` when each started: a request after an invalidation
        # never joins a fetch from before it, which may carry the old limits.
        self._fetches: dict[tuple[str, str | None, int], asyncio.Task[Policy]] = {}
        # Bumped by every invalidation, so a fetch that started before it is not cached.
        self._generation = 0

    async def get(self, user_id: str, api_key_id: str | None) -> Policy:
        """The policy of `user_id` calling with `api_key_id` (None for a JWT).

        Raises:
            PolicyUnavailable: auth is unreachable or answered an error status.
        """
        key = (user_id, api_key_id)
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and cached[0].fresh(now):
            return cached[1]
        generation = self._generation

        def usable() -> bool:
            # Within its stale bound, and not invalidated (limits changed) meanwhile.
            return (
                cached is not None
                and cached[0].stale_until > now
                and generation == self._generation
            )

        def keep_stale(failed_at: float) -> None:
            assert cached is not None
            self._cache[key] = (cached[0].retried(failed_at), cached[1])

        answer = await self._outage.answer(
            lambda: shared_task(
                self._fetches, (*key, self._generation), lambda: self._fetch(key)
            ),
            lookup="policy",
            usable=usable,
            keep_stale=keep_stale,
            unreachable=lambda exc: isinstance(exc, PolicyUnavailable) and exc.unreachable,
        )
        if isinstance(answer, Stale):
            assert cached is not None
            return cached[1]
        return answer

    async def _fetch(self, key: tuple[str, str | None]) -> Policy:
        generation = self._generation
        params = {"user_id": key[0]}
        if key[1] is not None:
            params["key_id"] = key[1]
        try:
            response = await self._client().get(
                self._url,
                params=params,
                headers={INTERNAL_TOKEN_HEADER: self._internal_token},
                timeout=2.0,
            )
        except httpx.HTTPError as exc:
            raise PolicyUnavailable(repr(exc)) from exc
        if response.status_code == 404:
            policy = NO_LIMITS
        elif response.status_code != 200:
            raise PolicyUnavailable(
                f"auth answered {response.status_code}",
                unreachable=unreachable_status(response.status_code),
            )
        else:
            policy = parse_policy(response.json())
        if generation == self._generation:
            fresh_until = self._clock() + self._ttl_s
            expiry = StaleIfError(fresh_until, fresh_until + self._stale_if_error_s)
            self._cache[key] = (expiry, policy)
        return policy

    def invalidate(self, level: str | None = None, scope_id: str | None = None) -> None:
        """Forget every cached policy including `level` `scope_id` (all without them)."""
        self._generation += 1
        if level is None:
            self._cache.clear()
            return
        for key, (_, policy) in list(self._cache.items()):
            if (
                (level, scope_id) in policy.scope_ids
                or (level == "tenant" and policy.tenant == scope_id)
                or (level == "user" and key[0] == scope_id)
                or (level == "api_key" and key[1] == scope_id)
            ):
                del self._cache[key]
