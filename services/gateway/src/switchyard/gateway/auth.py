"""Authenticating callers without calling auth on every request.

- JWTs are verified locally: RS256 only (the algorithm in the header must be on the allow
  list, so `none` and HMAC tokens signed with the public key are refused), the key chosen
  by `kid` from the cached JWKS (a dictionary lookup of a well-formed id; a `kid` is never
  a path, query or URL), and `iss`, `aud`, `exp`, `nbf`, `iat`, `sub`, `jti` required. A
  verified token is remembered (bounded), so repeat requests skip the RSA check; expiry
  and revocation are checked on every request.
- API keys are hashed (sha256) and looked up in a local cache; a key never seen is looked
  up at auth once (concurrent requests for it share that lookup, and the number of
  lookups in flight is bounded), positive answers are kept `key_ttl_s` and negative ones
  `negative_ttl_s`. Keys auth did not know are cached apart from the keys it vouched for
  or refused, each bounded (least recently used out first), so a flood of random keys
  evicts only other unknown keys and never a known caller's answer (which an outage of
  auth would otherwise find gone).
- Lookups of keys not known to be valid are limited per client address
  (`failed_lookups`, a sliding window of failures; an IPv6 client counted per /64): an
  address whose keys auth did not know that many times in the window gets
  `TooManyFailedLookupsError` for any further key it would need auth for, until the
  oldest failure leaves the window. A lookup counts as failed from its start until auth
  vouches for the key, so keys sent at once get no more lookups than keys sent one after
  another; requests sharing one key's lookup count once, and the lookup counts whatever
  became of the request that started it. Keys cached as valid, and every other address,
  are unaffected: a flood of random keys from one client neither reaches auth nor holds
  up anyone else's lookup.
- A token's claims are all required: one without `scopes` (or with a non-numeric time
  claim) is refused, never taken as "no scopes". Its user must still exist: the first
  request of a user not seen lately asks auth (`/internal/v1/users/{id}`, one call per
  user per `key_ttl_s`, shared by concurrent requests), so tokens outliving their user
  (a deleted user, a database restored without them) are refused. That answer also gives
  the models the user's team allows, which bound every token of the user (tokens name
  only the models asked for when they were made, never the team's); `limits_changed`
  asks again about the users and keys a change at auth concerns.
- Revocations (token ids, sign-ins, API keys, disabled users) come from the auth events
  topic into `RevocationState`, which is checked on every request and purges the caches.
  Until that state is loaded from auth, JWTs get 503 (a revoked one could otherwise pass);
  API keys are looked up fresh, so they need no history. So do JWTs while auth's signing
  keys have never been fetched, or a token names a key auth cannot be asked about.
- Auth unreachable (no connection, a timeout, 429 or 5xx: `AuthUnreachableError`) is not
  a reason to refuse a caller it vouched for lately: a key or user whose cached answer has
  run out is served from that answer for up to `stale_if_error_s` more (RFC 5861's
  stale-if-error), once the revocations are loaded, while each expiry check and revocation
  still applies (revocations come from the events topic, which the auth CLI also publishes
  to, not from auth's HTTP API). A caller holding such an answer waits for auth's fresh one
  at most `STALE_WAIT_S`, and once a call has failed, auth is not asked for
  `STALE_RETRY_S` (`AuthOutage`): a hung auth never holds such a caller for its timeout;
  an answer given is cached as usual. A key revoked (or expired,
  or its user disabled) stays refused meanwhile; one auth did not know, or never saw,
  waits for auth (503 `auth_unavailable`): it may be new.

Every refusal is the same AuthenticationError: nothing about the credential is echoed.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar, cast
from urllib.parse import quote

import httpx
import jwt
import structlog
from cachetools import LRUCache
from jwt.algorithms import RSAAlgorithm
from prometheus_client import Counter

from switchyard.common import scopes
from switchyard.common.events import (
    ApiKeyRevoked,
    Event,
    LimitsChanged,
    UserDisabled,
    UserEnabled,
)
from switchyard.common.headers import (
    API_KEY_ONLY_HEADER,
    INTERNAL_TOKEN_HEADER,
    ROLE_HEADER,
    TENANT_HEADER,
    USER_ID_HEADER,
)
from switchyard.common.sliding_window import SlidingWindowLimiter, client_key
from switchyard.gateway.internal_http import READ_RETRY
from switchyard.gateway.revocations import RevocationState

log = structlog.get_logger("switchyard.gateway.auth")

_T = TypeVar("_T")
_K = TypeVar("_K", bound=Hashable)

ALLOWED_ALGORITHMS = ["RS256"]
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]
API_KEY_PREFIX = "sk-sy-"
# Key ids auth issues are RFC 7638 thumbprints (43 base64url characters); anything outside
# this alphabet is refused before any lookup, so a kid can never reach a file, query or URL.
KID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_CREDENTIAL_LENGTH = 8192
# Bounds of the key caches (entries, each well under 1 KiB): keys auth vouched for or
# refused, and keys it did not know (`Authenticator`).
MAX_CACHED_KEYS = 100_000
MAX_CACHED_UNKNOWN_KEYS = 100_000
# Changes of limits remembered at most (`Authenticator.limits_changed`); past it, the
# answers cached before the oldest are forgotten with it.
MAX_CHANGES_REMEMBERED = 100_000
# Latest instant a time claim may name (9999-12-31T23:59:59Z).
MAX_TIMESTAMP = 253_402_300_799
# Once a call to auth failed (or took longer than `STALE_WAIT_S`), for how long (s) callers
# holding a usable stale answer are served it without asking auth at all.
STALE_RETRY_S = 5.0
# How long a caller with a usable stale answer waits for auth's fresh one before being
# served the stale one (the lookup goes on and caches what it gets): a hung auth, or
# lookups queued for a slot, never hold such a caller longer.
STALE_WAIT_S = 0.5
# How long a key or user lookup at auth may take (s).
LOOKUP_TIMEOUT_S = 2.0
# Slack (s) on how long a revoked key is remembered past the last answer about it that
# may predate its revocation: a loop busy for a while before it caches the answer.
REVOKED_KEY_SLACK_S = 60.0

STALE_ANSWERS = Counter(
    "switchyard_gateway_auth_stale_answers_total",
    "Callers admitted on a cached answer of auth past its TTL, because auth could not be "
    "asked (stale-if-error), by what was looked up (api_key, user, policy).",
    ["lookup"],
)


class AuthenticationError(Exception):
    """No valid credentials were presented."""


def request_client_key(scope: Mapping[str, Any]) -> str | None:
    """The key an ASGI request's client address is counted under (`client_key`: behind a
    trusted proxy, the address it forwarded, as uvicorn's ProxyHeadersMiddleware set it),
    or None when the server knows no client address (a Unix socket)."""
    client = scope.get("client")
    return client_key(client[0]) if client else None


class TooManyFailedLookupsError(AuthenticationError):
    """This client address sent too many keys auth did not know lately: a key that would
    need a lookup is refused without one. `retry_after_s`: whole seconds until the oldest
    counted failure leaves the window (at least 1)."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(retry_after_s)
        self.retry_after_s = retry_after_s


class AuthUnavailableError(Exception):
    """The caller cannot be checked right now (auth unreachable, revocations not loaded)."""


class AuthUnreachableError(AuthUnavailableError):
    """Auth could not be asked: no connection, a timeout, or a 429 or 5xx answer (an
    outage, which stale answers may ride out; another status is a misconfiguration, which
    they must not hide)."""


async def finished_within(task: asyncio.Future[Any], timeout_s: float) -> bool:
    """Whether `task` is done within `timeout_s` seconds (it is never cancelled here)."""
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    return bool(done)


def shared_task(
    tasks: dict[_K, asyncio.Task[_T]], key: _K, start: Callable[[], Coroutine[Any, Any, _T]]
) -> asyncio.Task[_T]:
    """The task `tasks` holds under `key`, or one started from `start()` and held there until
    it ends (its failure retrieved then, so one nobody awaited logs nothing)."""
    task = tasks.get(key)
    if task is None:
        task = asyncio.create_task(start())
        tasks[key] = task

        def done(finished: asyncio.Task[_T]) -> None:
            tasks.pop(key, None)
            if not finished.cancelled():
                finished.exception()

        task.add_done_callback(done)
    return task


def unreachable_status(status: int) -> bool:
    """Whether auth answering `status` means it cannot be asked now (429 or 5xx)."""
    return status == 429 or status >= 500


class Stale:
    """`AuthOutage.answer`'s result when a cached answer is to stand in for auth's."""


STALE = Stale()


def _unreachable(exc: Exception) -> bool:
    return isinstance(exc, AuthUnreachableError)


class AuthOutage:
    """Whether auth failed to answer (or was slow) within the last `STALE_RETRY_S` seconds,
    and the one way a cached answer past its TTL stands in for auth's (`answer`): while auth
    is out, such an answer is served at once, without asking auth first, so a hung auth
    (each call waiting out its timeout) holds no caller for its timeout."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = float("-inf")

    def failed(self) -> float:
        """Record a failed call now; returns now (monotonic seconds)."""
        now = self._clock()
        self._until = now + STALE_RETRY_S
        return now

    def ongoing(self, now: float) -> bool:
        """Whether a call failed within `STALE_RETRY_S` seconds before `now`."""
        return now < self._until

    async def answer(
        self,
        start: Callable[[], asyncio.Future[_T]],
        *,
        lookup: str,
        usable: Callable[[], bool],
        keep_stale: Callable[[float], None],
        unreachable: Callable[[Exception], bool] = _unreachable,
    ) -> _T | Stale:
        """Auth's answer from the lookup `start()` begins, or `STALE` when the caller's
        cached answer is to stand in for it: `usable()` says one may (within its stale
        bound, not revoked or invalidated), and auth failed lately (it is not asked at all),
        takes longer than `STALE_WAIT_S` (the lookup goes on and caches what it gets), or
        fails in a way `unreachable` says is an outage (then `keep_stale(now)` keeps the
        cached answer for `STALE_RETRY_S`). Each stale answer is counted under `lookup`
        (`api_key`, `user`, `policy`).

        Raises:
            Whatever the lookup raises when no cached answer may stand in.
        """
        if usable() and self.ongoing(self._clock()):
            return self._stale(lookup)
        task = start()
        if usable() and not await finished_within(task, STALE_WAIT_S):
            self.failed()
            # Asked again: what made the answer unusable (a change of limits heard, a
            # revocation) may have come during the wait.
            if usable():
                return self._stale(lookup)
        try:
            return await asyncio.shield(task)
        except Exception as exc:
            if not unreachable(exc):
                raise
            failed_at = self.failed()
            if not usable():
                raise
            keep_stale(failed_at)
            return self._stale(lookup)

    @staticmethod
    def _stale(lookup: str) -> Stale:
        STALE_ANSWERS.labels(lookup).inc()
        return STALE


@dataclass(frozen=True)
class StaleIfError:
    """An answer of auth, cached: fresh until `fresh_until`, and usable while auth cannot be
    asked until `stale_until` (monotonic seconds, both)."""

    fresh_until: float
    stale_until: float

    def fresh(self, now: float) -> bool:
        """Whether the answer may be used without asking auth."""
        return self.fresh_until > now

    def retried(self, now: float) -> StaleIfError:
        """The same answer once auth could not be asked at `now`: used without asking again
        for `STALE_RETRY_S` (never past `stale_until`)."""
        return StaleIfError(min(now + STALE_RETRY_S, self.stale_until), self.stale_until)


# The roles of a tenant's users (auth's `ROLES`).
ADMIN_ROLE = "admin"
MEMBER_ROLE = "member"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    user_id: str
    tenant: str
    role: str
    scopes: tuple[str, ...] = ()
    api_key_id: str | None = None
    allowed_models: tuple[str, ...] | None = None
    # For JWTs: the token id, its sign-in (`sid`), and when it expires (epoch seconds).
    token_id: str | None = None
    session_id: str | None = None
    expires_at: float | None = None

    def may_use(self, model: str) -> bool:
        """Whether this caller's credential allows `model` (not whether it exists)."""
        return self.allowed_models is None or model in self.allowed_models

    def within(
        self, models: tuple[str, ...] | None, members: AbstractSet[str] | None = None
    ) -> Principal:
        """This caller bounded by `models` too (None: no bound): its own models that
        `models` holds, in its order, or `models` when it has no list of its own.
        `members`: the same models as a set, when the caller keeps one (a list of a few
        hundred is looked through once per own model otherwise)."""
        if models is None:
            return self
        own = self.allowed_models
        if own is None:
            return replace(self, allowed_models=models)
        held = members if members is not None else frozenset(models)
        return replace(self, allowed_models=tuple(m for m in own if m in held))

    @property
    def is_tenant_admin(self) -> bool:
        """Whether this caller may act as their tenant's admin (every user's history,
        jobs and responses): an admin whose credential holds the `admin` scope. An admin's
        key or token narrowed to other scopes acts as a member."""
        return self.role == ADMIN_ROLE and scopes.ADMIN in self.scopes

    @property
    def own_key_only(self) -> str | None:
        """The API key whose own jobs and responses are all this caller may read, cancel
        or delete: its key when that key lacks `history:read` (a key made to generate
        must not read what the user's other keys stored); None for every other caller."""
        if self.api_key_id is not None and scopes.HISTORY_READ not in self.scopes:
            return self.api_key_id
        return None

    def internal_headers(self, internal_token: str) -> dict[str, str]:
        """The headers of a call to history on this caller's behalf: the internal token and
        the verified identity (tenant, user id, role) history scopes everything to; the
        role is `admin` only where the credential holds the `admin` scope
        (`is_tenant_admin`); and `own_key_only`, when set, narrows it to one key."""
        role = self.role
        if role == ADMIN_ROLE and not self.is_tenant_admin:
            role = MEMBER_ROLE
        headers = {
            INTERNAL_TOKEN_HEADER: internal_token,
            TENANT_HEADER: self.tenant,
            USER_ID_HEADER: self.user_id,
            ROLE_HEADER: role,
        }
        if self.own_key_only is not None:
            headers[API_KEY_ONLY_HEADER] = self.own_key_only
        return headers


class JwksCache:
    """Public keys by `kid`. Refreshed from auth when an unknown `kid` shows up, at most
    once per `min_interval_s`, so a flood of forged kids cannot flood auth; at once when
    auth announces a signing key rotation; and every so often (`keep_fresh`), so a key
    auth no longer publishes stops verifying tokens."""

    def __init__(self, client: httpx.AsyncClient, auth_url: str, min_interval_s: float) -> None:
        self._client = client
        self._url = auth_url.rstrip("/") + "/.well-known/jwks.json"
        self._min_interval_s = min_interval_s
        self._keys: dict[str, Any] = {}
        self._fetched_at = float("-inf")
        # Whether the last fetch succeeded: a kid unknown after a failed one may be auth's.
        self._current = False
        # Incremented whenever the set of keys changes, so verified tokens are re-checked.
        self.version = 0

    async def refresh(self) -> None:
        """Fetch the key set from auth's `/.well-known/jwks.json` (RFC 7517), keeping the RSA
        signing keys with a valid `kid`; bumps `version` when the set changed. A failed
        fetch keeps the keys known (auth may be away for a moment) and marks the set not
        current until a fetch succeeds.

        Raises:
            httpx.HTTPError: auth unreachable or answering an error status.
            ValueError: an answer that is not a JWK Set (a proxy's page).
        """
        try:
            response = await self._client.get(self._url, timeout=2.0)
            response.raise_for_status()
            keys = _jwk_set(response)
        except (httpx.HTTPError, ValueError):
            self._current = False
            raise
        self._current = True
        if set(keys) != set(self._keys):
            self.version += 1
        self._keys = keys

    async def keep_fresh(self, interval_s: float) -> None:
        """Refresh the key set every `interval_s` seconds until cancelled; a failed fetch
        keeps the keys known and is logged, and the next one comes as planned."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - whatever the answer, try again later
                log.warning("could not refresh JWKS", error=repr(exc))

    async def key(self, kid: str) -> Any | None:
        """The public key for `kid`, refreshing the set first when `kid` is unknown and the last
        such refresh is at least `min_interval_s` seconds old (a second after a failed one);
        None if auth does not know it either.

        Raises:
            AuthUnavailableError: `kid` is unknown and the last fetch failed (or none was
                made): auth may know it, so the token cannot be judged now.
        """
        now = time.monotonic()
        if kid not in self._keys and now - self._fetched_at >= self._min_interval_s:
            self._fetched_at = now
            try:
                await self.refresh()
            except (httpx.HTTPError, ValueError) as exc:
                # The next unknown kid may try a second later rather than after the whole
                # interval, so a gateway started before auth does not refuse JWTs for long.
                self._fetched_at = now - self._min_interval_s + 1.0
                log.warning("could not refresh JWKS", error=repr(exc))
        key = self._keys.get(kid)
        if key is None and not self._current:
            raise AuthUnavailableError("auth's signing keys could not be fetched")
        return key


def _jwk_set(response: httpx.Response) -> dict[str, Any]:
    """The usable RSA signing keys of a JWK Set answer, by `kid` (a key that does not load
    is left out and logged). Raises ValueError for an answer that is not a JWK Set (not
    JSON, not an object with a list of keys)."""
    document = response.json()
    if not isinstance(document, dict) or not isinstance(document.get("keys", []), list):
        raise ValueError("the JWKS answer is not a JWK Set")
    keys = {}
    for jwk in document.get("keys", []):
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not KID_PATTERN.match(kid):
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", "RS256") not in ALLOWED_ALGORITHMS:
            continue
        try:
            keys[kid] = RSAAlgorithm.from_jwk(jwk)
        except (jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            # The others still verify their tokens; this one's are refused.
            log.warning("a JWKS key does not load", kid=kid, error=repr(exc))
    return keys


@dataclass(frozen=True)
class _CachedUser:
    """Auth's answer about a user: whether they exist and are enabled, their team, and the
    models it allows (None: any), which bound the user's access tokens."""

    active: bool
    team_id: str | None = None
    team_models: tuple[str, ...] | None = None
    # `team_models` as a set, for `Principal.within`.
    team_set: frozenset[str] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.team_models is not None:
            object.__setattr__(self, "team_set", frozenset(self.team_models))


_UNKNOWN_USER = _CachedUser(active=False)


@dataclass(frozen=True)
class _CachedKey:
    expiry: StaleIfError
    principal: Principal | None
    # A refusal for a known reason (the key revoked or expired, its user disabled), which
    # auth being unreachable does not make uncertain, unlike "auth did not know the key".
    revoked: bool = False
    # The key's team, as auth answered it (`limits_changed` matches a team's change on it).
    team_id: str | None = None
    # `Authenticator._changes` when the lookup that gave this answer started: a change
    # auth announced after it may not be in it.
    stamp: int = 0


@dataclass(frozen=True)
class _UserEntry:
    """A cached answer about a user, and `_changes` when its lookup started (`stamp`)."""

    expiry: StaleIfError
    user: _CachedUser
    stamp: int


def _string_list(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None


class Authenticator:
    """Turns the credentials of a request (an API key or a JWT access token from auth) into a
    `Principal`, caching API key lookups (`key_ttl_s`, `negative_ttl_s`, seconds) and verified
    tokens, and honouring revocations. `failed_lookups` (None: no limit) counts the lookups
    of unknown keys per client key (`switchyard.common.sliding_window.client_key`)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        auth_url: str,
        internal_token: str,
        issuer: str,
        audience: str,
        key_ttl_s: float,
        negative_ttl_s: float,
        jwks_min_interval_s: float,
        leeway_s: float = 0.0,
        token_cache_size: int = 10_000,
        lookup_concurrency: int = 32,
        revocations: RevocationState | None = None,
        stale_if_error_s: float = 0.0,
        failed_lookups: SlidingWindowLimiter | None = None,
    ) -> None:
        self._client = client
        self.failed_lookups = failed_lookups
        self._auth_url = auth_url.rstrip("/")
        self._lookup_url = self._auth_url + "/internal/v1/api-keys/lookup"
        self._internal_token = internal_token
        self._issuer = issuer
        self._audience = audience
        self._key_ttl_s = key_ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._stale_if_error_s = stale_if_error_s
        self._leeway_s = leeway_s
        self.jwks = JwksCache(client, auth_url, jwks_min_interval_s)
        self.revocations = revocations or RevocationState()
        self.revocations.add_hook(self._on_auth_event)
        self.revocations.add_loaded_hook(self._on_revocations_loaded)
        # Answers for keys auth vouched for or refused, and for keys it did not know: apart,
        # so unknown keys (any client can send millions) evict only each other.
        self._keys: LRUCache[str, _CachedKey] = LRUCache(MAX_CACHED_KEYS)
        self._unknown_keys: LRUCache[str, _CachedKey] = LRUCache(MAX_CACHED_UNKNOWN_KEYS)
        self._tokens: dict[str, Principal] = {}
        self._tokens_version = self.jwks.version
        self._token_cache_size = token_cache_size
        # Key lookups in flight, by key and the changes heard when each started (as
        # `_user_lookups`).
        self._lookups: dict[tuple[str, int], asyncio.Task[Principal | None]] = {}
        self._lookup_slots = asyncio.Semaphore(lookup_concurrency)
        # user id -> (when to ask auth again, auth's answer)
        self._users: LRUCache[str, _UserEntry] = LRUCache(MAX_CACHED_KEYS)
        # When auth last failed to answer; shared with the policy source.
        self.outage = AuthOutage()
        self._user_lookups: dict[tuple[str, int], asyncio.Task[_CachedUser]] = {}
        # Changes auth announced (`limits_changed`), counted, and by level (`("team",
        # id)`, `("user", id)`, `("api_key", id)`, and `("tenant_teams", tenant)` for any
        # team of a tenant): the count at the last change of each, and when it came
        # (monotonic), oldest first. A cached answer whose lookup started before a change
        # of a level it depends on is superseded (`_changed_since`): checked at each use,
        # so a change costs nothing however many answers are cached. `_forgotten`: the
        # count of the last change no longer remembered; every answer whose lookup started
        # before it counts as superseded.
        self._changes = 0
        self._changed_at: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        self._forgotten = 0

    async def authenticate(
        self, authorization: str | None, x_api_key: str | None, *, client: str | None = None
    ) -> Principal:
        """The principal behind the `Authorization: Bearer` credential, or `x-api-key`
        (Anthropic's header) when there is none. `client`: the key the caller's address is
        counted under for the failed-lookup limit (`client_key`; None: not counted).

        Raises:
            TooManyFailedLookupsError: an API key that needs a lookup, from a client over
                the failed-lookup limit (a subclass of AuthenticationError).
            AuthenticationError: no credential, or one that is malformed, unknown, expired or
                revoked.
            AuthUnavailableError: it cannot be checked now (auth unreachable, revocations not
                loaded).
        """
        credential = bearer_credential(authorization) or (x_api_key or "").strip()
        if not credential or len(credential) > MAX_CREDENTIAL_LENGTH:
            raise AuthenticationError
        if credential.startswith(API_KEY_PREFIX):
            return await self._api_key(credential, client)
        if credential.count(".") == 2:
            return await self._jwt(credential)
        raise AuthenticationError

    # -- JWTs -----------------------------------------------------------------------

    async def _jwt(self, token: str) -> Principal:
        if self._tokens_version != self.jwks.version:
            self._tokens.clear()  # the key set changed: verify every token again
            self._tokens_version = self.jwks.version
        principal = self._tokens.get(token)
        if principal is None:
            principal = await self._verify(token)
            if self._token_cache_size > 0:
                if len(self._tokens) >= self._token_cache_size:
                    self._tokens.clear()
                self._tokens[token] = principal
        elif principal.expires_at is not None and principal.expires_at + self._leeway_s <= (
            time.time()
        ):
            del self._tokens[token]
            raise AuthenticationError
        if not self.revocations.loaded:
            raise AuthUnavailableError("revocation state not loaded yet")
        if self.revocations.is_revoked(
            user_id=principal.user_id, jti=principal.token_id, session_id=principal.session_id
        ):
            raise AuthenticationError
        user = await self._user(principal.user_id)
        if not user.active:
            raise AuthenticationError
        # The token names no more than the models asked for when it was made: its user's
        # team bounds it as the team is now, so a change reaches every token at once.
        return principal.within(user.team_models, user.team_set)

    async def _user(self, user_id: str) -> _CachedUser:
        """Auth's answer about the user (exists and enabled, their team's models), as it
        last gave it (cached; an active user's answer served stale while auth cannot be
        asked, see the module's docstring).

        Raises:
            AuthUnavailableError: auth cannot be asked and holds no usable answer.
        """
        cached = self._users.get(user_id)
        now = time.monotonic()
        if cached is not None and self._any_change() and self._user_superseded(user_id, cached):
            cached = None  # auth changed the user or their team since: never used again
        if cached is not None and cached.expiry.fresh(now):
            return cached.user
        stale = cached if cached is not None and cached.user.active else None

        def keep_stale(failed_at: float) -> None:
            assert stale is not None
            self._users[user_id] = replace(stale, expiry=stale.expiry.retried(failed_at))

        answer = await self.outage.answer(
            lambda: self._user_lookup(user_id),
            lookup="user",
            # Read when auth fails, which may be after a change that supersedes it.
            usable=lambda: (
                stale is not None
                and stale.expiry.stale_until > now
                and not self._user_superseded(user_id, stale)
            ),
            keep_stale=keep_stale,
        )
        if isinstance(answer, Stale):
            assert stale is not None
            return stale.user
        return answer

    def _user_superseded(self, user_id: str, entry: _UserEntry) -> bool:
        """Whether auth announced a change of the user or their team after `entry`'s lookup
        started."""
        return self._changed_since(entry.stamp, ("user", user_id), ("team", entry.user.team_id))

    def _user_lookup(self, user_id: str) -> asyncio.Task[_CachedUser]:
        """The lookup of `user_id` at auth in flight, started if none is: one per user,
        however many requests wait for it."""
        # Keyed by the changes heard too: a lookup that started before a change may carry
        # an answer from before it, which a request arriving after it must not get.
        return shared_task(
            self._user_lookups, (user_id, self._changes), lambda: self._lookup_user(user_id)
        )

    async def _lookup_user(self, user_id: str) -> _CachedUser:
        changes = self._changes
        async with self._lookup_slots:
            try:
                response = await self._client.get(
                    f"{self._auth_url}/internal/v1/users/{quote(user_id, safe='')}",
                    headers={INTERNAL_TOKEN_HEADER: self._internal_token},
                    timeout=LOOKUP_TIMEOUT_S,
                )
            except httpx.HTTPError as exc:
                raise AuthUnreachableError(repr(exc)) from exc
        if response.status_code == 404:
            user = _UNKNOWN_USER
        elif response.status_code == 200:
            data = response.json()
            team_id, team_models = data.get("team_id"), data.get("team_models")
            user = _CachedUser(
                active=data.get("active") is True,
                team_id=team_id if isinstance(team_id, str) else None,
                team_models=None if team_models is None else _string_list(team_models),
            )
            if team_models is not None and user.team_models is None:
                # A bound that cannot be read is no reason to lift it.
                raise AuthUnavailableError("auth answered an unreadable team_models")
        elif unreachable_status(response.status_code):
            raise AuthUnreachableError(f"auth answered {response.status_code}")
        else:
            raise AuthUnavailableError(f"auth answered {response.status_code}")
        ttl = self._key_ttl_s if user.active else self._negative_ttl_s
        entry = _UserEntry(self._expiry(ttl), user, changes)
        # One superseded already (a change was heard while it was on its way) would only
        # take the place of a newer answer.
        if not self._user_superseded(user_id, entry):
            self._users[user_id] = entry
        return user

    def _expiry(self, ttl_s: float) -> StaleIfError:
        """When an answer cached now for `ttl_s` seconds runs out, and its stale use ends."""
        fresh_until = time.monotonic() + ttl_s
        return StaleIfError(fresh_until, fresh_until + self._stale_if_error_s)

    async def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError from exc
        kid = header.get("kid")
        if (
            header.get("alg") not in ALLOWED_ALGORITHMS
            or not isinstance(kid, str)
            or not KID_PATTERN.match(kid)
        ):
            raise AuthenticationError
        key = await self.jwks.key(kid)
        if key is None:
            raise AuthenticationError
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALLOWED_ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError from exc
        sub, jti, tenant, role = (claims.get(name) for name in ("sub", "jti", "tenant", "role"))
        # A missing claim is no access, never a default.
        scopes = _string_list(claims.get("scopes"))
        allowed = claims.get("allowed_models")
        allowed_models = _string_list(allowed) if allowed is not None else None
        session_id = claims.get("sid")
        if (
            not all(isinstance(value, str) and value for value in (sub, jti, tenant, role))
            or scopes is None
            or (allowed is not None and allowed_models is None)
            or (session_id is not None and not isinstance(session_id, str))
            or any(
                isinstance(claims[name], bool)
                or not isinstance(claims[name], int | float)
                or not 0 <= claims[name] <= MAX_TIMESTAMP
                for name in ("exp", "iat", "nbf")
            )
        ):
            raise AuthenticationError
        return Principal(
            # Each checked above to be a non-empty string.
            user_id=cast(str, sub),
            tenant=cast(str, tenant),
            role=cast(str, role),
            scopes=scopes,
            allowed_models=allowed_models,
            token_id=jti,
            session_id=session_id,
            expires_at=float(claims["exp"]),
        )

    # -- API keys -------------------------------------------------------------------

    async def _api_key(self, key: str, client: str | None) -> Principal:
        secret_hash = hashlib.sha256(key.encode()).hexdigest()
        cached = self._keys.get(secret_hash) or self._unknown_keys.get(secret_hash)
        now = time.monotonic()
        if cached is not None and cached.expiry.fresh(now) and not self._key_changed(cached):
            principal = cached.principal
        elif cached is not None and cached.principal is not None:
            principal = await self._expired_key(secret_hash, cached, now)  # a known caller
        else:
            principal = await self._counted_lookup(secret_hash, cached, now, client)
        if principal is None:
            raise AuthenticationError
        if (
            principal.expires_at is not None and principal.expires_at <= time.time()
        ) or self.revocations.is_revoked(
            user_id=principal.user_id, api_key_id=principal.api_key_id
        ):
            # Remembered as refused, so a client retrying a dead key does not reach auth.
            self._keys[secret_hash] = _CachedKey(self._expiry(self._key_ttl_s), None, True)
            raise AuthenticationError
        return principal

    async def _counted_lookup(
        self, secret_hash: str, cached: _CachedKey | None, now: float, client: str | None
    ) -> Principal | None:
        """`_expired_key` for a key not known to be valid, whose lookup at auth, if one
        starts, counts against `client`'s failed lookups (`_lookup_task`). Joining a lookup
        of the same key already in flight costs auth nothing and is never refused.

        Raises:
            TooManyFailedLookupsError: `client` is over the limit (auth is not asked).
            AuthUnavailableError: as `_expired_key`.
        """
        limiter = self.failed_lookups
        in_flight = (secret_hash, self._changes) in self._lookups
        if limiter is not None and client is not None and not in_flight:
            wait = limiter.retry_after(client)
            if wait is not None:
                raise TooManyFailedLookupsError(max(1, math.ceil(wait)))
        return await self._expired_key(secret_hash, cached, now, client)

    async def _expired_key(
        self, secret_hash: str, cached: _CachedKey | None, now: float, client: str | None = None
    ) -> Principal | None:
        """Auth's answer for a key not cached, or cached past its TTL (`cached`): asked
        again, or, while auth cannot be asked, the cached answer within its stale bound.

        Raises:
            AuthUnavailableError: auth cannot be asked and no cached answer may stand in.
        """
        # An answer past its TTL is served only with the revocations known (they are what
        # still refuses a key auth cannot be asked about).
        stale = (
            cached
            if cached is not None
            and cached.expiry.stale_until > now
            and (cached.principal is not None or cached.revoked)
            and self.revocations.loaded
            else None
        )

        def keep_stale(failed_at: float) -> None:
            assert stale is not None
            retried = stale.expiry.retried(failed_at)
            self._keys[secret_hash] = replace(stale, expiry=retried)

        answer = await self.outage.answer(
            lambda: self._lookup_task(secret_hash, client),
            lookup="api_key",
            # Read when auth fails, which may be after a change that supersedes it.
            usable=lambda: stale is not None and not self._key_superseded(stale),
            keep_stale=keep_stale,
        )
        if isinstance(answer, Stale):
            assert stale is not None
            return stale.principal
        return answer

    def _lookup_task(
        self, secret_hash: str, client: str | None = None
    ) -> asyncio.Task[Principal | None]:
        """The lookup of a key at auth in flight, started if none is: one per key, however
        many requests wait for it. It runs as its own task, so a client that disconnects
        does not cancel it for the others. One started for `client` (a key not known to be
        valid) counts as a failed lookup of that address from its start, so keys sent at
        once get no more lookups than keys sent one after another, and is taken back when
        the lookup ends otherwise than with auth not knowing the key (`_settle_count`),
        whatever became of the requests waiting for it."""
        lookup = (secret_hash, self._changes)
        started = lookup not in self._lookups
        task = shared_task(self._lookups, lookup, lambda: self._lookup_and_cache(secret_hash))
        limiter = self.failed_lookups
        if started and limiter is not None and client is not None:
            limiter.hit(client)
            task.add_done_callback(lambda finished: self._settle_count(finished, client))
        return task

    def _settle_count(self, lookup: asyncio.Task[Principal | None], client: str) -> None:
        """Take back the failed lookup counted for `client` unless `lookup` ended with auth
        not knowing the key (a principal, an error or a cancellation: no verdict against
        the client)."""
        limiter = self.failed_lookups
        if limiter is None:
            return
        if lookup.cancelled() or lookup.exception() is not None or lookup.result() is not None:
            limiter.unhit(client)

    async def _lookup_and_cache(self, secret_hash: str) -> Principal | None:
        changes = self._changes
        async with self._lookup_slots:
            answer = await self._lookup(secret_hash)
        principal, team_id = answer if answer is not None else (None, None)
        if principal is None:
            self._keys.pop(secret_hash, None)
            self._unknown_keys[secret_hash] = _CachedKey(self._expiry(self._negative_ttl_s), None)
        elif self.revocations.is_revoked(
            user_id=principal.user_id, api_key_id=principal.api_key_id
        ):
            # Auth's answer predates a revocation applied while it was on the way: cached
            # as the refusal it now is, never as valid (no request may be left to refuse
            # it, and the revocation itself is only remembered for so long).
            self._unknown_keys.pop(secret_hash, None)
            self._keys[secret_hash] = _CachedKey(self._expiry(self._key_ttl_s), None, True)
        else:
            self._unknown_keys.pop(secret_hash, None)
            entry = _CachedKey(
                self._expiry(self._key_ttl_s), principal, team_id=team_id, stamp=changes
            )
            # One superseded already (a change was heard while it was on its way) would
            # only take the place of a newer answer.
            if not self._key_superseded(entry):
                self._keys[secret_hash] = entry
        return principal

    async def _lookup(self, secret_hash: str) -> tuple[Principal, str | None] | None:
        """Auth's answer for the key with this hash: its principal and its team; None when
        auth does not know it (or it is revoked or expired, or its user disabled).

        Raises:
            AuthUnreachableError, AuthUnavailableError: auth did not answer."""
        try:
            response = await self._client.post(
                self._lookup_url,
                json={"secret_hash": secret_hash},
                headers={INTERNAL_TOKEN_HEADER: self._internal_token},
                timeout=LOOKUP_TIMEOUT_S,
                # A POST that only reads: repeated, as a read is, when auth closed the
                # pooled connection under it (a replica stopping in a rolling restart).
                extensions={"retry": READ_RETRY},
            )
        except httpx.HTTPError as exc:
            raise AuthUnreachableError(repr(exc)) from exc
        if response.status_code == 404:
            return None
        if unreachable_status(response.status_code):
            raise AuthUnreachableError(f"auth answered {response.status_code}")
        if response.status_code != 200:
            raise AuthUnavailableError(f"auth answered {response.status_code}")
        data = response.json()
        allowed = data.get("allowed_models")
        expires_at = data.get("expires_at")
        team_id = data.get("team_id")
        principal = Principal(
            user_id=data["user_id"],
            tenant=data["tenant"],
            role=data["role"],
            scopes=tuple(data.get("scopes") or ()),
            api_key_id=data["key_id"],
            allowed_models=tuple(allowed) if allowed is not None else None,
            expires_at=datetime.fromisoformat(expires_at).timestamp() if expires_at else None,
        )
        return principal, team_id if isinstance(team_id, str) else None

    # -- revocation state -----------------------------------------------------------

    async def fetch_revocations(self) -> dict[str, Any]:
        """The current revocation state from auth (the gateway's start-up snapshot), with
        the API keys revoked as far back as the revocation state remembers them."""
        since = self.revocations.api_keys_revoked_since()
        response = await self._client.get(
            self._auth_url + "/internal/v1/revocations",
            params={} if since is None else {"api_keys_revoked_since": since.isoformat()},
            headers={INTERNAL_TOKEN_HEADER: self._internal_token},
            timeout=5.0,
        )
        response.raise_for_status()
        return cast(dict[str, Any], response.json())

    def limits_changed(self, scope: str, scope_id: str, tenant: str) -> None:
        """Auth changed a level of `tenant` (`auth.limits_changed`: `scope` tenant, team,
        user or api_key, and its id): a team's models, or the team of a user or key, may
        have changed with it. Every cached answer about a user or key that depends on that
        level, and whose lookup started before now, is superseded: auth is asked again at
        its next request, on every replica at once rather than after `key_ttl_s`, and it
        is never served stale meanwhile (nor is a lookup from before joined: `_changes`
        keys them). A key's models are also bounded by its user's team, which a cached
        key does not name (an admin may have taken the key out of it): after a change of
        any team of the tenant, its keys are asked about again, served stale should auth
        not answer.

        Nothing cached is scanned: the change is remembered, by level, for as long as an
        answer from before it could normally still be used (`key_ttl_s`,
        `stale_if_error_s`, and a late answer's slack), and at most
        `MAX_CHANGES_REMEMBERED` of them; once forgotten, every answer from before it
        counts as superseded (`_forgotten`), however late it arrives."""
        if scope == "tenant":
            return  # no cached answer here depends on a tenant's limits
        self._changes += 1
        now = time.monotonic()
        changed = self._changed_at
        horizon = now - revoked_key_retention_s(self._key_ttl_s, self._stale_if_error_s)
        while changed:
            level, (number, at) = next(iter(changed.items()))
            if at > horizon and len(changed) < MAX_CHANGES_REMEMBERED:
                break
            changed.popitem(last=False)
            self._forgotten = max(self._forgotten, number)
        levels = [(scope, scope_id)]
        if scope == "team":
            levels.append(("tenant_teams", tenant))
        for level in levels:
            changed[level] = (self._changes, now)
            changed.move_to_end(level)

    def _changed_since(self, stamp: int, *levels: tuple[str, str | None]) -> bool:
        """Whether auth announced a change of any of `levels` (an id None: none) after the
        `_changes` count `stamp`, or one it no longer remembers (`_forgotten`)."""
        if stamp < self._forgotten:
            return True
        changed = self._changed_at
        for scope, scope_id in levels:
            if scope_id is not None:
                last = changed.get((scope, scope_id))
                if last is not None and last[0] > stamp:
                    return True
        return False

    def _any_change(self) -> bool:
        """Whether any change of limits may supersede a cached answer (most requests of a
        deployment whose limits do not change ask no more than this)."""
        return bool(self._changed_at) or self._forgotten > 0

    def _key_superseded(self, entry: _CachedKey) -> bool:
        """Whether auth announced a change of the key, its user or its team after `entry`'s
        lookup started (never for a refusal: a change of limits revives no key)."""
        principal = entry.principal
        return principal is not None and self._changed_since(
            entry.stamp,
            ("api_key", principal.api_key_id),
            ("user", principal.user_id),
            ("team", entry.team_id),
        )

    def _key_changed(self, entry: _CachedKey) -> bool:
        """Whether `entry` must be asked about again: superseded, or a team of its tenant
        changed since (which may be its user's)."""
        principal = entry.principal
        return (
            principal is not None
            and self._any_change()
            and (
                self._key_superseded(entry)
                or self._changed_since(entry.stamp, ("tenant_teams", principal.tenant))
            )
        )

    def _on_auth_event(self, event: Event) -> None:
        """Bring the caches in line with an auth event (the sets refuse stale entries
        anyway; this keeps refused keys from being looked up again)."""
        if isinstance(event, LimitsChanged):
            self.limits_changed(event.data.scope, event.data.scope_id, event.tenant)
        elif isinstance(event, ApiKeyRevoked):
            key_id = event.data.key_id
            self._refuse_keys(lambda p: p is not None and p.api_key_id == key_id)
        elif isinstance(event, UserDisabled):
            user_id = event.data.user_id
            self._users.pop(user_id, None)
            self._refuse_keys(lambda p: p is not None and p.user_id == user_id)
            for token in [t for t, p in self._tokens.items() if p.user_id == user_id]:
                del self._tokens[token]
        elif isinstance(event, UserEnabled):
            self._users.pop(event.data.user_id, None)
            # Refusals cached while the user was disabled are stale now: ask auth again.
            for secret_hash in [h for h, entry in self._keys.items() if entry.principal is None]:
                del self._keys[secret_hash]
            self._unknown_keys.clear()

    def _on_revocations_loaded(self) -> None:
        """Forget the keys auth vouched for before the revocation state was loaded: one
        revoked while this replica could not hear of it (the events topic unreachable at
        start-up) would otherwise stay valid here, so each is asked about once more."""
        for secret_hash in [h for h, entry in self._keys.items() if entry.principal is not None]:
            del self._keys[secret_hash]

    def _refuse_keys(self, matches: Callable[[Principal | None], bool]) -> None:
        expiry = self._expiry(self._key_ttl_s)
        for secret_hash in [h for h, entry in self._keys.items() if matches(entry.principal)]:
            self._keys[secret_hash] = _CachedKey(expiry, None, True)


def revoked_key_retention_s(key_ttl_s: float, stale_if_error_s: float) -> float:
    """How long (s) a gateway must remember a revoked API key: an answer about it looked up
    just before the revocation is cached `key_ttl_s`, served stale for `stale_if_error_s`
    more while auth is down, and may arrive a lookup's timeout late."""
    return key_ttl_s + stale_if_error_s + LOOKUP_TIMEOUT_S + REVOKED_KEY_SLACK_S


def bearer_credential(authorization: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` header value; None for no
    value, another scheme or an empty credential."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None
