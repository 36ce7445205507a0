"""Typed dependencies shared by the gateway's routes: the gateway, and the authenticated
caller with the scope the route needs.

Which scope a route needs is decided here, in one table, by the route's path and method:
generating anything (chat, messages, embeddings, jobs) needs `chat`; reading history and
usage needs `history:read`, changing anything under them `history:write`; reading replays
`history:read`, creating, stopping or resuming them `chat` and `history:read`; listing
models needs only valid credentials. Acting on what is stored (continuing, naming,
deleting or cancelling a stored response, cancelling a job, stopping or resuming a
replay) needs `history:read` as reading it does: an API key without it may still act on
what it made itself, an access token without it may not (ACTS_ON_STORED,
`check_reads_stored`). Secrets need `admin` besides (the history settings route checks
that itself: the webhook signing secret is shown, and rotated, only with it). A valid
credential without the scope gets 403; missing or invalid credentials get 401; neither
echoes the credential.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, cast

import structlog
from fastapi import Depends, Request

from switchyard.common import scopes
from switchyard.common.errors import APIError
from switchyard.gateway.auth import (
    AuthenticationError,
    AuthUnavailableError,
    Principal,
    TooManyFailedLookupsError,
    bearer_credential,
    request_client_key,
)
from switchyard.gateway.bootstrap import Gateway
from switchyard.gateway.intake import REJECTED

log = structlog.get_logger("switchyard.gateway.api.deps")

ANY_METHOD: frozenset[str] = frozenset()
READS = frozenset({"GET", "HEAD", "OPTIONS"})
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# (path prefix, scope, methods — empty for any): the first match decides. Paths not
# listed need no scope.
ROUTE_SCOPES: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("/v1/chat/", scopes.CHAT, ANY_METHOD),
    ("/v1/completions", scopes.CHAT, ANY_METHOD),
    ("/v1/messages", scopes.CHAT, ANY_METHOD),
    ("/v1/embeddings", scopes.CHAT, ANY_METHOD),
    # Reading jobs and stored responses is reading history; a `chat` key may still read
    # back what it made itself (READ_BACK).
    ("/v1/jobs", scopes.HISTORY_READ, READS),
    ("/v1/jobs", scopes.CHAT, ANY_METHOD),
    ("/v1/batches", scopes.CHAT, ANY_METHOD),
    ("/v1/responses", scopes.HISTORY_READ, READS),
    ("/v1/responses", scopes.CHAT, ANY_METHOD),
    ("/v1/history", scopes.HISTORY_READ, READS),
    ("/v1/history", scopes.HISTORY_WRITE, ANY_METHOD),
    ("/v1/usage", scopes.HISTORY_READ, READS),
    ("/v1/usage", scopes.HISTORY_WRITE, ANY_METHOD),
    # Replays read the history and generate (POST also checks history:read itself).
    ("/v1/replays", scopes.HISTORY_READ, READS),
    ("/v1/replays", scopes.CHAT, ANY_METHOD),
)


async def get_gateway(request: Request) -> Gateway:
    """The gateway's components, set on `app.state.gateway` at start-up."""
    # A coroutine on purpose: FastAPI runs a plain `def` dependency in its thread pool, a
    # thread hop on every request (the largest cost of a response cache hit).
    return cast(Gateway, request.app.state.gateway)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


# Reads an API key without `history:read` may still make with `chat`: those of the jobs
# and stored responses it made itself (history narrows them to its key: see
# `Principal.own_key_only`), as a client polls the job or background response it created.
# An access token has no key to narrow to: it needs `history:read`.
READ_BACK: tuple[str, ...] = ("/v1/jobs", "/v1/responses")

# Routes that act on something stored (delete or cancel a stored response, cancel a job,
# stop or resume a replay), by method and route path: besides the scope ROUTE_SCOPES
# gives them they need `history:read`, as reading it does, with the same READ_BACK
# allowance: a credential made only to generate must not touch what its user's other
# credentials made. A body naming stored items (`previous_response_id`,
# `item_reference`) is checked by its route (`check_reads_stored`).
ACTS_ON_STORED: frozenset[tuple[str, str]] = frozenset(
    {
        ("DELETE", "/v1/responses/{response_id:response_id}"),
        ("POST", "/v1/responses/{response_id:response_id}/cancel"),
        ("POST", "/v1/jobs/{job_id}/cancel"),
        ("POST", "/v1/replays/{replay_id}/stop"),
        ("POST", "/v1/replays/{replay_id}/resume"),
    }
)


def required_scope(path: str, method: str = "GET") -> str | None:
    """The scope a `method` request to `path` needs (None: valid credentials suffice)."""
    method = method.upper()
    for prefix, scope, methods in ROUTE_SCOPES:
        if path.startswith(prefix) and (not methods or method in methods):
            return scope
    return None


def insufficient_scope(scope: str, param: str | None = None) -> APIError:
    """The 403 `insufficient_scope` error for credentials without `scope`; `param` names
    the request field that needs it, when one does."""
    return APIError(
        403,
        f"These credentials lack the '{scope}' scope this operation needs.",
        param=param,
        code="insufficient_scope",
    )


def reads_stored(principal: Principal, path: str) -> bool:
    """Whether `principal` may read or act on what is stored under `path`: it holds
    `history:read`, or it is an API key with `chat` whose reads history narrows to what
    that key made itself (`Principal.own_key_only`) and `path` is one of READ_BACK."""
    if scopes.HISTORY_READ in principal.scopes:
        return True
    return (
        principal.own_key_only is not None
        and scopes.CHAT in principal.scopes
        and path.startswith(READ_BACK)
    )


def check_reads_stored(principal: Principal, path: str, param: str | None = None) -> None:
    """Raise APIError 403 `insufficient_scope` (`history:read`, naming `param`) unless
    `principal` `reads_stored` under `path`."""
    if not reads_stored(principal, path):
        raise insufficient_scope(scopes.HISTORY_READ, param)


class DuplicateCredentialsError(Exception):
    """A request sent the `Authorization` or `x-api-key` header more than once."""


class ConflictingCredentialsError(DuplicateCredentialsError):
    """A request sent a Bearer credential and an `x-api-key` that differ."""


def credentials_of(raw_headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """The `Authorization` and `x-api-key` values of a request's ASGI `headers` (lower-case
    names, latin-1 values), each None when absent. Raises DuplicateCredentialsError when
    either comes twice, and ConflictingCredentialsError when a Bearer credential and an
    `x-api-key` differ: which one counts is ambiguous (a proxy in front may have judged
    the other), so neither does."""
    authorization = api_key = None
    for name, value in raw_headers:
        if name == b"authorization":
            if authorization is not None:
                raise DuplicateCredentialsError("Authorization")
            authorization = value.decode("latin-1")
        elif name == b"x-api-key":
            if api_key is not None:
                raise DuplicateCredentialsError("x-api-key")
            api_key = value.decode("latin-1")
    bearer = bearer_credential(authorization)
    # An empty `x-api-key` is no credential, as authentication reads it.
    if bearer is not None and api_key and api_key.strip() and bearer != api_key.strip():
        raise ConflictingCredentialsError("Authorization' and 'x-api-key")
    return authorization, api_key


def single_credentials(request: Request) -> tuple[str | None, str | None]:
    """`credentials_of` the request. Raises APIError 400 `duplicate_credentials` naming
    the header sent twice, or `conflicting_credentials` for two credentials that differ."""
    try:
        return credentials_of(request.scope["headers"])
    except ConflictingCredentialsError:
        raise APIError(
            400,
            "The 'Authorization' and 'x-api-key' headers carry different credentials; send "
            "one credential.",
            param="x-api-key",
            code="conflicting_credentials",
        ) from None
    except DuplicateCredentialsError as exc:
        raise APIError(
            400,
            f"The '{exc}' header was sent more than once; send credentials once.",
            param=str(exc),
            code="duplicate_credentials",
        ) from None


async def authenticated_principal(request: Request) -> Principal:
    """The caller behind the credentials (the `Authorization` or `x-api-key` header),
    whatever the route. Raises APIError 400 `duplicate_credentials` (a header sent twice),
    401 `invalid_api_key`, 429 `too_many_failed_authentications` (this address sent too many
    unknown keys lately) or 503 `auth_unavailable`."""
    # The headers are read here rather than declared as `Header` parameters: every
    # parameter and sub-dependency FastAPI solves costs CPU on each model request.
    gateway = cast(Gateway, request.app.state.gateway)
    authorization, api_key = single_credentials(request)
    try:
        return await gateway.authenticator.authenticate(
            authorization, api_key, client=request_client_key(request.scope)
        )
    except TooManyFailedLookupsError as exc:
        REJECTED.labels("failed_authentications").inc()
        raise APIError(
            429,
            "Too many requests with unknown API keys from this address; retry after "
            f"{exc.retry_after_s} seconds.",
            code="too_many_failed_authentications",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None
    except AuthenticationError:
        # Counted, not logged: a key-stuffing flood or a revoked key still in use shows
        # on the dashboards without one log line per attempt.
        REJECTED.labels("invalid_credentials").inc()
        raise APIError(
            401,
            "Invalid or missing credentials. Send an API key as 'x-api-key: <key>' or "
            "an API key or access token as 'Authorization: Bearer <credential>'.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        ) from None
    except AuthUnavailableError as exc:
        # Counted and logged (repeats are folded by the log filter): an operator sees an
        # auth outage the callers feel, not only the callers.
        REJECTED.labels("auth_unavailable").inc()
        log.warning("refused a caller: auth cannot be asked", error=str(exc))
        raise APIError(
            503,
            "Authentication is temporarily unavailable; retry shortly.",
            code="auth_unavailable",
            headers={"Retry-After": "1"},
        ) from None


async def authenticate(request: Request) -> Principal:
    """The caller, who must hold the scope the matched route needs (see ROUTE_SCOPES).
    Raises APIError 401, 403 `insufficient_scope` or 503."""
    principal = await authenticated_principal(request)
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path
    scope = required_scope(path, request.method)
    if scope is not None and scope not in principal.scopes:
        if scope != scopes.HISTORY_READ or not reads_stored(principal, path):
            raise insufficient_scope(scope)
    if (request.method, path) in ACTS_ON_STORED:
        check_reads_stored(principal, path)
    return principal


def require_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency for a route that needs `scope` whatever its path."""

    async def dependency(principal: CurrentPrincipal) -> Principal:
        if scope not in principal.scopes:
            raise insufficient_scope(scope)
        return principal

    return dependency


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
