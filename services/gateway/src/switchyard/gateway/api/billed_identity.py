"""Whether the identity a replayed request is billed to could send that request itself now.

Before the gateway admits a request another service publishes (`POST /internal/v1/admissions`,
history's replays), the user and API key it is billed to are checked as the request path
checks a caller: the user is not disabled, the key (when there is one) is not revoked,
belongs to that user in that tenant, has not expired, holds the `chat` scope and allows the
model; a keyless user's team allows the model. Revoked keys and disabled users come from
the replica's `RevocationState` (kept current by the auth events topic); the rest of a key
from auth (`GET /internal/v1/api-keys/{key_id}`), and a keyless user's existence and team's
models from `GET /internal/v1/users/{user_id}`, each cached `ttl_s` seconds and dropped at
once when an auth event names that key or user, or their team (`auth.limits_changed`).

`BilledIdentityCheck.check` raises APIError: 403 (`credentials_revoked`, `user_disabled`,
`credentials_expired`, `insufficient_scope`, `model_not_allowed`) or 404
(`api_key_not_found`, `user_not_found`) when the identity could not send it, 503
(`auth_unavailable`) when that cannot be told right now: never admitted blind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from switchyard.common import scopes
from switchyard.common.errors import APIError
from switchyard.common.events import (
    ApiKeyRevoked,
    Event,
    LimitsChanged,
    UserDisabled,
    UserEnabled,
)
from switchyard.common.headers import INTERNAL_TOKEN_HEADER
from switchyard.gateway.revocations import RevocationState

MAX_CACHED = 10_000


@dataclass(frozen=True)
class KeyState:
    """What auth said of an API key: owner, tenant, scopes, models (None: any), expiry
    (epoch seconds, None: never), and whether it is revoked or its user disabled."""

    key_id: str
    user_id: str
    tenant: str
    scopes: tuple[str, ...]
    allowed_models: tuple[str, ...] | None
    expires_at: float | None
    revoked: bool
    user_active: bool


@dataclass(frozen=True)
class UserState:
    """What auth said of a user: its tenant, whether it is enabled, its team and the models
    that team allows (None: any)."""

    tenant: str
    active: bool
    team_id: str | None = None
    team_models: tuple[str, ...] | None = None


def _unavailable(detail: str) -> APIError:
    return APIError(
        503,
        f"Cannot check the credentials this request is billed to right now ({detail}); "
        "retry shortly.",
        code="auth_unavailable",
        headers={"Retry-After": "1"},
    )


def _error_code(response: httpx.Response) -> object:
    """The `error.code` of an OpenAI-format error body, None when it has none."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def _revoked_key(key_id: str) -> APIError:
    return APIError(
        403, f"API key {key_id} has been revoked.", code="credentials_revoked", param="api_key_id"
    )


def _model_not_allowed(who_does: str, model: str) -> APIError:
    """403 `model_not_allowed`: "`who_does` not allow the model '`model`'."."""
    return APIError(
        403, f"{who_does} not allow the model '{model}'.", code="model_not_allowed", param="model"
    )


def _disabled_user(user_id: str) -> APIError:
    return APIError(403, f"User {user_id} is disabled.", code="user_disabled", param="user_id")


class BilledIdentityCheck:
    """Checks the identity a request is billed to (see the module docstring)."""

    def __init__(
        self,
        http: Callable[[], httpx.AsyncClient],
        *,
        auth_url: str,
        internal_token: str,
        revocations: RevocationState,
        ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`http` is read at each call (a test may swap the gateway's client); `ttl_s` is how
        long auth's answers are kept."""
        self._http = http
        self._auth_url = auth_url.rstrip("/")
        self._headers = {INTERNAL_TOKEN_HEADER: internal_token}
        self._revocations = revocations
        self._ttl_s = ttl_s
        self._clock = clock
        self._wall_clock = wall_clock
        # key id -> (monotonic deadline, state or None when auth knows no such key)
        self._keys: dict[str, tuple[float, KeyState | None]] = {}
        # user id -> (monotonic deadline, state or None when auth knows no such user)
        self._users: dict[str, tuple[float, UserState | None]] = {}
        # Bumped by every auth event: an answer fetched across one is used, not kept (it
        # may predate the event, e.g. a user's "disabled" fetched just before it was enabled).
        self._generation = 0
        revocations.add_hook(self._on_auth_event)

    async def check(self, *, tenant: str, user_id: str, api_key_id: str | None, model: str) -> None:
        """Return if `user_id` (through `api_key_id` when given) of `tenant` may send a
        request for `model` now.

        Raises:
            APIError: 403 or 404 saying why it may not; 503 `auth_unavailable` when auth
                cannot be asked or the revocation state is not loaded yet.
        """
        if not self._revocations.loaded:
            raise _unavailable("revocation state not loaded yet")
        if user_id in self._revocations.disabled_users:
            raise _disabled_user(user_id)
        if api_key_id is None:
            user = await self._user(user_id)
            if user is None or user.tenant != tenant:
                raise APIError(404, f"No user {user_id} in tenant {tenant}.", code="user_not_found")
            if not user.active:
                raise _disabled_user(user_id)
            if user.team_models is not None and model not in user.team_models:
                raise _model_not_allowed(f"The team of user {user_id} does", model)
            return
        if api_key_id in self._revocations.revoked_keys:
            raise _revoked_key(api_key_id)
        key = await self._key(api_key_id)
        if key is None or key.tenant != tenant or key.user_id != user_id:
            # One answer for a key of another tenant or user and an unknown one.
            raise APIError(
                404,
                f"No API key {api_key_id} of user {user_id} in tenant {tenant}.",
                code="api_key_not_found",
                param="api_key_id",
            )
        if key.revoked:
            raise _revoked_key(api_key_id)
        if not key.user_active:
            raise _disabled_user(user_id)
        if key.expires_at is not None and key.expires_at <= self._wall_clock():
            raise APIError(403, f"API key {api_key_id} has expired.", code="credentials_expired")
        if scopes.CHAT not in key.scopes:
            raise APIError(
                403,
                f"API key {api_key_id} lacks the '{scopes.CHAT}' scope this request needs.",
                code="insufficient_scope",
            )
        if key.allowed_models is not None and model not in key.allowed_models:
            raise _model_not_allowed(f"API key {api_key_id} does", model)

    async def _key(self, key_id: str) -> KeyState | None:
        cached = self._keys.get(key_id)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        generation = self._generation
        data = await self._get(
            f"/internal/v1/api-keys/{quote(key_id, safe='')}", not_found="api_key_not_found"
        )
        state = None
        if data is not None:
            allowed = data.get("allowed_models")
            expires_at = data.get("expires_at")
            state = KeyState(
                key_id=str(data["key_id"]),
                user_id=str(data["user_id"]),
                tenant=str(data["tenant"]),
                scopes=tuple(data.get("scopes") or ()),
                allowed_models=tuple(allowed) if allowed is not None else None,
                expires_at=datetime.fromisoformat(expires_at).timestamp() if expires_at else None,
                revoked=data.get("revoked") is True,
                user_active=data.get("user_active") is not False,
            )
        if generation == self._generation:
            if len(self._keys) >= MAX_CACHED:
                self._keys.clear()
            self._keys[key_id] = (self._clock() + self._ttl_s, state)
        return state

    async def _user(self, user_id: str) -> UserState | None:
        cached = self._users.get(user_id)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        generation = self._generation
        data = await self._get(
            f"/internal/v1/users/{quote(user_id, safe='')}", not_found="user_not_found"
        )
        state = None
        if data is not None:
            team_id, team_models = data.get("team_id"), data.get("team_models")
            if team_models is not None and not (
                isinstance(team_models, list) and all(isinstance(m, str) for m in team_models)
            ):
                # A bound that cannot be read is no reason to lift it.
                raise _unavailable("auth answered an unreadable team_models")
            state = UserState(
                tenant=str(data["tenant"]),
                active=data.get("active") is True,
                team_id=team_id if isinstance(team_id, str) else None,
                team_models=tuple(team_models) if team_models is not None else None,
            )
        if generation == self._generation:
            if len(self._users) >= MAX_CACHED:
                self._users.clear()
            self._users[user_id] = (self._clock() + self._ttl_s, state)
        return state

    async def _get(self, path: str, *, not_found: str) -> dict[str, Any] | None:
        """Auth's JSON answer at `path`; None when auth says there is no such thing (a 404
        whose error code is `not_found`); raises the 503 APIError otherwise, also for any
        other 404 (an auth without this route, during a rolling upgrade, knows nothing
        about the key: that is no reason to refuse it for good)."""
        try:
            response = await self._http().get(
                self._auth_url + path, headers=self._headers, timeout=2.0
            )
        except httpx.HTTPError as exc:
            raise _unavailable("auth unreachable") from exc
        if response.status_code == 404:
            if _error_code(response) == not_found:
                return None
            raise _unavailable("auth answered 404 without saying what is missing")
        if response.status_code != 200:
            raise _unavailable(f"auth answered {response.status_code}")
        try:
            data = response.json()
        except ValueError as exc:
            raise _unavailable("auth answered no JSON") from exc
        if not isinstance(data, dict):
            raise _unavailable("auth answered no object")
        return data

    def _on_auth_event(self, event: Event) -> None:
        """Forget what auth said of a key or user an auth event names, so the next check
        asks again (the revocation sets refuse at once anyway)."""
        self._generation += 1
        if isinstance(event, ApiKeyRevoked):
            self._keys.pop(event.data.key_id, None)
        elif isinstance(event, LimitsChanged):
            scope, scope_id = event.data.scope, event.data.scope_id
            if scope == "api_key":
                self._keys.pop(scope_id, None)
            elif scope == "user":
                self._forget_user(scope_id)
            elif scope == "team":
                # A key's models are bounded by its team and its user's, neither of which
                # its state names: every key of the tenant is asked about again.
                for key_id in [
                    k for k, (_, s) in self._keys.items() if s and s.tenant == event.tenant
                ]:
                    del self._keys[key_id]
                for user_id in [
                    u for u, (_, s) in self._users.items() if s and s.team_id == scope_id
                ]:
                    del self._users[user_id]
        elif isinstance(event, UserDisabled | UserEnabled):
            self._forget_user(event.data.user_id)

    def _forget_user(self, user_id: str) -> None:
        """Forget what auth said of `user_id` and of their keys."""
        self._users.pop(user_id, None)
        for key_id in [k for k, (_, s) in self._keys.items() if s and s.user_id == user_id]:
            del self._keys[key_id]
